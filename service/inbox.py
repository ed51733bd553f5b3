"""The inbox: where every publisher writes, unordered, without locks or notifications."""

from __future__ import annotations

from service.database import Database
from service.publish import NewEvent
from service.schema import SCHEMA

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
