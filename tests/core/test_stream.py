"""The stream: the hand-over rule, and exact delivery whatever the timing of the fan-out.

The table is a list here: a source that reads it stands in for PostgreSQL, and the test
plays the hub, so that any interleaving of appends, fan-out reads, slow readers and direct
writes can be tried in milliseconds. The same guarantee over the real database and HTTP is
tested in tests/test_ordering.py and tests/test_randomized.py.
"""

from __future__ import annotations

import asyncio
import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from changefeed.core.fanout import Batch, Hub
from changefeed.core.stream import hand_over, open_stream


def batch(first: int, last: int) -> Batch:
    return Batch(first, last, b"", last - first + 1)


def test_hand_over_takes_batches_that_continue() -> None:
    taken, last, behind = hand_over([batch(4, 5), batch(6, 9)], 3)
    assert [b.last for b in taken] == [5, 9] and last == 9 and not behind


def test_hand_over_passes_over_what_was_sent() -> None:
    taken, last, behind = hand_over([batch(1, 3), batch(4, 5)], 3)
    assert [b.first for b in taken] == [4] and last == 5 and not behind


def test_hand_over_stops_at_a_gap() -> None:
    taken, last, behind = hand_over([batch(4, 4), batch(6, 6), batch(7, 7)], 3)
    assert [b.first for b in taken] == [4] and last == 4 and behind


def test_hand_over_stops_at_an_overlap() -> None:
    # Part of the batch was sent already: taking it would repeat events.
    taken, last, behind = hand_over([batch(2, 5)], 3)
    assert taken == [] and last == 3 and behind


def test_hand_over_of_a_batch_that_continues_nothing() -> None:
    # The multi-topic fan-out marks a batch that crossed a retention cut with first = -1.
    assert hand_over([Batch(-1, 9, b"", 0)], 3) == ([], 3, True)


class Log:
    """A topic's events in memory, read as the table would be."""

    def __init__(self) -> None:
        self.events: list[bytes] = []
        self.topic = self.feed_key = "t"
        self.selector = None
        self.message = False
        self.where = None
        self.earliest = False

    def __str__(self) -> str:
        return self.topic

    def append(self, n: int) -> None:
        start = len(self.events)
        self.events += [b"id: %d\ndata: {}\n\n" % (start + i + 1) for i in range(n)]

    def frames(self, after: int, last: int) -> bytes:
        return b"".join(self.events[after:last])

    async def head(self, db: object) -> int:
        return len(self.events)

    async def hash_at(self, db: object, seq: int) -> str | None:
        return None

    async def read(self, db: object, after: int, limit: int) -> tuple[bytes, int, int]:
        last = min(len(self.events), after + limit)
        return self.frames(after, last), last - after, last


class Connection:
    """A connection the hub may write to directly, as uvicorn's transport would be."""

    def __init__(self, out: list[bytes], writable: bool) -> None:
        self.out, self.writable = out, writable

    def __call__(self, data: bytes) -> bool:
        if self.writable:
            self.out.append(data)
        return self.writable

    def on_lost(self, callback: object) -> None:
        pass


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 5)),
        st.tuples(st.just("fan-out"), st.integers(0, 3)),
        st.tuples(st.just("run"), st.integers(0, 3)),
        st.tuples(st.just("writable"), st.booleans()),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
# A slow reader reads the table past the feed, then parks: the next fan-out overlaps it.
@example(
    before=1,
    after=None,
    ops=[
        ("writable", False),
        ("append", 1),
        ("fan-out", 0),
        ("append", 2),
        ("run", 3),
        ("writable", True),
        ("fan-out", 0),
    ],
    buffer=10,
    page=4,
    writable=True,
)
@given(
    before=st.integers(0, 6),
    after=st.one_of(st.none(), st.integers(0, 6)),
    ops=OPS,
    buffer=st.integers(10, 400),
    page=st.integers(1, 4),
    writable=st.booleans(),
)
async def test_every_event_exactly_once_in_order(
    before: int,
    after: int | None,
    ops: list[tuple[str, int]],
    buffer: int,
    page: int,
    writable: bool,
) -> None:
    """``writable``: whether the connection takes direct writes (a slow client's does not)."""
    log = Log()
    log.append(before)
    after = None if after is None else min(after, before)
    hub = Hub(None, page_size=page, buffer_bytes=buffer, keepalive_seconds=60, recheck_seconds=60)  # type: ignore[arg-type]
    out: list[bytes] = []
    connection = Connection(out, writable)
    frames = await open_stream(
        hub,
        None,
        log,
        after,
        page_size=page,
        retry_milliseconds=1,  # type: ignore[arg-type]
        direct=connection,
    )
    feed = next(iter(hub._feeds.values()))

    async def consume() -> None:
        async for chunk in frames:
            out.append(chunk)

    def fan_out(limit: int) -> None:
        # What the hub does on a hint: read after the feed's position, offer it to all.
        assert feed.fetched is not None
        last = min(len(log.events), feed.fetched + limit) if limit else len(log.events)
        if last > feed.fetched:
            data = log.frames(feed.fetched, last)
            for sub in feed.subscribers:
                sub.offer(Batch(feed.fetched + 1, last, data, last - feed.fetched))
            feed.fetched = last

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0)  # started: from here on its `finally` unsubscribes
    try:
        for op, n in ops:
            if op == "append":
                log.append(n)
            elif op == "writable":
                connection.writable = bool(n)
            elif op == "fan-out":
                fan_out(n)
            else:
                for _ in range(n):
                    await asyncio.sleep(0)
        fan_out(0)
        start = after if after is not None else before
        expected = list(range(start + 1, len(log.events) + 1))
        async with asyncio.timeout(5):
            while ids(out) != expected:
                # Everything is offered: the stream catches up within a few steps or never.
                assert len(ids(out)) <= len(expected) and ids(out) == expected[: len(ids(out))]
                await asyncio.sleep(0)
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
    assert hub.subscriber_count == 0


def ids(chunks: list[bytes]) -> list[int]:
    """The ids of the events in ``chunks`` (the opening frame's, without data, left out)."""
    return [int(m) for m in re.findall(rb"^id: (\d+)\ndata", b"".join(chunks), re.M)]
