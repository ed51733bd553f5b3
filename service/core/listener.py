"""This replica's one LISTEN connection: sequencer hints and wake-ups arrive here.

A dedicated connection, never a pooled one (returning a connection to a pool runs UNLISTEN).
Notifications sent while it is down are gone for good, so every (re)connect tells the
caller (``on_connect``), which re-reads heads from the table: notifications are only hints.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg

from .. import logs
from ..backoff import Backoff
from . import database, metrics

log = logs.get(__name__)

Handler = Callable[[str], None]
PROBE_CHANNEL = "changefeed_probe"


class NotificationsBroken(RuntimeError):
    """The connection accepted LISTEN but a notification sent to it never arrived."""


class Listener:
    """Keeps a LISTEN connection up, with backoff, and dispatches payloads by channel."""

    def __init__(
        self,
        url: str,
        handlers: dict[str, Handler],
        on_connect: Callable[[], None],
        *,
        check_seconds: float = 5.0,
    ) -> None:
        self._url = url
        self._handlers = handlers
        self._on_connect = on_connect
        self._check_seconds = check_seconds
        self.connected = False

    async def run(self, backoff: Backoff) -> None:
        """One life of the LISTEN connection (a supervised loop: it returns when the
        connection is lost, or could not be made or proven)."""
        conn: asyncpg.Connection | None = None
        try:
            conn = await database.connect(self._url, "listener")
            lost = asyncio.Event()
            conn.add_termination_listener(_setter(lost))
            for channel, handler in self._handlers.items():
                await conn.add_listener(channel, _dispatch(handler))
            await self._probe(conn)
            self.connected = True
            metrics.listener_connects.inc()
            log.info("listener.connected")
            backoff.reset()
            self._on_connect()
            await self._watch(conn, lost)
        except database.UNAVAILABLE as exc:
            log.warning("listener.down", error=str(exc))
        except NotificationsBroken as exc:
            log.error("listener.notifications_broken", error=str(exc))
        finally:
            self.connected = False
            if conn is not None:
                conn.terminate()

    async def _probe(self, conn: asyncpg.Connection) -> None:
        """Prove that notifications reach this connection before relying on them: a pooler
        in transaction mode (PgBouncer) accepts LISTEN but never delivers."""
        nonce = uuid.uuid4().hex
        arrived = asyncio.Event()

        def check(_conn: Any, _pid: int, _channel: str, payload: object) -> None:
            if payload == nonce:
                arrived.set()

        await conn.add_listener(PROBE_CHANNEL, check)
        try:
            await conn.execute(f"SELECT pg_notify('{PROBE_CHANNEL}', '{nonce}')")
            try:
                await asyncio.wait_for(arrived.wait(), self._check_seconds)
            except TimeoutError:
                raise NotificationsBroken(
                    "LISTEN/NOTIFY does not work through this connection: the listener needs "
                    "a direct connection to PostgreSQL (not PgBouncer in transaction mode)"
                ) from None
        finally:
            await conn.remove_listener(PROBE_CHANNEL, check)

    async def _watch(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        # A dead peer can go unnoticed until TCP gives up: probe it with a cheap query.
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), self._check_seconds)
                return
            await conn.fetchval("SELECT 1", timeout=self._check_seconds)


def _dispatch(handler: Handler) -> Callable[[Any, int, str, object], None]:
    def callback(_conn: Any, _pid: int, _channel: str, payload: object) -> None:
        handler(str(payload))

    return callback


def _setter(event: asyncio.Event) -> Callable[[Any], None]:
    def callback(_conn: Any) -> None:
        event.set()

    return callback
