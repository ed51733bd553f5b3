"""Reading the events table: heads and pages of one topic, in seq order."""

from __future__ import annotations

import asyncpg

from service.database import Database
from service.schema import SCHEMA

_HEAD = f"SELECT head FROM {SCHEMA}.topics WHERE topic = $1"
_HEADS = f"SELECT topic, head FROM {SCHEMA}.topics WHERE topic = ANY($1::text[])"
# data::text hands the stored JSON through untouched: it is never decoded on the way out.
_PAGE = f"""
SELECT seq, type, data::text AS data, event_id, time, published_at
FROM {SCHEMA}.events
WHERE topic = $1 AND seq > $2
ORDER BY seq
LIMIT $3
"""

Executor = Database | asyncpg.Connection


class AfterHead(Exception):
    """A requested starting seq is beyond the topic's head."""

    def __init__(self, after: int, head: int) -> None:
        super().__init__(after, head)
        self.after = after
        self.head = head


async def head(db: Executor, topic: str) -> int:
    """The topic's last seq; 0 for a topic with no events yet."""
    value: int | None = await db.fetchval(_HEAD, topic)
    return value or 0


async def heads(db: Executor, topics: list[str]) -> dict[str, int]:
    """Heads of several topics at once; topics without events are left out."""
    rows = await db.fetch(_HEADS, topics)
    return {row["topic"]: row["head"] for row in rows}


async def page(db: Executor, topic: str, after: int, limit: int) -> list[asyncpg.Record]:
    """Up to ``limit`` events of ``topic`` with seq > ``after``, in seq order."""
    rows: list[asyncpg.Record] = await db.fetch(_PAGE, topic, after, limit)
    return rows
