"""Reading the events table: heads and pages of one topic, in seq order."""

from __future__ import annotations

import asyncpg

from service.database import Database
from service.schema import SCHEMA
from service.topics import Selector

_HEAD = f"SELECT head FROM {SCHEMA}.topics WHERE topic = $1"
_HEADS = f"SELECT topic, head FROM {SCHEMA}.topics WHERE topic = ANY($1::text[])"
# data::text hands the stored JSON through untouched: it is never decoded on the way out.
_PAGE = f"""
SELECT seq, type, data::text AS data, event_id, time, published_at, encode(hash, 'hex') AS hash
FROM {SCHEMA}.events
WHERE topic = $1 AND seq > $2
ORDER BY seq
LIMIT $3
"""

_GLOBAL_HEAD = f"SELECT position FROM {SCHEMA}.sequencer"
# Events of several topics in global order. Each read scans at most $5 positions, so that a
# sparse selection never turns one page into a scan of the whole table; it also returns the
# head in the same snapshot, which tells how far the scan got when fewer events matched.
_GLOBAL_PAGE = f"""
WITH head AS (SELECT position AS head FROM {SCHEMA}.sequencer)
SELECT head.head, e.position, e.topic, e.seq, e.type, e.data, e.published_at
FROM head
LEFT JOIN LATERAL (
    SELECT position, topic, seq, type, data::text AS data, published_at
    FROM {SCHEMA}.events
    WHERE position > $1 AND position <= $1 + $5
      AND ($2::text[] IS NULL OR topic = ANY($2::text[]) OR topic LIKE ANY($3::text[]))
    ORDER BY position
    LIMIT $4
) e ON true
ORDER BY e.position
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


async def global_head(db: Executor) -> int:
    """The last global position handed out (0 before the first event)."""
    value: int = await db.fetchval(_GLOBAL_HEAD)
    return value


async def global_page(
    db: Executor, selector: Selector | None, after: int, limit: int
) -> tuple[list[asyncpg.Record], int]:
    """Events with position > ``after`` (of the selected topics; all when None), in global
    order, and the position the read covered up to."""
    window = limit * 10
    topics = None if selector is None else selector.topics
    patterns = [] if selector is None else selector.like_patterns
    rows = await db.fetch(_GLOBAL_PAGE, after, topics, patterns, limit, window)
    head: int = rows[0]["head"] if rows else after
    found = [r for r in rows if r["position"] is not None]
    if len(found) >= limit:
        return found, found[-1]["position"]
    return found, min(head, after + window)


async def hash_prefix(db: Executor, topic: str, seq: int) -> str | None:
    """The first 8 hex digits of the stored event's chain hash; None if there is none."""
    value: str | None = await db.fetchval(
        f"SELECT left(encode(hash, 'hex'), 8) FROM {SCHEMA}.events WHERE topic = $1 AND seq = $2",
        topic,
        seq,
    )
    return value
