"""The inbox: where every publisher writes, unordered, without locks or notifications.

It is emptied by the sequencer. If the sequencer stops (no replica can reach the database
as leader, or it falls behind a flood), the HTTP API stops accepting events once the
backlog passes ``CHANGEFEED_MAX_INBOX_EVENTS`` rather than let the table grow without
bound; the backlog is measured once a second, not per publish.
"""

from __future__ import annotations

import asyncio
import contextlib

from service import database, logs, metrics
from service.database import Database
from service.publish import NewEvent
from service.schema import SCHEMA

log = logs.get(__name__)

# One statement for the whole batch: stored atomically, all or none.
_APPEND = f"""
INSERT INTO {SCHEMA}.inbox (topic, type, data, event_id)
SELECT $1, t, d::jsonb, i FROM unnest($2::text[], $3::text[], $4::text[]) AS u(t, d, i)
"""


async def append(db: Database, topic: str, batch: list[NewEvent]) -> None:
    """Store a batch durably; when this returns, the events will be sequenced."""
    await db.execute(
        _APPEND,
        topic,
        [e.type for e in batch],
        [e.data for e in batch],
        [e.id for e in batch],
    )


# Ids are taken in insert order and the sequencer deletes the oldest first, so the span of
# ids is the backlog (an overestimate by rolled-back inserts), read from the index alone.
_BACKLOG = f"SELECT coalesce(max(id) - min(id) + 1, 0) FROM {SCHEMA}.inbox"


class Backlog:
    """This replica's view of how many events wait in the inbox."""

    def __init__(self, db: Database, limit: int) -> None:
        self._db = db
        self.limit = limit
        self.events = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def full(self) -> bool:
        return self.events >= self.limit

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="inbox-backlog")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                self.events = await self._db.fetchval(_BACKLOG)
                metrics.inbox_backlog.set(self.events)
            except database.UNAVAILABLE as exc:
                log.warning("inbox.backlog_unknown", error=str(exc))
            await asyncio.sleep(1.0)
