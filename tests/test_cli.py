"""The command line: migrate (idempotent, concurrent) and serve (given or embedded database)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, pool
from sqlalchemy.ext.asyncio import create_async_engine

from changefeed.core import schema
from changefeed.ops.cluster import Cluster
from tests.support import (
    REPO,
    Service,
    changefeed,
    create_database,
    new_topic,
    private_tempdir,
    seq,
    subscribe,
)


def _changefeed(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return changefeed(*args, env=env, timeout=timeout)


@pytest.mark.slow
async def test_concurrent_migrations_are_safe_and_idempotent(admin_url: str) -> None:
    url = await create_database(admin_url)
    env = {"CHANGEFEED_DATABASE_URL": url}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHANGEFEED_")}
    runs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "changefeed",
            "migrate",
            cwd=REPO,
            env={**clean, **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    async with asyncio.timeout(120):
        results = [await run.communicate() for run in runs]
    for run, (out, err) in zip(runs, results, strict=True):
        assert run.returncode == 0, err.decode()
        assert b"schema at revision" in out
    again = _changefeed("migrate", env=env)
    assert again.returncode == 0, again.stderr

    # The migrated schema is exactly the SQLAlchemy metadata in service/core/schema.py.
    engine = create_async_engine(
        "postgresql+asyncpg://", async_creator=lambda: asyncpg.connect(url), poolclass=pool.NullPool
    )

    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(
            connection,
            opts={
                "include_schemas": True,
                "include_object": schema.owned,
                "version_table_schema": schema.SCHEMA,
            },
        )
        return list(compare_metadata(context, schema.metadata))

    async with engine.connect() as connection:
        differences = await connection.run_sync(diff)
    await engine.dispose()
    assert differences == []


async def test_serve_refuses_an_unmigrated_database(admin_url: str) -> None:
    url = await create_database(admin_url)
    env = {"CHANGEFEED_DATABASE_URL": url, "CHANGEFEED_AUTH": "none"}
    result = _changefeed("serve", "--port", "0", env=env)
    assert result.returncode == 1
    assert "changefeed migrate" in result.stderr


def test_serve_reports_an_unreachable_database() -> None:
    result = _changefeed(
        "serve",
        env={
            "CHANGEFEED_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
            "CHANGEFEED_AUTH": "none",
        },
    )
    assert result.returncode == 1
    assert result.stderr.startswith("changefeed serve:")
    assert "Traceback" not in result.stderr


def test_invalid_configuration_is_reported() -> None:
    result = _changefeed("serve", env={"CHANGEFEED_KEEPALIVE_SECONDS": "soon"})
    assert result.returncode == 2
    assert "keepalive_seconds" in result.stderr


async def test_serve_with_migrate_flag_migrates_first(admin_url: str) -> None:
    url = await create_database(admin_url)
    service = Service(url, args=["--migrate"]).start()
    try:
        async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as client:
            assert (await client.get("/readyz")).status_code == 200
    finally:
        assert service.stop() == 0


def _binaries() -> list[object]:
    """The embedded default with the binaries it finds, and with the pgserver wheel's."""
    spec = importlib.util.find_spec("pgserver")
    wheel = Path(spec.origin).parent / "pginstall" / "bin" if spec and spec.origin else None
    return [
        pytest.param(None, id="found"),
        pytest.param(
            wheel,
            id="pgserver",
            marks=pytest.mark.skipif(wheel is None, reason="the pgserver wheel is not installed"),
        ),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("bin_dir", _binaries())
async def test_embedded_default_runs_publishes_streams_and_stops_its_cluster(
    bin_dir: Path | None,
) -> None:
    data_dir = private_tempdir("changefeed-embedded-") / "data"
    env = {"CHANGEFEED_DATA_DIR": str(data_dir)}
    if bin_dir is not None:
        env["CHANGEFEED_PG_BIN_DIR"] = str(bin_dir)
    service = Service(None, env=env)
    service.start()
    try:
        async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as client:
            topic = new_topic()
            async with subscribe(client, topic) as stream:
                response = await client.post(f"/feeds/{topic}", json={"type": "hello", "data": [1]})
                assert response.status_code == 202
                event = await stream.next()
                assert (seq(event), event.event, event.data) == ("1", "hello", "[1]")
    finally:
        assert service.stop() == 0
    cluster = Cluster(data_dir, bin_dir=bin_dir)
    assert (data_dir / "pgdata" / "PG_VERSION").exists()
    assert not cluster.is_running(), "serve must stop its embedded cluster on exit"

    # Second run: the same cluster and data, found again.
    service = Service(None, env=env).start()
    try:
        async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as client:
            body = (await client.get(f"/feeds/{topic}/events")).json()
            assert [e["data"] for e in body["events"]] == [[1]]
    finally:
        assert service.stop() == 0
    shutil.rmtree(data_dir.parent, ignore_errors=True)


def test_a_data_directory_the_shell_would_interpret_is_refused(tmp_path: Path) -> None:
    """pg_ctl hands the data directory to /bin/sh inside double quotes."""
    odd = tmp_path / "x$(touch pwned)y"
    result = changefeed("serve", env={"CHANGEFEED_DATA_DIR": str(odd)}, timeout=60)
    assert result.returncode == 1
    assert "may not contain" in result.stderr
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_one_error_style_and_meaningful_exit_codes(
    service: Service, module_database: str, tmp_path: Path
) -> None:
    """Every failure is one line `changefeed <command>: <why>` on stderr, with exit 1 (it
    failed or found a problem), 2 (bad usage) or 3 (unreachable); never a traceback, never
    a silent success."""
    db = {"CHANGEFEED_DATABASE_URL": module_database}
    http = {"CHANGEFEED_URL": service.base_url}
    topic = new_topic()
    cases = [
        (["verify", "no.such.topic"], db, 1, "changefeed verify: no such topic"),
        (["retention", "clear", "no.such.topic"], db, 1, "changefeed retention: no policy for"),
        (["uncapture", "public.nosuch"], db, 1, "changefeed uncapture: relation"),
        (["export", "no.such.topic", "-o", str(tmp_path / "x")], http, 1, "changefeed export:"),
        (["import", str(tmp_path / "missing.ndjson")], http, 2, "changefeed import: cannot read"),
        (["publish", "bad topic", "1"], http, 1, "changefeed publish: 400: "),
        (["publish", topic, "{"], http, 2, "changefeed publish: the data is not JSON"),
        (["topics", "--url", "http://127.0.0.1:1"], {}, 3, "changefeed topics: cannot reach"),
    ]
    for argv, env, code, message in cases:
        result = changefeed(*argv, env=env)
        assert result.returncode == code, (argv, result.stderr)
        assert result.stderr.startswith(message), (argv, result.stderr)
        assert len(result.stderr.splitlines()) == 1, (argv, result.stderr)
    assert not (tmp_path / "x").exists()

    # Options in any position, and no log lines (quiet unless -v).
    published = changefeed("--url", service.base_url, "publish", topic, '{"n": 1}')
    assert published.returncode == 0 and published.stderr == "", published.stderr
    listed = changefeed("topics", "--json", "--url", service.base_url)
    found = {t["topic"]: t for t in json.loads(listed.stdout)["topics"]}
    assert found[topic]["head"] == 1 and found[topic]["held"] == 1
    loud = changefeed("publish", topic, "2", "--url", service.base_url, "-v")
    assert "HTTP Request: POST" in loud.stderr
    exported = changefeed("export", topic, "--url", service.base_url)
    assert [json.loads(line)["data"] for line in exported.stdout.splitlines()] == [{"n": 1}, 2]
    assert "exit status: 0 done; 1 failed" in changefeed("verify", "--help").stdout


def test_the_open_embedded_server_stays_on_this_machine(tmp_path: Path) -> None:
    """Without CHANGEFEED_AUTH the embedded server is open, so only on loopback: bound to
    another interface it asks for a choice, before starting anything."""
    env = {"CHANGEFEED_DATA_DIR": str(tmp_path / "data")}
    result = changefeed("serve", "--host", "0.0.0.0", "--port", "0", env=env, timeout=60)
    assert result.returncode == 2 and "choose authentication" in result.stderr
    assert not (tmp_path / "data").exists()
