"""Export: a whole range of a topic as NDJSON, streamed without holding it in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import msgspec

from service import events, logs
from service.database import Database
from service.events import Trimmed
from service.replay import ReplayEvent, event_fields
from service.schema import SCHEMA
from service.topics import InvalidInput

log = logs.get(__name__)

# Seq order; time is non-decreasing along seq, so time bounds cut the range at both ends.
_PAGE = f"""
SELECT seq, type, data::text AS data, time, event_id, encode(hash, 'hex') AS hash
FROM {SCHEMA}.events
WHERE topic = $1 AND seq > $2 AND seq <= $3
  AND ($4::timestamptz IS NULL OR time >= $4)
  AND ($5::timestamptz IS NULL OR time < $5)
ORDER BY seq
LIMIT $6
"""


class ExportLine(ReplayEvent):
    """One NDJSON line: the event and its topic."""

    topic: str


_encoder = msgspec.json.Encoder()


def parse_time(value: str | None, name: str) -> datetime | None:
    """An ISO 8601 time; without an offset it is taken as UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"invalid {name} {value[:50]!r}: expected an ISO 8601 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


async def lines(
    db: Database,
    topic: str,
    *,
    after: int,
    before: int | None,
    since: datetime | None,
    until: datetime | None,
    page_size: int,
) -> AsyncIterator[bytes]:
    """The events with ``after < seq < before`` and ``since <= time < until``, one JSON
    object per line, up to the topic's head when the export started.

    Raises Trimmed, before anything is produced, when retention removed events after
    ``after`` (0 means the earliest held). If retention overtakes a running export, the
    export stops with Trimmed rather than skip: the response is cut off, never silently
    short.
    """
    marks = await events.marks(db, topic)
    if marks.cut(after):
        raise Trimmed(after, marks.first_seq)
    stop = marks.head if before is None else min(marks.head, before - 1)
    return _pages(db, topic, after, stop, since, until, page_size, marks.compacted)


async def _pages(
    db: Database,
    topic: str,
    after: int,
    stop: int,
    since: datetime | None,
    until: datetime | None,
    page_size: int,
    compacted: bool,
) -> AsyncIterator[bytes]:
    last = after
    # Seqs follow on without holes (but in a compacted snapshot); where the first page
    # starts is only known when the range starts after a seq, not at the earliest or a time.
    contiguous = after > 0 and since is None and not compacted
    while last < stop:
        rows = await db.fetch(_PAGE, topic, last, stop, since, until, page_size)
        if not rows:
            return
        if contiguous and rows[0]["seq"] != last + 1:
            log.warning("export.overtaken_by_retention", topic=topic, after=last)
            raise Trimmed(last, rows[0]["seq"])
        contiguous = not compacted
        yield b"".join(
            _encoder.encode(ExportLine(topic=topic, **event_fields(r))) + b"\n" for r in rows
        )
        last = rows[-1]["seq"]
