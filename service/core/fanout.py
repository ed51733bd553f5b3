"""Replica fan-out: one table read per changed topic, the same bytes to every subscriber.

The hub keeps a ``Feed`` per topic that has subscribers on this replica. When a notification
says a topic moved (or a periodic check finds it did), the hub reads the new events once,
encodes them once, and offers that one ``Batch`` to each subscriber's bounded queue.
Notifications are hints: the feed only reads what the table holds after its own position.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from .. import logs
from ..backoff import Backoff
from . import events, filters, frames, metrics
from .admission import Limited
from .database import UNAVAILABLE, Database
from .filters import Where
from .supervise import Loop
from .topics import Selector

log = logs.get(__name__)


# The key of the feed that reads every topic in global order, for multi-topic streams.
# Not a valid topic name, so it cannot collide with one.
GLOBAL = "*"


@dataclass(frozen=True, slots=True)
class Batch:
    """What a feed read covers, ``first``..``last`` (seqs of one topic, or global positions),
    and the ``count`` events of it that a subscriber gets, already encoded as SSE frames.
    ``tail_id``: for a filtered subscriber whose frames end before ``last``, the id of
    ``last`` (its resume point, sent with the next keep-alive)."""

    first: int
    last: int
    data: bytes
    count: int
    tail_id: bytes | None = None
    # For a filter's batch: from here to ``first`` the feed read nothing the filter takes,
    # so a stream of that filter anywhere in between continues with this batch.
    quiet_from: int = -1

    def continues(self, last: int) -> bool:
        """Whether this batch starts right after position ``last`` (the hand-over rule),
        or, for a filter's batch, after a stretch in which the filter took nothing."""
        if self.quiet_from < 0:
            return self.first == last + 1
        return self.quiet_from <= last + 1 <= self.first


class Group:
    """The subscribers of one feed with one filter (and frame format): offered a batch only
    when a read holds an event the filter takes, so that a read costs nothing for the
    thousands of subscribers whose filter took nothing.

    Their positions then lag the feed's: ``quiet_after`` is where the group's last batch
    ended (or the feed's position when the group began), and the feed has read nothing the
    filter takes since. A subscriber whose position is at or past it has, in effect, read
    up to the feed's position: its next batch continues from it (``Batch.quiet_from``), and
    the stream may move itself to the feed's position when it wakes (``in_step``)."""

    __slots__ = ("key", "quiet_after", "subscribers")

    def __init__(self, key: tuple[Where, bool], quiet_after: int | None) -> None:
        self.key = key
        self.subscribers: set[Subscription] = set()
        # None until the feed has a position: the first batch then continues strictly.
        self.quiet_after = quiet_after

    def in_step(self, last: int) -> bool:
        """Whether a subscriber at ``last`` has missed nothing the filter takes up to the
        feed's position."""
        return self.quiet_after is not None and last >= self.quiet_after


