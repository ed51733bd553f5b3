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


# Ask the server to probe idle client sockets, so that a replica whose host vanished (no
# FIN) loses its session, and with it the sequencer election lock, within seconds rather
# than after the kernel's two-hour default. Ignored on unix sockets.
KEEPALIVES = {
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
}


async def create_pool(url: str, *, min_size: int, max_size: int) -> asyncpg.Pool:
    """The pool for short queries: publishes, page reads, health checks."""
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        server_settings={"application_name": APPLICATION_NAME, **KEEPALIVES},
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
        server_settings={"application_name": f"{APPLICATION_NAME}:{role}", **KEEPALIVES},
        timeout=10,
    )
    return conn
