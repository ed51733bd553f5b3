"""One subscriber's SSE stream: catch up from the table, then follow the live fan-out.

A stream reads one topic (positions are its seqs) or several topics in global order
(positions are global positions), and remembers the position it has covered. It takes
batches from the hub only when they continue exactly from there; whenever it is behind the
feed (resuming from an old position, a batch that overlaps what it already sent, or a
buffer that overflowed because the client read slowly), it pages from the table instead.
So the hand-over from history to live events has no gap and no duplicate, whatever the
timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from .. import logs
from . import events, frames, metrics
from .database import UNAVAILABLE, Database
from .events import AfterHead
from .fanout import GLOBAL, Batch, Hub, Subscription, catch_up
from .filters import Where
from .topics import Selector

log = logs.get(__name__)


class Connection(Protocol):
    """What a stream may hold of its client's connection, from the HTTP server
    (web.uvicorn_direct.DirectWrite): a write that needs no wake-up of the stream's task,
    and a callback for when the connection is lost."""

    def __call__(self, data: bytes) -> bool: ...

    def on_lost(self, callback: Callable[[], None]) -> None: ...


class TopicSource:
    """One topic's events; the stream's position is a seq. ``message``: frames without
    ``event:`` lines, the type in the data (``dispatch=message``)."""

    def __init__(self, topic: str, *, message: bool = False, where: Where | None = None) -> None:
        self.topic = topic
        self.feed_key = topic
        self.selector: Selector | None = None
        self.message = message
        # Only the events whose data contains it; the others are simply absent.
        self.where = where
        # The client asked for the earliest events held (after=0), not for a position.
        self.earliest = False

    async def head(self, db: Database) -> int:
        return await events.head(db, self.topic)

    async def hash_at(self, db: Database, seq: int) -> str | None:
        return await events.hash_at(db, self.topic, seq)

    async def verify(self, db: Database, seq: int, expect_hash: str) -> bytes | None:
        """None when the topic holds the client's last event at ``seq``; else a reset
        frame, after which the stream replays the topic from its start."""
        requested = f"{seq}.{expect_hash}"
        marks, held = await events.resume_point(db, self.topic, seq)
        head = marks.head
        if seq == 0 or (seq < marks.first_seq - 1 and held is None):
            # Nothing to compare: retention removed it (the first read reports the gap), or
            # compaction did (the events kept after it bring the client up to date).
            return None
        if seq > head:
            detail = (
                f"the topic ends at seq {head}, before the client's last event {requested}: "
                "the database was restored to an earlier point or the topic was recreated"
            )
            return _reset(self, "behind", detail, requested)
        if held == expect_hash:
            return None
        detail = (
            f"the event at seq {seq} is not the one the client saw ({requested}): the "
            "history was rewritten (a restore, a recreated topic, or tampering)"
        )
        return _reset(self, "mismatch", detail, requested)

    async def read(self, db: Database, after: int, limit: int) -> tuple[bytes, int, int]:
        """Frames after ``after``, how many, and the position they cover up to."""
        if self.where is not None:
            return await self._read_filtered(db, after, limit)
        page = await events.frames_page(
            db, self.topic, after, limit, typed=not self.message, message=self.message
        )
        data = page.message if self.message else page.data
        if page.count and page.first == after + 1:
            return data, page.count, page.last
        # A hole after `after`, or nothing at all: retention may have cut what followed it
        # (seqs have no other holes, but a compacted snapshot's, which are no loss).
        marks = await events.marks(db, self.topic)
        if marks.cut(after, earliest=self.earliest):
            first = page.first if page.count else marks.first_seq
            log.warning("stream.retention_gap", topic=self.topic, after=after, first_seq=first)
            data = (
                frames.reset(
                    "retention",
                    f"retention removed seqs {after + 1} to {first - 1} before this stream "
                    f"delivered them; continuing from seq {first}, the first one held",
                    str(after),
                    first - 1,
                    first_seq=first,
                )
                + data
            )
            after = first - 1
        return data, page.count, page.last if page.count else after

    async def _read_filtered(self, db: Database, after: int, limit: int) -> tuple[bytes, int, int]:
        """The matching events of a bounded scan after ``after``, ending with the id of
        where the scan stopped if no event is there, so that the client resumes after what
        the stream passed. Retention's cuts are told by the marks, read after the page."""
        assert self.where is not None
        head = await events.head(db, self.topic)
        page, covered = await events.filtered_frames_page(
            db, self.topic, after, limit, self.where, head, message=self.message
        )
        data = page.message if self.message else page.data
        marks = await events.marks(db, self.topic)
        if marks.cut(after, earliest=self.earliest):
            first = marks.first_seq
            log.warning("stream.retention_gap", topic=self.topic, after=after, first_seq=first)
            data = (
                frames.reset(
                    "retention",
                    f"retention removed seqs {after + 1} to {first - 1} before this stream "
                    f"delivered them; continuing from seq {first}, the first one held",
                    str(after),
                    first - 1,
                    first_seq=first,
                )
                + data
            )
        if covered > (page.last if page.count else after):
            hash8 = await events.hash_at(db, self.topic, covered)
            data += frames.keepalive(frames.position_id(covered, hash8).encode())
        return data, page.count, covered

    def __str__(self) -> str:
        return self.topic


