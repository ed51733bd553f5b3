"""The inbox: where every publisher writes, unordered, without locks or notifications.

It is emptied by the sequencer. If the sequencer stops (no replica can reach the database
as leader, or it falls behind a flood), the HTTP API stops accepting events once the
backlog passes ``CHANGEFEED_MAX_INBOX_EVENTS`` rather than let the table grow without
bound; the backlog is measured once a second, not per publish.
"""

from __future__ import annotations

import asyncio
import sys

from . import database, metrics
from .database import Database
from .publish import NewEvent
from .schema import SCHEMA

# One statement for a group of publishes: stored atomically, all or none, each publish's
# events in order (rows are numbered in the order unnest yields them).
_APPEND = f"""
INSERT INTO {SCHEMA}.inbox (topic, type, data, event_id)
SELECT p, t, d::jsonb, i FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
    AS u(p, t, d, i)
"""
# Publishes waiting for the INSERT in flight join the next one, up to this many events.
_GROUP_EVENTS = 5000

Pending = tuple[str, list[NewEvent], "asyncio.Future[None]"]


class Inbox:
    """Appends publishes to the inbox, committing concurrent ones together.

    Group commit: while one INSERT is in flight, the publishes that arrive wait and then go
    in one statement (one round trip, one commit). Measured, each single-event publish in
    its own transaction cost about as much in PostgreSQL as in this process. A publish
    returns only once its events are committed, as before; if a group fails on bad data,
    its publishes are retried one by one, so that only the bad one fails.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._pending: list[Pending] = []
        self._flushing: asyncio.Task[None] | None = None

    async def append(self, topic: str, batch: list[NewEvent]) -> None:
        """Store a batch durably; when this returns, the events will be sequenced."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((topic, batch, done))
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush(), name="inbox-flush")
        await done

    async def _flush(self) -> None:
        try:
            while self._pending:
                group: list[Pending] = []
                size = 0
                while self._pending and (
                    not group or size + len(self._pending[0][1]) <= _GROUP_EVENTS
                ):
                    item = self._pending.pop(0)
                    group.append(item)
                    size += len(item[1])
                await self._store(group)
        finally:
            self._flushing = None

    async def _store(self, group: list[Pending]) -> None:
        try:
            await self._insert(group)
        except database.UNAVAILABLE as exc:
            _settle(group, exc)
        except Exception:
            if len(group) == 1:
                _settle(group, sys.exc_info()[1])
                return
            for item in group:  # find the publish at fault; the others are stored
                try:
                    await self._insert([item])
                except Exception as exc:  # reported to its own request
                    _settle([item], exc)
                else:
                    _settle([item], None)
        else:
            _settle(group, None)

    async def _insert(self, group: list[Pending]) -> None:
        events = [(topic, e) for topic, batch, _ in group for e in batch]
        await self._db.execute(
            _APPEND,
            [topic for topic, _ in events],
            [e.type for _, e in events],
            [e.data for _, e in events],
            [e.id for _, e in events],
        )


def _settle(group: list[Pending], error: BaseException | None) -> None:
    for _, _, done in group:
        if not done.done():  # a request that went away is not waited for
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)


# Ids are taken in insert order and the sequencer deletes the oldest first, so the span of
# ids is the backlog (an overestimate by rolled-back inserts), read from the index alone.
_BACKLOG = f"SELECT coalesce(max(id) - min(id) + 1, 0) FROM {SCHEMA}.inbox"


class Backlog:
    """This replica's view of how many events wait in the inbox (refreshed each second
    by a Periodic)."""

    def __init__(self, db: Database, limit: int) -> None:
        self._db = db
        self.limit = limit
        self.events = 0

    @property
    def full(self) -> bool:
        return self.events >= self.limit

    async def refresh(self) -> None:
        self.events = await self._db.fetchval(_BACKLOG)
        metrics.inbox_backlog.set(self.events)
