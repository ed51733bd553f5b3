"""Export: a whole range of a topic as NDJSON, streamed without holding it in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec

from .. import logs
from . import events
from .database import Database
from .events import Trimmed
from .replay import ReplayEvent, event_fields
from .schema import SCHEMA
from .topics import InvalidInput

log = logs.get(__name__)

# Seq order, and only a lower bound: with an upper bound on seq or time as well, a generic
# plan over fresh statistics sorted the whole rest of the range for every page (measured:
# page time proportional to the rows left). Time is non-decreasing along seq, so the ends
# (`before`, `until`) are applied as the rows come: the first row past them ends the export.
_PAGE = f"""
SELECT seq, type, data::text AS data, time, event_id, encode(hash, 'hex') AS hash
FROM {SCHEMA}.events
WHERE topic = $1 AND seq > $2 AND ($3::timestamptz IS NULL OR time >= $3)
ORDER BY seq
LIMIT $4
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
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        # In UTC, so that a time the database cannot take (9999-12-31T23:59:59-14:00 is in
        # the year 10000) is refused here, not halfway through the response.
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidInput(
            f"invalid {name} {value[:50]!r}: expected an ISO 8601 time between the years 1 "
            "and 9999 (UTC)"
        ) from None


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
    # The first page is read before the response starts, so that a failure to read (the
    # database unreachable) is an error status rather than a response cut off at once.
    first = await db.fetch(_PAGE, topic, after, since, page_size) if after < stop else []
    return _pages(db, topic, after, stop, since, until, page_size, marks.compacted, first)


async def _pages(
    db: Database,
    topic: str,
    after: int,
    stop: int,
    since: datetime | None,
    until: datetime | None,
    page_size: int,
    compacted: bool,
    first: list[Any],
) -> AsyncIterator[bytes]:
    last = after
    # Seqs follow on without holes (but in a compacted snapshot); where the first page
    # starts is only known when the range starts after a seq, not at the earliest or a time.
    contiguous = after > 0 and since is None and not compacted
    while last < stop:
        if first:
            rows, first = first, []
        else:
            rows = await db.fetch(_PAGE, topic, last, since, page_size)
        if not rows:
            return
        if contiguous and rows[0]["seq"] != last + 1:
            log.warning("export.overtaken_by_retention", topic=topic, after=last)
            raise Trimmed(last, rows[0]["seq"])
        contiguous = not compacted
        kept = [r for r in rows if r["seq"] <= stop and (until is None or r["time"] < until)]
        if kept:
            yield b"".join(
                _encoder.encode(ExportLine(topic=topic, **event_fields(r))) + b"\n" for r in kept
            )
        if len(kept) < len(rows):
            return
        last = rows[-1]["seq"]