class SelectionSource:
    """Several topics in global order; the stream's position is a global position."""

    def __init__(
        self, selector: Selector, *, message: bool = False, where: Where | None = None
    ) -> None:
        self.selector: Selector | None = selector
        self.feed_key = GLOBAL
        self.message = message
        self.where = where
        self.earliest = False
        # Retention cuts already reported to this client: topic -> first seq held.
        self._reported: dict[str, int] = {}

    async def head(self, db: Database) -> int:
        return await events.global_head(db)

    async def hash_at(self, db: Database, position: int) -> str | None:
        return await events.hash_at_position(db, position)

    async def verify(self, db: Database, position: int, expect_hash: str) -> bytes | None:
        """As for one topic, by the event at a global position (of whichever topic: the
        opening frame's id may name an event outside the selection)."""
        requested = f"{position}.{expect_hash}"
        if position == 0:
            return None
        head = await events.global_head(db)
        if position > head:
            detail = (
                f"the events end at position {head}, before the client's last event "
                f"{requested}: the database was restored to an earlier point"
            )
            return _reset(self, "behind", detail, requested)
        held = await events.hash_at_position(db, position)
        if held is None or held == expect_hash:
            # None: retention removed it; the first read reports what was cut.
            return None
        detail = (
            f"the event at position {position} is not the one the client saw ({requested}): "
            "the history was rewritten (a restore, or tampering)"
        )
        return _reset(self, "mismatch", detail, requested)

    async def read(self, db: Database, after: int, limit: int) -> tuple[bytes, int, int]:
        page = await events.global_page(db, self.selector, after, limit, self.where)
        data = b"".join(frames.encode_multi(page.rows, message=self.message))
        # Positions have holes wherever other topics' events sit, so a cut cannot be seen
        # in the rows: the read reports it.
        if after == 0 and self.earliest:
            # Asked for the earliest events held: owed nothing before them.
            self._reported.update(page.lost)
        lost = {t: s for t, s in page.lost.items() if s > self._reported.get(t, 0)}
        if lost:
            self._reported.update(lost)
            log.warning("stream.retention_gap", topics=str(self), after=after, lost=lost)
            named = ", ".join(f"{t} before seq {s}" for t, s in sorted(lost.items()))
            data = (
                frames.reset(
                    "retention",
                    f"retention removed events after position {after} before this stream "
                    f"delivered them ({named}); continuing with the events still held",
                    str(after),
                    after,
                    lost=lost,
                )
                + data
            )
        return data, len(page.rows), page.covered

    def __str__(self) -> str:
        return str(self.selector)


Source = TopicSource | SelectionSource


def _reset(source: Source, reason: str, detail: str, requested: str) -> bytes:
    log.warning("stream.reset", topic=str(source), requested=requested, reason=reason)
    return frames.reset(reason, detail + "; replaying from the start", requested, 0)


def hand_over(batches: list[Batch], last: int) -> tuple[list[Batch], int, bool]:
    """The stream's one hand-over rule, from live batches to its position ``last``: take a
    batch only if it starts at ``last + 1``. Returns the batches taken, the new position,
    and whether the stream is behind: a batch that leaves a gap or overlaps what was sent
    stops the taking, and the table settles it. Batches wholly at or before ``last`` were
    already sent from the table, and are passed over."""
    taken: list[Batch] = []
    for batch in batches:
        if batch.last <= last:
            continue
        if not batch.continues(last):
            return taken, last, True
        taken.append(batch)
        last = batch.last
    return taken, last, False


