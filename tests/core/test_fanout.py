"""The fan-out's in-memory parts: a subscription's queue and wake-up, the hub's books."""

from __future__ import annotations

import asyncio

import pytest

from changefeed.core import metrics
from changefeed.core.admission import Limited
from changefeed.core.fanout import GLOBAL, Batch, Feed, Hub, Subscription


def batch(first: int, last: int, data: bytes = b"") -> Batch:
    return Batch(first, last, data or b"x" * (last - first + 1), last - first + 1)


def hub(**options: int) -> Hub:
    settings: dict[str, float] = dict(
        page_size=100, buffer_bytes=10, keepalive_seconds=60, recheck_seconds=60
    )
    settings.update(options)
    return Hub(None, **settings)  # type: ignore[arg-type]


async def test_batches_queue_until_taken() -> None:
    sub = Subscription(Feed("t"), limit=10)
    sub.offer(batch(1, 2))
    sub.offer(batch(3, 3))
    batches, overflowed = sub.take()
    assert [(b.first, b.last) for b in batches] == [(1, 2), (3, 3)]
    assert not overflowed
    assert sub.take() == ([], False)


async def test_overflow_drops_the_queue_and_says_so() -> None:
    sub = Subscription(Feed("t"), limit=10)
    before = metrics.fallbacks._value.get()
    sub.offer(batch(1, 6))
    sub.offer(batch(7, 12))  # 12 bytes queued would pass the limit of 10
    sub.offer(batch(13, 13))  # dropped too: the stream reads the table from its position
    assert sub.take() == ([], True)
    assert metrics.fallbacks._value.get() == before + 1
    sub.offer(batch(14, 14))
    assert [b.first for b in sub.take()[0]] == [14]


async def test_wait_returns_at_once_when_something_came() -> None:
    sub = Subscription(Feed("t"), limit=10)
    sub.offer(batch(1, 1))
    async with asyncio.timeout(1):
        await sub.wait()


async def test_an_offer_wakes_a_waiting_stream() -> None:
    sub = Subscription(Feed("t"), limit=10)
    waiting = asyncio.create_task(sub.wait())
    await asyncio.sleep(0)  # let it park
    assert not waiting.done()
    sub.offer(batch(1, 1))
    async with asyncio.timeout(1):
        await waiting


async def test_a_parked_caught_up_stream_is_written_directly() -> None:
    written: list[bytes] = []
    sub = Subscription(Feed("t"), limit=10)
    sub.direct = lambda data: written.append(data) is None
    sub.last = 4
    waiting = asyncio.create_task(sub.wait())
    await asyncio.sleep(0)
    direct_writes, delivered = metrics.direct_writes.count, metrics.delivered.count

    sub.offer(batch(5, 6, b"ab"))
    # Written without waking the stream's task, and its position moved.
    assert written == [b"ab"] and sub.last == 6 and not waiting.done()
    assert metrics.direct_writes.count == direct_writes + 1
    assert metrics.delivered.count == delivered + 2

    # A batch that does not continue from there is queued, and wakes the stream.
    sub.offer(batch(8, 8, b"c"))
    assert written == [b"ab"]
    async with asyncio.timeout(1):
        await waiting
    assert [b.first for b in sub.take()[0]] == [8]


async def test_no_direct_write_unless_parked_with_nothing_pending() -> None:
    written: list[bytes] = []
    sub = Subscription(Feed("t"), limit=100)
    sub.direct = lambda data: written.append(data) is None
    assert not sub.write_parked(b"x")  # its task is running, not parked
    waiting = asyncio.create_task(sub.wait())
    await asyncio.sleep(0)
    sub.poke()  # something pending: the task writes next, in order
    assert not sub.write_parked(b"x")
    await waiting
    sub.take()
    waiting = asyncio.create_task(sub.wait())
    await asyncio.sleep(0)
    assert sub.write_parked(b"")  # nothing to write: done, and nothing written
    assert written == []
    assert sub.write_parked(b"k")
    assert written == [b"k"]
    sub.close()
    assert not sub.write_parked(b"x") and sub.closed
    await waiting


async def test_a_refused_direct_write_queues_the_batch() -> None:
    sub = Subscription(Feed("t"), limit=100)
    sub.direct = lambda data: False  # the connection is not writable
    waiting = asyncio.create_task(sub.wait())
    await asyncio.sleep(0)
    sub.offer(batch(1, 1))
    await waiting
    assert [b.first for b in sub.take()[0]] == [1]


async def test_subject_limit_and_feed_books() -> None:
    h = hub(max_streams_per_subject=2)
    a = h.subscribe("t", subject="alice")
    b = h.subscribe("t", subject="alice")
    with pytest.raises(Limited, match="alice has 2 open streams"):
        h.subscribe("u", subject="alice")
    h.subscribe("u")  # no subject: not counted
    assert a.feed is b.feed and h.subscriber_count == 3
    h.unsubscribe(a)
    h.unsubscribe(a)  # twice is harmless
    assert h.subscriber_count == 2
    c = h.subscribe("t", subject="alice")
    h.unsubscribe(b)
    h.unsubscribe(c)
    # The last one out dropped the feed: a new subscriber gets a new one.
    assert h.subscribe("t").feed is not a.feed


async def test_hints_mark_feeds_behind_only() -> None:
    h = hub()
    sub = h.subscribe("t")
    h.on_hint('{"position": 9, "topics": {"t": 3}}')
    assert h._dirty == set()  # no head read yet: the stream's own read covers it
    h.observe_head(sub.feed, 5)
    assert sub.feed.fetched == 5 and h._dirty == set()
    h.on_hint('{"position": 10, "topics": {"t": 5, "other": 99}}')
    assert h._dirty == set()
    h.on_hint('{"position": 11, "topics": {"t": 6}}')
    assert h._dirty == {"t"} and sub.feed.known == 6


async def test_global_feed_follows_positions() -> None:
    h = hub()
    sub = h.subscribe(GLOBAL)
    h.observe_head(sub.feed, 10)
    h.on_hint('{"position": 12, "topics": {}}')
    assert h._dirty == {GLOBAL}


async def test_a_foreign_or_truncated_hint_rechecks_everything() -> None:
    h = hub()
    for payload in ("not json", "[]", '{"position": 3}'):
        h._recheck = False
        h.on_hint(payload)
        assert h._recheck


async def test_a_hint_wakes_long_polls() -> None:
    h = hub()
    waiting = asyncio.create_task(h.wait_for_hint(5))
    await asyncio.sleep(0)
    h.on_hint("{}")
    async with asyncio.timeout(1):
        await waiting


async def test_drain_closes_every_stream() -> None:
    h = hub()
    subs = [h.subscribe("a"), h.subscribe("b")]
    h.drain()
    assert h.closed and all(s.closed for s in subs)
