"""Retention: per-topic policies, and removing what they no longer keep.

Policies live in the database (``changefeed.retention``) so that every replica applies the
same ones; the SQL function ``changefeed.trim()`` does the work in short batches (see the
migration). Every replica calls ``trim`` periodically (see runtime): trim() takes a
transaction advisory lock without waiting, so at any moment one replica trims and the
others skip.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from .. import logs
from . import metrics
from .database import Database
from .schema import SCHEMA
from .topics import InvalidInput, Selector

log = logs.get(__name__)

_SET = f"""
INSERT INTO {SCHEMA}.retention AS r (pattern, max_age, max_count, compact)
VALUES ($1, $2::text::interval, $3, $4)
ON CONFLICT (pattern) DO UPDATE
SET max_age = excluded.max_age, max_count = excluded.max_count, compact = excluded.compact,
    updated_at = now()
"""
_LIST = f"""
SELECT pattern, max_age::text AS max_age, max_count, compact
FROM {SCHEMA}.retention ORDER BY pattern
"""
_CLEAR = f"DELETE FROM {SCHEMA}.retention WHERE pattern = $1"
_TRIM = f"SELECT topic, first_seq, removed FROM {SCHEMA}.trim($1)"


@dataclass(frozen=True)
class Policy:
    """Keep events younger than ``max_age`` and/or the latest ``max_count`` (None: no bound).
    Beyond those bounds events are removed, or with ``compact`` only superseded ones are:
    the latest event per key stays."""

    pattern: str
    max_age: str | None
    max_count: int | None
    compact: bool = False


async def set_policy(
    conn: asyncpg.Connection,
    pattern: str,
    max_age: str | None,
    max_count: int | None,
    compact: bool = False,
) -> Policy:
    """Create or replace the policy for a topic or pattern. ``max_age`` is a PostgreSQL
    interval (``30 days``, ``12h``, ``P1W``)."""
    Selector([pattern])  # the same names and patterns as streams take
    if max_age is None and max_count is None and not compact:
        raise InvalidInput(
            "give --max-age and/or --max-count, or --compact (to keep everything: clear)"
        )
    if max_count is not None and max_count < 1:
        raise InvalidInput("max-count must be at least 1")
    try:
        await conn.execute(_SET, pattern, max_age, max_count, compact)
    except (asyncpg.InvalidDatetimeFormatError, asyncpg.DatetimeFieldOverflowError) as exc:
        raise InvalidInput(f"invalid max-age {max_age!r}: {exc}") from None
    except asyncpg.CheckViolationError:
        raise InvalidInput(f"max-age must be a positive interval, not {max_age!r}") from None
    return Policy(pattern, max_age, max_count, compact)


async def policies(conn: asyncpg.Connection) -> list[Policy]:
    """Every policy, by pattern."""
    rows = await conn.fetch(_LIST)
    return [Policy(r["pattern"], r["max_age"], r["max_count"], r["compact"]) for r in rows]


async def clear_policy(conn: asyncpg.Connection, pattern: str) -> bool:
    """Remove a policy (its topics are then kept forever, unless a pattern covers them)."""
    result: str = await conn.execute(_CLEAR, pattern)
    return result != "DELETE 0"


async def trim(
    db: Database | asyncpg.Connection,
    batch_rows: int,
    on_removed: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Remove what the policies no longer keep, one short transaction per ``batch_rows``
    events, until done; the events removed per topic (``on_removed`` hears of each batch).
    Returns at once, removing nothing, while another replica trims."""
    removed: dict[str, int] = {}
    while True:
        rows = await db.fetch(_TRIM, batch_rows)
        for row in rows:
            removed[row["topic"]] = removed.get(row["topic"], 0) + row["removed"]
            metrics.retention_removed.inc(row["removed"])
            if on_removed is not None:
                on_removed(row["removed"])
            log.info(
                "retention.trimmed",
                topic=row["topic"],
                removed=row["removed"],
                first_seq=row["first_seq"],
            )
        if sum(row["removed"] for row in rows) < batch_rows:
            return removed
