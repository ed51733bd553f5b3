"""Connections to PostgreSQL: the shared pool and the dedicated long-lived connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

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


# Every changefeed session resolves unqualified names in the system catalog only (its own
# objects are always schema-qualified). The default search path ("$user", public) would
# let a role that may create objects in `public` (any role, before PostgreSQL 15) plant a
# function that out-matches a built-in, such as `public.convert_to(text, text)`, and have
# it run with the service's rights. `pg_temp` is named last: left out, it is searched
# first for tables and types.
SEARCH_PATH = "pg_catalog, pg_temp"

# Ask the server to probe idle client sockets, so that a replica whose host vanished (no
# FIN) loses its session, and with it the sequencer election lock, within seconds rather
# than after the kernel's two-hour default. Ignored on unix sockets.
KEEPALIVES = {
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
}


def session_settings(role: str | None = None) -> dict[str, str]:
    """Settings for every changefeed session: its name in pg_stat_activity, the search
    path above and the keepalives."""
    name = APPLICATION_NAME if role is None else f"{APPLICATION_NAME}:{role}"
    return {"application_name": name, "search_path": SEARCH_PATH, **KEEPALIVES}


class Database:
    """The shared pool for short queries (publishes, page reads, checks), every wait bounded.

    asyncpg's pool waits without limit to take back a connection whose query timed out (it
    waits for the server to confirm the cancel): on a silently dead connection, forever.
    Acquiring with a timeout bounds that wait too, after which the connection is dropped.
    """

    def __init__(self, pool: asyncpg.Pool, timeout: float) -> None:
        self.pool = pool
        self.timeout = timeout

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[PoolConnectionProxy]:
        async with self.pool.acquire(timeout=self.timeout) as conn:
            try:
                yield conn
            except TimeoutError:
                # Its query timed out: drop it rather than wait for the cancel to land.
                conn.terminate()
                raise

    async def execute(self, query: str, *args: Any) -> str:
        async with self.acquire() as conn:
            status: str = await conn.execute(query, *args, timeout=self.timeout)
            return status

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.acquire() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(query, *args, timeout=self.timeout)
            return rows

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with self.acquire() as conn:
            row: asyncpg.Record | None = await conn.fetchrow(query, *args, timeout=self.timeout)
            return row

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.acquire() as conn:
            return await conn.fetchval(query, *args, timeout=self.timeout)

    async def close(self) -> None:
        """Close the pool; connections still busy after a few seconds are cut."""
        try:
            await asyncio.wait_for(self.pool.close(), timeout=5)
        except TimeoutError:
            self.pool.terminate()


async def _keep(conn: asyncpg.Connection) -> None:
    """The pool's reset: nothing to undo (see create)."""


async def create(url: str, *, min_size: int, max_size: int, timeout: float) -> Database:  # noqa: ASYNC109
    """Open the shared pool."""
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        server_settings=session_settings(),
        # A replica must not hang on a dead server: connecting is bounded.
        timeout=timeout,
        command_timeout=timeout,
        # asyncpg resets every connection it takes back (unlock advisory locks, UNLISTEN,
        # RESET ALL): a round trip per use, a tenth of a publish's cost (measured). Pooled
        # connections here never keep session state: advisory locks are per transaction,
        # LISTEN and the sequencer's lock live on dedicated connections.
        reset=_keep,
    )
    assert pool is not None
    return Database(pool, timeout)


async def connect(url: str, role: str) -> asyncpg.Connection:
    """A dedicated connection, never pooled: LISTEN and session advisory locks live on it,
    and the command line's work."""
    conn: asyncpg.Connection = await asyncpg.connect(
        url, server_settings=session_settings(role), timeout=10
    )
    return conn
