"""Export: a whole range of a topic as NDJSON, streamed without holding it in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from .. import logs
from . import events
from .database import Database
from .events import Trimmed
from .replay import Range, ReplayEvent, event_fields

log = logs.get(__name__)


class ExportLine(ReplayEvent):
    """One NDJSON line: the event and its topic."""

    topic: str


_encoder = msgspec.json.Encoder()


async def lines(db: Database, topic: str, span: Range, page_size: int) -> AsyncIterator[bytes]:
    """The events of the range, one JSON object per line, up to the topic's head when the
    export started.

    Raises Trimmed, before anything is produced, when retention removed events after the
    range's start (0 means the earliest held). If retention overtakes a running export, the
    export stops with Trimmed rather than skip: the response is cut off, never silently
    short.
    """
    marks = await events.marks(db, topic)
    if marks.cut(span.after):
        raise Trimmed(span.after, marks.first_seq)
    if span.where is not None:
        first_read = await events.filtered_page(
            db, topic, span.after, page_size, span.where, marks.head, span.since
        )
        return _filtered(db, topic, span, marks, page_size, first_read)
    # The first page is read before the response starts, so that a failure to read (the
    # database unreachable) is an error status rather than a response cut off at once.
    first = (
        await events.page(db, topic, span.after, page_size, span.since)
        if span.after < marks.head
        else []
    )
    return _pages(db, topic, span, marks, page_size, first)


async def _pages(
    db: Database,
    topic: str,
    span: Range,
    marks: events.Marks,
    page_size: int,
    first: list[Any],
) -> AsyncIterator[bytes]:
    last = span.after
    # Seqs follow on without holes (but in a compacted snapshot); where the first page
    # starts is only known when the range starts after a seq, not at the earliest or a time.
    contiguous = last > 0 and span.since is None and not marks.compacted
    while last < marks.head:
        if first:
            rows, first = first, []
        else:
            rows = await events.page(db, topic, last, page_size, span.since)
        if not rows:
            return
        if contiguous and rows[0]["seq"] != last + 1:
            log.warning("export.overtaken_by_retention", topic=topic, after=last)
            raise Trimmed(last, rows[0]["seq"])
        contiguous = not marks.compacted
        kept = [r for r in rows if r["seq"] <= marks.head and span.holds(r)]
        if kept:
            yield b"".join(
                _encoder.encode(ExportLine(topic=topic, **event_fields(r))) + b"\n" for r in kept
            )
        if len(kept) < len(rows):
            return
        last = rows[-1]["seq"]


async def _filtered(
    db: Database,
    topic: str,
    span: Range,
    marks: events.Marks,
    page_size: int,
    read: events.FilteredPage,
) -> AsyncIterator[bytes]:
    """The events of a filtered range: each read continues after what the last one
    scanned; retention overtaking the export is told by the marks, read after each page."""
    assert span.where is not None
    last = span.after
    while True:
        kept = [r for r in read.rows if span.holds(r)]
        if kept:
            yield b"".join(
                _encoder.encode(ExportLine(topic=topic, **event_fields(r))) + b"\n" for r in kept
            )
        if len(kept) < len(read.rows):
            return  # past the range's end
        if (await events.marks(db, topic)).cut(last):
            log.warning("export.overtaken_by_retention", topic=topic, after=last)
            raise Trimmed(last, (await events.marks(db, topic)).first_seq)
        last = read.covered
        if last >= marks.head:
            return
        read = await events.filtered_page(
            db, topic, last, page_size, span.where, marks.head, span.since
        )
