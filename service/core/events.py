"""Reading the events table: heads, low-water marks and pages, in seq or global order."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

import asyncpg

from .database import Database
from .filters import Where
from .schema import SCHEMA
from .topics import Selector

_HEAD = f"SELECT head FROM {SCHEMA}.topics WHERE topic = $1"
_MARKS = f"SELECT head, first_seq, compacted FROM {SCHEMA}.topics WHERE topic = $1"
# What the topic holds at a resume point: the event's hash, or at the seq just before the
# low-water mark the hash retention kept of the last removed event.
_RESUME = f"""
SELECT t.head, t.first_seq, t.compacted,
       left(encode(CASE WHEN $2 = t.first_seq - 1 THEN t.tail_hash
                        ELSE (SELECT e.hash FROM {SCHEMA}.events e
                              WHERE e.topic = $1 AND e.seq = $2) END, 'hex'), 8) AS hash
FROM {SCHEMA}.topics t WHERE t.topic = $1
"""
_HEADS = f"SELECT topic, head FROM {SCHEMA}.topics WHERE topic = ANY($1::text[])"
# data::text hands the stored JSON through untouched: it is never decoded on the way out.
# Seq order, and only lower bounds: with an upper bound on seq or time as well, a generic
# plan over fresh statistics sorted the whole rest of the range for every page (measured:
# page time proportional to the rows left). Time is non-decreasing along seq, so readers
# apply the ends (replay.Range) as the rows come.
_PAGE = f"""
SELECT seq, type, data::text AS data, event_id, time, published_at, encode(hash, 'hex') AS hash
FROM {SCHEMA}.events
WHERE topic = $1 AND seq > $2 AND ($3::timestamptz IS NULL OR time >= $3)
ORDER BY seq
LIMIT $4
"""

# A page of the events that contain a filter (filters.py), scanning at most $6 seqs after
# $2, so that a sparse filter never turns one page into a scan of the whole topic: the reader
# continues after what was scanned, not after the last event found.
_FILTERED_PAGE = f"""
SELECT seq, type, data::text AS data, event_id, time, published_at, encode(hash, 'hex') AS hash
FROM {SCHEMA}.events
WHERE topic = $1 AND seq > $2 AND seq <= $2 + $6
  AND ($3::timestamptz IS NULL OR time >= $3) AND data @> ANY($5::jsonb[])
ORDER BY seq
LIMIT $4
"""
# How many seqs a filtered read scans for each event it may return.
SCAN_PER_EVENT = 10
MIN_SCAN = 10_000

# The same page as SSE frames, built by PostgreSQL (see frames.py for the formats): a
# stream's catch-up and the fan-out's reads then decode one value per page instead of a
# record per event (measured: that was most of the Python side's CPU in a replay). Each
# format is built only if asked for ($4: typed frames, $5: `message` frames); FILTER skips
# the other's concatenation row by row. With $6, each event's frames and data also come
# apart, for the fan-out to pick those that filtered subscribers take. The fan-out also
# takes each event's publish time, for the delivery latency metric. A filtered read
# ({condition}: $7 the filter, $8 how many seqs to scan) holds only the events that match.
_FRAMES = """
SELECT min(p.seq) AS first, max(p.seq) AS last, count(*)::int AS count,
       convert_to(string_agg(p.typed, '' ORDER BY p.seq) FILTER (WHERE $4), 'UTF8') AS data,
       convert_to(string_agg(p.message, '' ORDER BY p.seq) FILTER (WHERE $5), 'UTF8')
           AS message,
       array_agg(convert_to(p.typed, 'UTF8') ORDER BY p.seq) FILTER (WHERE $4 AND $6)
           AS typed_pieces,
       array_agg(convert_to(p.message, 'UTF8') ORDER BY p.seq) FILTER (WHERE $5 AND $6)
           AS message_pieces,
       array_agg(p.data::text ORDER BY p.seq) FILTER (WHERE $6) AS datas,
       (array_agg(p.hash8 ORDER BY p.seq DESC))[1] AS last_hash,
       {published} AS published