class Subscription:
    """One stream's place in the fan-out: a bounded queue of batches and a wake-up."""

    __slots__ = (
        "_batches",
        "_bytes",
        "_limit",
        "_loop",
        "_pending",
        "_waiter",
        "closed",
        "direct",
        "feed",
        "group",
        "keepalive_due",
        "last",
        "message",
        "overflowed",
        "resume_id",
        "selector",
        "subject",
        "where",
    )

    def __init__(
        self,
        feed: Feed,
        limit: int,
        selector: Selector | None = None,
        subject: str = "",
        *,
        message: bool = False,
        where: Where | None = None,
    ) -> None:
        self.feed = feed
        # Only the events whose data contains it (filters.py), and the subscribers that
        # share it (set by the hub).
        self.where = where
        self.group: Group | None = None
        # A filtered stream's position when its client has not been sent its id yet (its
        # last frames ended before it): sent as an id-only frame with the next keep-alive,
        # so that a reconnect does not scan again what the stream has passed.
        self.resume_id: bytes | None = None
        # Which frames it takes: typed (`event: <type>`), or `message` frames.
        self.message = message
        # Who opened it, for the per-subject stream limit.
        self.subject = subject
        # For a multi-topic stream: which of the global feed's events it takes.
        self.selector = selector
        self._limit = limit
        # A list, not a deque: an empty deque takes 624 bytes, and there is one per stream.
        self._batches: list[Batch] = []
        self._bytes = 0
        # A bare future while the stream waits, rather than an asyncio.Event: this wake-up
        # happens once per subscriber per batch, the hottest path of a replica (measured).
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._pending = False
        self.overflowed = False
        self.keepalive_due = False
        self.closed = False
        # The stream's position while its task is parked in wait() (the task owns it
        # otherwise), and a way to write to its connection without waking the task.
        self.last = 0
        self.direct: Callable[[bytes], bool] | None = None

    def offer(self, batch: Batch) -> None:
        """Hand a batch to the stream: written at once when the stream is parked, caught up
        and its connection writable; else queued, and past the limit everything queued is
        dropped and the overflow flagged (the stream then reads the table)."""
        if batch.continues(self.last) and self.write_parked(batch.data):
            self.last = batch.last
            self.note_delivered(batch)
            metrics.delivered.inc(batch.count)
            metrics.direct_writes.inc()
            return
        if not self.overflowed:
            if self._bytes + len(batch.data) > self._limit:
                # The stream will page from the table from its last delivered seq instead.
                self._batches.clear()
                self._bytes = 0
                self.overflowed = True
                metrics.fallbacks.inc()
            else:
                self._batches.append(batch)
                self._bytes += len(batch.data)
        self.poke()

    def note_delivered(self, batch: Batch) -> None:
        """After ``batch`` reached the client: whether its last id is the stream's position
        (a batch that covered nothing changes nothing)."""
        if batch.count or batch.tail_id is not None:
            self.resume_id = batch.tail_id

    @property
    def parked(self) -> bool:
        """Whether the stream's task waits with nothing pending (the hub owns ``last``)."""
        return self._waiter is not None and not self._pending

    def write_parked(self, data: bytes) -> bool:
        """Write ``data`` to the connection if the stream's task is parked with nothing
        pending (so that no write of its own can interleave); False if it was not. Empty
        data writes nothing (an empty chunk would end the response) but counts as done."""
        return (
            self.direct is not None
            and self._waiter is not None
            and not self._pending
            and not self.closed
            and (not data or self.direct(data))
        )

    def take(self) -> tuple[list[Batch], bool]:
        """Everything queued so far, and whether batches were dropped since the last take."""
        self._pending = False
        batches = self._batches
        overflowed = self.overflowed
        self._batches = []
        self._bytes = 0
        self.overflowed = False
        return batches, overflowed

    async def wait(self) -> None:
        """Until a batch, a keep-alive tick or the hub's shutdown (at once if one came
        since the last take)."""
        if self._pending:
            return
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        """End the stream (its frames stop at their next step)."""
        self.closed = True
        self.poke()

    def poke(self) -> None:
        """Wake the stream."""
        self._pending = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def catch_up(sub: Subscription) -> None:
    """A filtered subscriber in step with its group has read, in effect, up to the feed's
    position: move it there (with that position's id to send), so that it does not read
    the table for what its filter would not take. Called by whoever owns ``sub.last``."""
    feed, group = sub.feed, sub.group
    if (
        group is not None
        and feed.fetched is not None
        and feed.fetched > sub.last
        and group.in_step(sub.last)
        and feed.fetched_id is not None
    ):
        sub.last = feed.fetched
        sub.resume_id = feed.fetched_id


class Feed:
    """One topic fanned out by this replica."""

    __slots__ = (
        "fetched",
        "fetched_id",
        "filtered",
        "groups",
        "index",
        "known",
        "messages",
        "plain",
        "subscribers",
        "topic",
    )

    def __init__(self, topic: str) -> None:
        # A topic, or GLOBAL for the feed of all topics by global position.
        self.topic = topic
        self.subscribers: set[Subscription] = set()
        # How many of them take `message` frames (so that each read builds what is needed).
        self.messages = 0
        # How many of them have a filter; those without; those with, by filter (and frame
        # format); their filters, indexed (built when needed).
        self.filtered = 0
        self.plain: set[Subscription] = set()
        self.groups: dict[tuple[Where, bool], Group] = {}
        self.index: filters.Index | None = None
        # The id of the event at `fetched`, for filtered streams' resume points.
        self.fetched_id: bytes | None = None
        # The last seq read from the table and offered; None until the first head read.
        self.fetched: int | None = None
        # The highest head any hint or check reported.
        self.known = 0


