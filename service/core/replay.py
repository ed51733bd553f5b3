"""Replay for audit: a topic's stored events as JSON pages."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote

import asyncpg
import msgspec

from . import events
from .events import AfterHead, Executor, Trimmed


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


async def read_page(db: Executor, topic: str, after: int, limit: int) -> bytes:
    """A page as JSON bytes; AfterHead when ``after`` is past the head, Trimmed when
    retention removed events after it (``after=0`` means the earliest held: never Trimmed).

    ``next`` is always given: at the head it returns no events until more are published,
    so an auditor can follow a topic by polling it.
    """
    marks = await events.marks(db, topic)
    if after > marks.head:
        raise AfterHead(after, marks.head)
    rows = await events.page(db, topic, after, limit) if after < marks.head else []
    if (rows and rows[0]["seq"] > after + 1) or (not rows and after < marks.head):
        marks = await events.marks(db, topic)  # a hole: trimmed since the first read?
    if marks.cut(after):
        raise Trimmed(after, max(marks.first_seq, rows[0]["seq"] if rows else 0))
    last = rows[-1]["seq"] if rows else after
    page = ReplayPage(
        topic=topic,
        after=after,
        head=max(marks.head, last),
        first_seq=marks.first_seq,
        compacted=marks.compacted,
        events=[ReplayEvent(**event_fields(r)) for r in rows],
        next=f"/feeds/{quote(topic)}/events?after={last}&limit={limit}",
    )
    return _encoder.encode(page)