FROM (
    SELECT e.seq, e.data, e.published_at, left(encode(e.hash, 'hex'), 8) AS hash8,
           CASE WHEN $4 THEN
               'id: ' || e.seq || coalesce('.' || left(encode(e.hash, 'hex'), 8), '')
               || E'\\nevent: ' || e.type || E'\\ndata: ' || e.data::text || E'\\n\\n'
           END AS typed,
           CASE WHEN $5 THEN
               'id: ' || e.seq || coalesce('.' || left(encode(e.hash, 'hex'), 8), '')
               || E'\\ndata: {{"topic": "' || $1 || '", "seq": ' || e.seq || ', "type": '
               || to_json(e.type)::text || ', "data": ' || e.data::text || E'}}\\n\\n'
           END AS message
    FROM {schema}.events e
    WHERE e.topic = $1 AND e.seq > $2{condition}
    ORDER BY e.seq
    LIMIT $3
) p
"""
_FILTER = " AND e.seq <= $2 + $8 AND e.data @> ANY($7::jsonb[])"
_TIMED = "array_agg(extract(epoch FROM p.published_at)::float8 ORDER BY p.seq)"
_FRAMES_UNTIMED = _FRAMES.format(published="NULL::float8[]", schema=SCHEMA, condition="")
_FRAMES_TIMED = _FRAMES.format(published=_TIMED, schema=SCHEMA, condition="")
_FRAMES_FILTERED = _FRAMES.format(published="NULL::float8[]", schema=SCHEMA, condition=_FILTER)
# The first 8 hex digits of the chain hash of the event at a seq, or a global position.
_HASH_AT = f"SELECT left(encode(hash, 'hex'), 8) FROM {SCHEMA}.events WHERE topic = $1 AND seq = $2"
_HASH_AT_POSITION = f"SELECT left(encode(hash, 'hex'), 8) FROM {SCHEMA}.events WHERE position = $1"

_GLOBAL_HEAD = f"SELECT position FROM {SCHEMA}.sequencer"
# Events of several topics in global order. Each read scans at most $5 positions, so that a
# sparse selection never turns one page into a scan of the whole table; it also returns the
# head in the same snapshot, which tells how far the scan got when fewer events matched,
# and the selected topics from which retention removed events after position $1 (`lost`:
# topic -> first seq still held), which a reader could not otherwise tell from a quiet topic.
_GLOBAL_PAGE = f"""
WITH head AS (SELECT position AS head FROM {SCHEMA}.sequencer),
lost AS (
    SELECT jsonb_object_agg(t.topic, t.first_seq)::text AS lost
    FROM {SCHEMA}.topics t
    WHERE t.tail_position > $1 AND NOT t.compacted
      AND ($2::text[] IS NULL OR t.topic = ANY($2::text[]) OR t.topic LIKE ANY($3::text[]))
)
SELECT head.head, lost.lost, e.position, e.topic, e.seq, e.type, e.data, e.hash8, e.published_at
FROM head CROSS JOIN lost
LEFT JOIN LATERAL (
    SELECT position, topic, seq, type, data::text AS data,
           left(encode(hash, 'hex'), 8) AS hash8, published_at
    FROM {SCHEMA}.events
    WHERE position > $1 AND position <= $1 + $5
      AND ($2::text[] IS NULL OR topic = ANY($2::text[]) OR topic LIKE ANY($3::text[]))
      AND ($6::jsonb[] IS NULL OR data @> ANY($6::jsonb[]))
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


class Trimmed(Exception):
    """Retention removed events after the requested starting seq."""

    def __init__(self, after: int, first_seq: int) -> None:
        super().__init__(after, first_seq)
        self.after = after
        self.first_seq = first_seq


async def head(db: Executor, topic: str) -> int:
    """The topic's last seq; 0 for a topic with no events yet."""
    value: int | None = await db.fetchval(_HEAD, topic)
    return value or 0


class Marks(NamedTuple):
    """Where a topic's history starts and ends."""

    head: int
    # The low-water mark: retention removed (or compacted) every event before this seq; the
    # hash chain is checked from here.
    first_seq: int
    # Below first_seq the topic holds a snapshot, the latest event per key: a reader that
    # resumes there misses superseded events only, and is not told of a gap.
    compacted: bool

    def cut(self, after: int, *, earliest: bool = True) -> bool:
        """Whether retention removed events that a reader who has seen up to ``after`` is
        owed (``after=0`` asks for the earliest held, unless ``earliest`` is False)."""
        if self.compacted or (after == 0 and earliest):
            return False
        return after < self.first_seq - 1


async def marks(db: Executor, topic: str) -> Marks:
    """The topic's head and low-water mark."""
    row = await db.fetchrow(_MARKS, topic)
    return Marks(row["head"], row["first_seq"], row["compacted"]) if row else Marks(0, 1, False)


async def resume_point(db: Executor, topic: str, seq: int) -> tuple[Marks, str | None]:
    """The topic's marks, and the first 8 hex digits of the chain hash of the event at
    ``seq`` (None if the topic holds none there)."""
    row = await db.fetchrow(_RESUME, topic, seq)
    if row is None:
        return Marks(0, 1, False), None
    return Marks(row["head"], row["first_seq"], row["compacted"]), row["hash"]


async def topics(db: Executor, limit: int) -> list[asyncpg.Record]:
    """Topics with events, by name: head and low-water mark."""
    rows: list[asyncpg.Record] = await db.fetch(
        f"SELECT topic, head, first_seq FROM {SCHEMA}.topics ORDER BY topic LIMIT $1", limit
    )
    return rows


async def heads(db: Executor, topics: list[str]) -> dict[str, int]:
    """Heads of several topics at once; topics without events are left out."""
    rows = await db.fetch(_HEADS, topics)
    return {row["topic"]: row["head"] for row in rows}


async def page(
    db: Executor, topic: str, after: int, limit: int, since: datetime | None = None
) -> list[asyncpg.Record]:
    """Up to ``limit`` events of ``topic`` with seq > ``after`` (and time >= ``since``), in
    seq order."""
    rows: list[asyncpg.Record] = await db.fetch(_PAGE, topic, after, since, limit)
    return rows


class FilteredPage(NamedTuple):
    """The events of a filtered read, and the seq it scanned up to."""

    rows: list[asyncpg.Record]
    covered: int


async def filtered_page(
    db: Executor,
    topic: str,
    after: int,
    limit: int,
    where: Where,
    head: int,
    since: datetime | None = None,
) -> FilteredPage:
    """Up to ``limit`` events of ``topic`` after ``after`` whose data contains ``where``,
    and the seq the read covered: up to the last event if it returned ``limit``, else as
    far as it scanned, and never past ``head`` (read before, so that the read's snapshot
    holds everything up to it)."""
    window = _window(limit)
    rows: list[asyncpg.Record] = await db.fetch(
        _FILTERED_PAGE, topic, after, since, limit, where.sql, window
    )
    last = rows[-1]["seq"] if rows else 0
    return FilteredPage(rows, _covered(after, head, limit, window, len(rows), last))


def _window(limit: int) -> int:
    """How many seqs a filtered read of ``limit`` events scans at most."""
    return max(limit * SCAN_PER_EVENT, MIN_SCAN)


def _covered(after: int, head: int, limit: int, window: int, found: int, last: int) -> int:
    """Where a filtered read leaves its reader: after its last event if it found ``limit``
    (it stopped there), else after what it scanned, never past ``head``."""
    if found >= limit:
        return last
    return max(after, min(head, after + window))


@dataclass(frozen=True, slots=True)
class Frames:
    """A page of one topic as SSE frames: the seqs it holds (0 when empty), its bytes as
    typed frames and as ``message`` frames (each empty unless asked for), and when each
    event was published (Unix time, for the delivery latency metric). With ``pieces``:
    each event's frames and data apart, in seq order. ``last_hash``: the first 8 hex digits
    of the last event's chain hash."""

    first: int
    last: int
    count: int
    data: bytes
    message: bytes
    published: list[float]
    last_hash: str | None = None
    typed_pieces: list[bytes] = field(default_factory=list)
    message_pieces: list[bytes] = field(default_factory=list)
    datas: list[str] = field(default_factory=list)


_EMPTY = Frames(0, 0, 0, b"", b"", [])


async def frames_page(
    db: Executor,
    topic: str,
    after: int,
    limit: int,
    *,
    timed: bool = False,
    typed: bool = True,
    message: bool = False,
    pieces: bool = False,
) -> Frames:
    """Up to ``limit`` events of ``topic`` with seq > ``after`` as SSE frames, in seq order:
    ``typed`` frames (``event: <type>``) in ``data``, ``message`` frames (the type in the
    data) in ``message``, each only if asked for; ``timed``: with their publish times
    (else ``published`` is empty); ``pieces``: each event's frames and data apart too."""
    query = _FRAMES_TIMED if timed else _FRAMES_UNTIMED
    row = await db.fetchrow(query, topic, after, limit, typed, message, pieces)
    return _frames(row)


async def filtered_frames_page(
    db: Executor,
    topic: str,
    after: int,
    limit: int,
    where: Where,
    head: int,
    *,
    message: bool = False,
) -> tuple[Frames, int]:
    """The events after ``after`` that contain ``where``, as frames (``message`` or typed),
    and the seq the read covered (see ``filtered_page``)."""
    window = _window(limit)
    row = await db.fetchrow(
        _FRAMES_FILTERED, topic, after, limit, not message, message, False, where.sql, window
    )
    page = _frames(row)
    return page, _covered(after, head, limit, window, page.count, page.last)


def _frames(row: asyncpg.Record | None) -> Frames:
    assert row is not None
    if not row["count"]:
        return _EMPTY
    return Frames(
        row["first"],
        row["last"],
        row["count"],
        row["data"] or b"",
        row["message"] or b"",
        row["published"] or [],
        row["last_hash"],
        row["typed_pieces"] or [],
        row["message_pieces"] or [],
        row["datas"] or [],
    )


async def hash_at(db: Executor, topic: str, seq: int) -> str | None:
    """The first 8 hex digits of the chain hash of the event at ``seq`` (None: no event)."""
    value: str | None = await db.fetchval(_HASH_AT, topic, seq)
    return value


async def hash_at_position(db: Executor, position: int) -> str | None:
    """The same for the event at a global position."""
    value: str | None = await db.fetchval(_HASH_AT_POSITION, position)
    return value


async def global_head(db: Executor) -> int:
    """The last global position handed out (0 before the first event)."""
    value: int = await db.fetchval(_GLOBAL_HEAD)
    return value


class GlobalPage(NamedTuple):
    """A read in global order: the events, the position it covered up to, and the selected
    topics that retention cut after the starting position (topic -> first seq held)."""

    rows: list[asyncpg.Record]
    covered: int
    lost: dict[str, int]


async def global_page(
    db: Executor,
    selector: Selector | None,
    after: int,
    limit: int,
    where: Where | None = None,
) -> GlobalPage:
    """Events with position > ``after`` (of the selected topics; all when None; whose data
    contains ``where``, if given), in global order."""
    window = limit * 10
    topics = None if selector is None else selector.topics
    patterns = [] if selector is None else selector.like_patterns
    condition = None if where is None else where.sql
    rows = await db.fetch(_GLOBAL_PAGE, after, topics, patterns, limit, window, condition)
    head: int = rows[0]["head"] if rows else after
    lost = json.loads(rows[0]["lost"]) if rows and rows[0]["lost"] else {}
    found = [r for r in rows if r["position"] is not None]
    if len(found) >= limit:
        return GlobalPage(found, found[-1]["position"], lost)
    return GlobalPage(found, min(head, after + window), lost)