class Hub:
    """All feeds of this replica, the task that refreshes them and the keep-alive ticker."""

    def __init__(
        self,
        db: Database,
        *,
        page_size: int,
        buffer_bytes: int,
        keepalive_seconds: float,
        recheck_seconds: float,
        max_streams_per_subject: int = 1_000_000,
    ) -> None:
        self._db = db
        self._page_size = page_size
        self._buffer_bytes = buffer_bytes
        self._keepalive_seconds = keepalive_seconds
        self._recheck_seconds = recheck_seconds
        self._feeds: dict[str, Feed] = {}
        self._dirty: set[str] = set()
        self._recheck = False
        self._wake = asyncio.Event()
        self.closed = False
        self.subscriber_count = 0
        self._max_per_subject = max_streams_per_subject
        self._per_subject: dict[str, int] = {}
        # Set (and replaced) on every notification, for long polls waiting for new events.
        self._hinted = asyncio.Event()

    # -- subscriptions -------------------------------------------------------------------

    def subscribe(
        self,
        topic: str,
        selector: Selector | None = None,
        subject: str = "",
        *,
        message: bool = False,
        where: Where | None = None,
    ) -> Subscription:
        """Register a subscriber before its first head read, so that no hint is missed.

        ``topic`` is a topic, or GLOBAL with a ``selector`` for a multi-topic stream;
        ``message``: it takes ``message`` frames rather than typed ones; ``where``: only
        the events whose data contains it.
        Raises Limited when ``subject`` already has its maximum of streams here (an empty
        subject is not counted).
        """
        if subject:
            count = self._per_subject.get(subject, 0)
            if count >= self._max_per_subject:
                raise Limited(
                    f"{subject} has {count} open streams on this replica, its limit; close "
                    "one or retry later",
                    retry_after=5,
                )
            self._per_subject[subject] = count + 1
        feed = self._feeds.get(topic)
        if feed is None:
            feed = self._feeds[topic] = Feed(topic)
            metrics.feeds.inc()
        sub = Subscription(
            feed, self._buffer_bytes, selector, subject, message=message, where=where
        )
        feed.subscribers.add(sub)
        feed.messages += message
        if where is not None:
            feed.filtered += 1
        if where is None or topic == GLOBAL:
            # (A multi-topic read is offered to each of its subscribers: _offer_selected.)
            feed.plain.add(sub)
        else:
            group = feed.groups.get((where, message))
            if group is None:
                group = feed.groups[where, message] = Group((where, message), feed.fetched)
                feed.index = None
            group.subscribers.add(sub)
            sub.group = group
        self.subscriber_count += 1
        metrics.subscriptions.inc()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget a subscriber; the last one out drops the topic's feed."""
        feed = sub.feed
        if sub in feed.subscribers:
            feed.subscribers.discard(sub)
            feed.plain.discard(sub)
            feed.messages -= sub.message
            feed.filtered -= sub.where is not None
            group = sub.group
            if group is not None:
                group.subscribers.discard(sub)
                if not group.subscribers and feed.groups.get(group.key) is group:
                    del feed.groups[group.key]
                    feed.index = None
            self.subscriber_count -= 1
            metrics.subscriptions.dec()
            if sub.subject:
                left = self._per_subject.pop(sub.subject, 1) - 1
                if left:
                    self._per_subject[sub.subject] = left
        if not feed.subscribers and self._feeds.get(feed.topic) is feed:
            del self._feeds[feed.topic]
            self._dirty.discard(feed.topic)
            metrics.feeds.dec()

    def observe_head(self, feed: Feed, head: int) -> None:
        """A head read from the table: starts a new feed there, or tells an old one to catch up."""
        if feed.fetched is None:
            feed.fetched = head
            for group in feed.groups.values():
                if group.quiet_after is None:
                    group.quiet_after = head
        self._raise_known(feed, head)

    # -- hints ---------------------------------------------------------------------------

    async def wait_for_hint(self, seconds: float) -> None:
        """Until the next sequencer notification, or ``seconds``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._hinted.wait(), seconds)

    def on_hint(self, payload: str) -> None:
        """A sequencer notification: ``{"position": p, "topics": {topic: head}}``."""
        self._hinted.set()
        self._hinted = asyncio.Event()
        try:
            hint = json.loads(payload)
            topics, position = hint.get("topics"), hint.get("position")
        except (ValueError, AttributeError):
            topics = position = None
        feed = self._feeds.get(GLOBAL)
        if feed is not None and isinstance(position, int):
            self._raise_known(feed, position)
        if not isinstance(topics, dict):
            # Too many topics for one notification (or a foreign payload): check them all.
            self.recheck()
            return
        for topic, head in topics.items():
            feed = self._feeds.get(topic)
            if feed is not None and isinstance(head, int):
                self._raise_known(feed, head)

    def recheck(self) -> None:
        """Re-read every fed topic's head: after a reconnect, when hints may have been lost."""
        self._recheck = True
        self._wake.set()

    def _raise_known(self, feed: Feed, head: int) -> None:
        if head > feed.known:
            feed.known = head
        if feed.fetched is not None and feed.known > feed.fetched:
            self._dirty.add(feed.topic)
            self._wake.set()

    # -- lifecycle -----------------------------------------------------------------------

    def loops(self) -> dict[str, Loop]:
        """The hub's background loops, for the replica's supervisor."""
        return {
            "hub-refresh": self._refresh_loop,
            "hub-keepalive": self._keepalive_loop,
            "hub-recheck": self._recheck_loop,
        }

    def drain(self) -> None:
        """Refuse new streams and end open ones cleanly, so that clients reconnect elsewhere."""
        self.closed = True
        for feed in list(self._feeds.values()):
            for sub in list(feed.subscribers):
                sub.close()

    # -- loops ---------------------------------------------------------------------------

    async def _refresh_loop(self, backoff: Backoff) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                if self._recheck:
                    self._recheck = False
                    await self._check_heads()
                dirty = [self._feeds[t] for t in self._dirty if t in self._feeds]
                self._dirty.clear()
                results = await asyncio.gather(
                    *(self._fetch(feed) for feed in dirty), return_exceptions=True
                )
                for result in results:
                    if isinstance(result, BaseException):
                        raise result
                backoff.reset()
            except Exception as exc:
                # Streams keep their place; a re-check after a pause retries everything.
                if isinstance(exc, UNAVAILABLE):
                    log.warning("hub.refresh_failed", error=str(exc))
                else:
                    log.exception("hub.refresh_failed")
                self._recheck = True
                await backoff.wait()
                self._wake.set()

    async def _check_heads(self) -> None:
        topics = [t for t, f in self._feeds.items() if f.fetched is not None and t != GLOBAL]
        if topics:
            for topic, head in (await events.heads(self._db, topics)).items():
                feed = self._feeds.get(topic)
                if feed is not None:
                    self._raise_known(feed, head)
        feed = self._feeds.get(GLOBAL)
        if feed is not None and feed.fetched is not None:
            self._raise_known(feed, await events.global_head(self._db))

    async def _fetch(self, feed: Feed) -> None:
        while feed.subscribers and feed.fetched is not None and feed.known > feed.fetched:
            if feed.topic == GLOBAL:
                # One read for every multi-topic stream here: what any of them selects.
                wanted = Selector.union(sub.selector for sub in feed.subscribers if sub.selector)
                page = await events.global_page(self._db, wanted, feed.fetched, self._page_size)
                rows, covered = page.rows, page.covered
                self._offer_selected(feed, rows, covered, page.lost)
            else:
                read = await events.frames_page(
                    self._db,
                    feed.topic,
                    feed.fetched,
                    self._page_size,
                    timed=True,
                    typed=len(feed.subscribers) > feed.messages,
                    message=feed.messages > 0,
                    pieces=feed.filtered > 0,
                )
                covered = read.last if read.count else feed.fetched
                # A batch claims only what it holds: if retention cut past this feed's
                # position, it does not continue from there, and streams read the table.
                first = read.first if read.count else feed.fetched + 1
                batch = Batch(first, covered, read.data, read.count)
                messages = Batch(first, covered, read.message, read.count)
                for sub in feed.plain:
                    sub.offer(messages if sub.message else batch)
                if read.count:
                    feed.fetched_id = frames.position_id(covered, read.last_hash).encode()
                if feed.filtered and read.count:
                    self._offer_filtered(feed, read, first, covered)
                now = time.time()
                for published in read.published:
                    metrics.delivery_latency.observe(max(0.0, now - published))
            if covered == feed.fetched:
                feed.known = feed.fetched
                return
            feed.fetched = covered
            feed.known = max(feed.known, covered)

    def _offer_filtered(self, feed: Feed, read: events.Frames, first: int, covered: int) -> None:
        """Offer a read to the groups whose filter takes some of its events, and to no
        other: each event's data parsed once, the filters it matches looked up
        (filters.Index), never tried once per subscriber, and a group with nothing here
        not touched at all (its subscribers continue from its quiet stretch)."""
        if feed.index is None:
            feed.index = filters.Index(where for where, _ in feed.groups)
        taken: dict[Where, list[int]] = {}
        for n, data in enumerate(read.datas):
            for where in feed.index.matching(filters.parse(data)):
                taken.setdefault(where, []).append(n)
        tail = frames.position_id(covered, read.last_hash).encode()
        for where, picked in taken.items():
            for message in (False, True):
                group = feed.groups.get((where, message))
                if group is None:
                    continue
                pieces = read.message_pieces if message else read.typed_pieces
                quiet = first if group.quiet_after is None else group.quiet_after + 1
                batch = Batch(
                    first,
                    covered,
                    b"".join(pieces[n] for n in picked),
                    len(picked),
                    # The client's last id is behind the batch's end unless its last event is.
                    None if picked[-1] == len(read.datas) - 1 else tail,
                    min(quiet, first),
                )
                group.quiet_after = covered
                metrics.filtered_offers.inc(len(group.subscribers))
                for sub in group.subscribers:
                    sub.offer(batch)

    def _offer_selected(
        self, feed: Feed, rows: list[asyncpg.Record], covered: int, lost: dict[str, int]
    ) -> None:
        """Offer a global read to multi-topic subscribers: each frame encoded once, and the
        same filtered bytes to every subscriber with the same selection."""
        assert feed.fetched is not None
        first = feed.fetched + 1
        encoded: dict[bool, list[bytes]] = {}
        by_selection: dict[tuple[str, bool, Where | None], Batch] = {}
        # Each event's data parsed once, if a subscriber filters.
        parsed = [filters.parse(row["data"]) for row in rows] if feed.filtered else []
        for sub in feed.subscribers:
            assert sub.selector is not None
            key = (str(sub.selector), sub.message, sub.where)
            batch = by_selection.get(key)
            if batch is None:
                if sub.message not in encoded:
                    encoded[sub.message] = frames.encode_multi(rows, message=sub.message)
                pairs = zip(rows, encoded[sub.message], strict=True)
                chosen = [
                    f
                    for n, (row, f) in enumerate(pairs)
                    if sub.selector.matches(row["topic"])
                    and (sub.where is None or sub.where.matches(parsed[n]))
                ]
                # Retention cut a selected topic in this range: the batch continues nothing
                # (first -1), so the stream reads the table, and that read reports the cut.
                cut = any(sub.selector.matches(topic) for topic in lost)
                batch = by_selection[key] = Batch(
                    -1 if cut else first, covered, b"".join(chosen), len(chosen)
                )
            sub.offer(batch)

    async def _keepalive_loop(self, backoff: Backoff) -> None:
        # One shared ticker rather than a timer per stream: idle streams cost nothing.
        while True:
            await asyncio.sleep(self._keepalive_seconds)
            for feed in list(self._feeds.values()):
                for sub in feed.subscribers:
                    if sub.parked and sub.group is not None:
                        catch_up(sub)
                    if sub.write_parked(frames.keepalive(sub.resume_id)):
                        sub.resume_id = None
                    else:
                        sub.keepalive_due = True
                        sub.poke()

    async def _recheck_loop(self, backoff: Backoff) -> None:
        while True:
            await asyncio.sleep(self._recheck_seconds)
            self.recheck()