async def open_stream(
    hub: Hub,
    db: Database,
    source: Source,
    after: int | None,
    *,
    page_size: int,
    retry_milliseconds: int,
    expect_hash: str | None = None,
    subject: str = "",
    expires_at: float | None = None,
    direct: Connection | None = None,
) -> AsyncIterator[bytes]:
    """Validate the starting point and return the stream's frames.

    ``after=None`` means the live tail: events after the head at connect time.
    ``expect_hash`` (from an id ``<seq>.<hash8>``): the event the client saw last; if the
    topic holds another one at that seq, or none, the stream starts with a ``reset`` frame
    and replays the topic from its start instead of silently skipping.
    Raises ``AfterHead`` before anything is sent when a plain ``after`` is past the head.
    ``expires_at`` (Unix time; the caller's token): the stream ends then, with a final
    ``closed`` frame saying so; the client reconnects with a fresh token and resumes.
    ``direct``: writes a chunk to the client's connection (see ``Connection``), for
    the hub to deliver live batches without waking the stream's task; it also ends the
    frames when the connection is lost.
    """
    # Subscribe first, then read the head: a hint arriving in between is not lost.
    sub = hub.subscribe(
        source.feed_key, source.selector, subject, message=source.message, where=source.where
    )
    sub.direct = direct
    if direct is not None:
        direct.on_lost(sub.close)
    reset: bytes | None = None
    try:
        head = await source.head(db)
        if after is not None and expect_hash is not None:
            reset = await source.verify(db, after, expect_hash)
            if reset is not None:
                after, expect_hash = 0, None
        if after is not None and after > head:
            raise AfterHead(after, head)
        start = head if after is None else after
        # The opening frame's id: where the stream starts, so that a client disconnected
        # before its first event resumes there (and not at a later live tail).
        if start and expect_hash is None:
            expect_hash = await source.hash_at(db, start)
        opening = frames.opening(retry_milliseconds, frames.position_id(start, expect_hash))
    except BaseException:
        hub.unsubscribe(sub)
        raise
    hub.observe_head(sub.feed, head)
    source.earliest = after == 0
    frames_ = _frames(hub, db, source, sub, start, page_size, opening, reset, expires_at)
    # The generator's own `finally` unsubscribes once it has started; this covers a response
    # that is dropped before its first frame (unsubscribing twice is harmless).
    weakref.finalize(frames_, hub.unsubscribe, sub)
    return frames_


async def _frames(
    hub: Hub,
    db: Database,
    source: Source,
    sub: Subscription,
    last: int,
    page_size: int,
    opening: bytes,
    reset: bytes | None = None,
    expires_at: float | None = None,
) -> AsyncIterator[bytes]:
    name = str(source)
    metrics.open_streams.inc()
    log.info("stream.open", topic=name, after=last)
    try:
        yield opening
        if reset is not None:
            yield reset
        while not sub.closed:
            if expires_at is not None and time.time() >= expires_at:
                log.info("stream.token_expired", topic=name, last=last)
                yield frames.closed(
                    "token-expired",
                    "the token this stream was opened with has expired; reconnect with a "
                    "fresh one to resume",
                )
                return
            batches, behind = sub.take()
            ready, last, gap = hand_over(batches, last)
            if ready:
                metrics.delivered.inc(sum(batch.count for batch in ready))
                for batch in ready:
                    sub.note_delivered(batch)
                data = b"".join(batch.data for batch in ready)
                if data:
                    yield data
            if not (behind or gap) and sub.group is not None:
                # In step with its filter's group: up to the feed's position (fanout.Group).
                sub.last = last
                catch_up(sub)
                last = sub.last
            behind = behind or gap
            fetched = sub.feed.fetched
            if behind or (fetched is not None and last < fetched):
                try:
                    data, count, covered = await source.read(db, last, page_size)
                except UNAVAILABLE as exc:
                    # End cleanly: the client reconnects with its Last-Event-ID and resumes.
                    log.warning("stream.database_unavailable", topic=name, error=str(exc))
                    return
                if covered > last:
                    if data:
                        yield data
                    metrics.delivered.inc(count)
                    last = covered
                    sub.resume_id = None  # the read's frames end with its id
                    continue
            if sub.keepalive_due:
                sub.keepalive_due = False
                resume, sub.resume_id = sub.resume_id, None
                yield frames.keepalive(resume)
                continue
            # While parked, the hub may write live batches itself and move the position.
            sub.last = last
            if expires_at is None:
                await sub.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, expires_at - time.time())):
                        await sub.wait()
            last = sub.last
    finally:
        # Runs on a clean end, on shutdown and when the client goes away (cancellation).
        hub.unsubscribe(sub)
        metrics.open_streams.dec()
        log.info("stream.close", topic=name, last=last)
