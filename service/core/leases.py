"""Durable consumers: definitions, leases of work and acknowledgements (SQL in migrations)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import asyncpg
import msgspec

from .database import Database
from .schema import SCHEMA
from .topics import Selector


class UnknownConsumer(LookupError):
    """No consumer has that name."""


class LeaseLost(Exception):
    """The lease lapsed and went to another worker, or was already acknowledged."""


class NameTaken(Exception):
    """A consumer of that name exists, and is not the caller's to change."""


class Found(NamedTuple):
    """Who a consumer belongs to (None: no one) and what it reads."""

    owner: str | None
    selection: list[str]


class ConsumerEvent(msgspec.Struct):
    """One event handed to a consumer's worker."""

    position: int
    topic: str
    seq: int
    type: str
    data: msgspec.Raw
    time: datetime
    id: str | None


class LeasedBatch(msgspec.Struct):
    """A worker's batch: acknowledge it with ``lease`` before ``expires_at``."""

    consumer: str
    lease: str | None
    expires_at: datetime | None
    events: list[ConsumerEvent]


_encoder = msgspec.json.Encoder()

# A consumer keeps the owner it was created with; an existing one is changed only if it
# is the caller's to use ($7: the caller's `consume` grant names it), decided in the same
# statement, so that no concurrent request can slip in between a check and the change.
_DEFINE = f"""
INSERT INTO {SCHEMA}.consumers AS c
    (name, selection, topics, patterns, visibility_timeout, owner)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (name) DO UPDATE SET selection = excluded.selection, topics = excluded.topics,
    patterns = excluded.patterns, visibility_timeout = excluded.visibility_timeout
WHERE c.owner IS NULL OR c.owner = $6 OR $7
RETURNING (xmax = 0) AS created
"""
# A consumer that starts at the latest events begins every existing topic at its head.
_START_LATEST = f"""
INSERT INTO {SCHEMA}.consumer_topics (consumer, topic, acked_seq)
SELECT $1, t.topic, t.head FROM {SCHEMA}.topics t
WHERE t.topic = ANY ($2::text[]) OR t.topic LIKE ANY ($3::text[])
ON CONFLICT DO NOTHING
"""
_DESCRIBE = f"""
SELECT c.name, c.selection, extract(epoch FROM c.visibility_timeout)::float8 AS visibility,
       c.created_at, c.owner,
       coalesce(sum(t.head - coalesce(ct.acked_seq, 0)), 0)::bigint AS lag,
       count(t.topic) AS topics,
       count(ct.lease) FILTER (WHERE ct.lease_expires > clock_timestamp()) AS leased_topics
FROM {SCHEMA}.consumers c
LEFT JOIN {SCHEMA}.topics t ON t.topic = ANY (c.topics) OR t.topic LIKE ANY (c.patterns)
LEFT JOIN {SCHEMA}.consumer_topics ct ON ct.consumer = c.name AND ct.topic = t.topic
WHERE $1::text IS NULL OR c.name = $1
GROUP BY c.name
ORDER BY c.name
"""
_CURSORS = f"""
SELECT t.topic, t.head, t.first_seq, coalesce(ct.acked_seq, 0) AS acked_seq,
       ct.lease_expires > clock_timestamp() AS leased,
       coalesce(ct.skipped, 0) AS skipped, ct.skipped_upto
FROM {SCHEMA}.consumers c
JOIN {SCHEMA}.topics t ON t.topic = ANY (c.topics) OR t.topic LIKE ANY (c.patterns)
LEFT JOIN {SCHEMA}.consumer_topics ct ON ct.consumer = c.name AND ct.topic = t.topic
WHERE c.name = $1
ORDER BY t.topic
"""


async def define(
    db: Database,
    name: str,
    selector: Selector,
    visibility_seconds: float,
    start: str,
    owner: str | None,
    granted: bool,
) -> bool:
    """Create or update a consumer; True when it was created (by ``owner``). NameTaken if
    it exists and is neither ``owner``'s nor ``granted`` (by a `consume` grant)."""
    async with db.acquire() as conn, conn.transaction():
        created: bool | None = await conn.fetchval(
            _DEFINE,
            name,
            sorted(selector.topics + selector.patterns),
            selector.topics,
            selector.like_patterns,
            timedelta(seconds=visibility_seconds),
            owner,
            granted,
        )
        if created is None:
            raise NameTaken(name)
        if created and start == "latest":
            await conn.execute(_START_LATEST, name, selector.topics, selector.like_patterns)
        return created


