"""Fixtures: one throwaway PostgreSQL cluster per test run, a migrated template database,
and real service processes on free ports."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest

from changefeed.ops import migrate
from changefeed.ops.cluster import Cluster, free_port
from tests.support import CHROMIUM, Service, create_database, temporary_cluster, url_with_database

TEMPLATE = "cf_template"


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster | None]:
    """Our own cluster (so tests may stop and restart it), unless one is named."""
    if os.environ.get("CHANGEFEED_TEST_DATABASE_URL"):
        yield None
        return
    with temporary_cluster("changefeed-test-pg-", tcp_port=free_port(), durable=False) as pg:
        yield pg


@pytest.fixture(scope="session")
def admin_url(cluster: Cluster | None) -> str:
    """A URL on the test server from which databases are created."""
    named = os.environ.get("CHANGEFEED_TEST_DATABASE_URL")
    if named:
        return named
    assert cluster is not None
    return cluster.url_for("postgres")


@pytest.fixture(scope="session")
def template(admin_url: str) -> str:
    """A migrated database that every test database is copied from."""

    async def create() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
            await conn.execute(f"CREATE DATABASE {TEMPLATE}")
        finally:
            await conn.close()

    asyncio.run(create())
    migrate.upgrade(url_with_database(admin_url, TEMPLATE))
    return TEMPLATE


@pytest.fixture
async def database(admin_url: str, template: str) -> str:
    """A fresh migrated database for one test."""
    return await create_database(admin_url, template)


@pytest.fixture(scope="module")
async def module_database(admin_url: str, template: str) -> str:
    return await create_database(admin_url, template)


@pytest.fixture(scope="module")
def service(module_database: str) -> Iterator[Service]:
    """One service process per test module; tests keep apart by using their own topics."""
    with Service(module_database) as svc:
        yield svc


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as http:
        yield http


@pytest.fixture
async def db(module_database: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(module_database)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    """Headless Chromium driven by Playwright."""
    async_api = pytest.importorskip("playwright.async_api")
    assert CHROMIUM is not None, "CI must install chromium"
    async with async_api.async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()
