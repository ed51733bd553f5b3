"""Replay for audit: a topic's stored events as JSON pages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import asyncpg
import msgspec

from . import events
from .events import AfterHead, Executor, Trimmed
from .filters import Where
from .topics import InvalidInput


class ReplayEvent(msgspec.Struct):
    """One stored event. ``id`` is the client-chosen id, if any."""

    seq: int
    type: str
    # The stored JSON, passed through without decoding.
    data: msgspec.Raw
    time: datetime
    id: str | None
    # The chain hash (hex): sha256 of the previous event's hash and this event's content.
    hash: str | None


@dataclass(frozen=True)
class Range:
    """The events of a topic that a replay page or an export covers: ``after < seq <
    before`` and ``since <= time < until`` (each end open when None). Time grows with seq,
    so the events of a range follow one another."""

    after: int = 0
    before: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    # Only the events whose data contains it (filtered out events are simply absent).
    where: Where | None = None

    def holds(self, row: asyncpg.Record) -> bool:
        """Whether an event read after ``after`` (and from ``since``) is before the end."""
        return (self.before is None or row["seq"] < self.before) and (
            self.until is None or row["time"] < self.until
        )

    def query(self, after: int) -> str:
        """The range's query parameters, continuing after ``after``."""
        params: dict[str, str | int] = {"after": after}
        if self.before is not None:
            params["before"] = self.before
        if self.since is not None:
            params["since"] = self.since.isoformat()
        if self.until is not None:
            params["until"] = self.until.isoformat()
        if self.where is not None and self.where.request is not None:
            params["where"] = self.where.request
        return urlencode(params)


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


def event_fields(row: asyncpg.Record) -> dict[str, Any]:
    """A stored event's fields as the replay and export APIs show them."""
    return {
        "seq": row["seq"],
        "type": row["type"],
        "data": msgspec.Raw(row["data"].encode()),
        "time": row["time"],
        "id": row["event_id"],
        "hash": row["hash"],
    }


class ReplayPage(msgspec.Struct):
    """Events after ``after``, the topic's head and low-water mark when read (the first seq
    retention still holds), and the URL of the next page."""

    topic: str
    after: int
    head: int
    first_seq: int
    # Below first_seq the topic holds only the latest event per key (see compaction).
    compacted: bool
    events: list[ReplayEvent]
    next: str


class ReplayPageDoc(msgspec.Struct):
    """ReplayPage as the OpenAPI schema shows it (``data`` is any JSON value)."""

    topic: str
    after: int
    head: int
    first_seq: int
    compacted: bool
    events: list[dict[str, Any]]
    next: str


_encoder = msgspec.json.Encoder()


async def read_page(db: Executor, topic: str, span: Range, limit: int) -> bytes:
    """A page of the range as JSON bytes; AfterHead when it starts past the head, Trimmed
    when retention removed events after its start (``after=0`` means the earliest held:
    never Trimmed).

    ``next`` is always given (the same range, after this page): at the head it returns no
    events until more are published, so an auditor can follow a topic by polling it; past
    the range's end, it returns none.
    """
    after = span.after
    marks = await events.marks(db, topic)
    if after > marks.head:
        raise AfterHead(after, marks.head)
    if span.where is not None:
        return await _filtered_page(db, topic, span, limit, marks)
    rows = await events.page(db, topic, after, limit, span.since) if after < marks.head else []
    if span.since is None and (
        (rows and rows[0]["seq"] > after + 1) or (not rows and after < marks.head)
    ):
        marks = await events.marks(db, topic)  # a hole: trimmed since the first read?
    if marks.cut(after):
        raise Trimmed(after, max(marks.first_seq, rows[0]["seq"] if rows else 0))
    kept = [r for r in rows if span.holds(r)]
    last = kept[-1]["seq"] if kept else after
    return _encoded(topic, span, limit, marks, kept, last)


async def _filtered_page(
    db: Executor, topic: str, span: Range, limit: int, marks: events.Marks
) -> bytes:
    """A page of a filtered range: the next page starts after what this one scanned, so
    a sparse filter's pages move on even when they hold no event."""
    assert span.where is not None
    after = span.after
    read = await events.filtered_page(db, topic, after, limit, span.where, marks.head, span.since)
    # Holes are the filter's here, so retention's cuts are told by the marks: read again
    # after the page, they cover any cut made before it.
    later = await events.marks(db, topic)
    if later.cut(after):
        raise Trimmed(after, later.first_seq)
    kept = [r for r in read.rows if span.holds(r)]
    return _encoded(topic, span, limit, marks, kept, read.covered)


def _encoded(
    topic: str,
    span: Range,
    limit: int,
    marks: events.Marks,
    kept: list[asyncpg.Record],
    last: int,
) -> bytes:
    page = ReplayPage(
        topic=topic,
        after=span.after,
        head=max(marks.head, last),
        first_seq=marks.first_seq,
        compacted=marks.compacted,
        events=[ReplayEvent(**event_fields(r)) for r in kept],
        next=f"/feeds/{quote(topic)}/events?{span.query(last)}&limit={limit}",
    )
    return _encoder.encode(page)
