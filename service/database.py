"""Connections to PostgreSQL: the shared pool and the dedicated long-lived connections."""

from __future__ import annotations

import asyncpg

APPLICATION_NAME = "changefeed"

# Errors that mean "the database is unreachable right now", not "the request was wrong".
UNAVAILABLE = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    TimeoutError,
)


async def create_pool(url: str, *, min_size: int, max_size: int) -> asyncpg.Pool:
    """The pool for short queries: publishes, page reads, health checks."""
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        server_settings={"application_name": APPLICATION_NAME},
        # A replica must not hang on a dead server: connecting is bounded.
        timeout=10,
        command_timeout=30,
    )
    assert pool is not None
    return pool


async def connect(url: str, role: str) -> asyncpg.Connection:
    """A dedicated connection, never pooled: LISTEN and session advisory locks live on it."""
    conn: asyncpg.Connection = await asyncpg.connect(
        url,
        server_settings={"application_name": f"{APPLICATION_NAME}:{role}"},
        timeout=10,
    )
    return conn