def _summary(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "name": row["name"],
        "owner": row["owner"],
        "topics": list(row["selection"]),
        "visibility_timeout": row["visibility"],
        "created_at": row["created_at"].isoformat(),
        "lag": row["lag"],
        "matching_topics": row["topics"],
        "leased_topics": row["leased_topics"],
    }


async def describe(db: Database, name: str) -> dict[str, Any]:
    """A consumer with its lag (events not yet acknowledged) and per-topic cursors."""
    rows = await db.fetch(_DESCRIBE, name)
    if not rows:
        raise UnknownConsumer(name)
    summary = _summary(rows[0])
    summary["cursors"] = [
        {
            "topic": r["topic"],
            "head": r["head"],
            "acked": r["acked_seq"],
            "leased": bool(r["leased"]),
            "first_seq": r["first_seq"],
            # Events retention removed before this consumer acknowledged them: a gap
            # stated, not hidden (the cursor was moved past them).
            "skipped": r["skipped"],
            "skipped_upto": r["skipped_upto"],
        }
        for r in await db.fetch(_CURSORS, name)
    ]
    return summary


async def find(db: Database, name: str) -> Found | None:
    """Whose a consumer is and the topics and patterns it reads (None: no such consumer)."""
    row = await db.fetchrow(
        f"SELECT owner, selection FROM {SCHEMA}.consumers WHERE name = $1", name
    )
    return None if row is None else Found(row["owner"], list(row["selection"]))


async def list_all(db: Database) -> list[dict[str, Any]]:
    """Every consumer with its lag."""
    return [_summary(r) for r in await db.fetch(_DESCRIBE, None)]


async def delete(db: Database, name: str, owner: str | None, granted: bool) -> None:
    """Delete a consumer if it is ``owner``'s or ``granted`` (in the same statement)."""
    status = await db.execute(
        f"DELETE FROM {SCHEMA}.consumers WHERE name = $1 AND (owner IS NULL OR owner = $2 OR $3)",
        name,
        owner,
        granted,
    )
    if status.endswith(" 0"):
        raise UnknownConsumer(name)


async def lease(db: Database, name: str, limit: int) -> LeasedBatch:
    """Up to ``limit`` events for one worker, leased until the visibility timeout."""
    try:
        rows = await db.fetch(f"SELECT * FROM {SCHEMA}.lease($1, $2)", name, limit)
    except asyncpg.NoDataFoundError:
        raise UnknownConsumer(name) from None
    return LeasedBatch(
        consumer=name,
        lease=str(rows[0]["lease"]) if rows else None,
        expires_at=rows[0]["expires_at"] if rows else None,
        events=[
            ConsumerEvent(
                position=r["position"],
                topic=r["topic"],
                seq=r["seq"],
                type=r["type"],
                data=msgspec.Raw(r["data"].encode()),
                time=r["time"],
                id=r["event_id"],
            )
            for r in rows
        ],
    )


def encode(batch: LeasedBatch) -> bytes:
    return _encoder.encode(batch)


async def ack(db: Database, name: str, lease_id: uuid.UUID, upto: int | None) -> dict[str, int]:
    """Acknowledge a lease (up to a global position); returns each topic's new cursor."""
    if not await db.fetchval(f"SELECT 1 FROM {SCHEMA}.consumers WHERE name = $1", name):
        raise UnknownConsumer(name)
    try:
        rows = await db.fetch(f"SELECT * FROM {SCHEMA}.ack($1, $2, $3)", name, lease_id, upto)
    except asyncpg.ObjectNotInPrerequisiteStateError as exc:
        raise LeaseLost(exc.args[0] if exc.args else str(exc)) from None
    return {r["topic"]: r["acked_seq"] for r in rows}
