"""One subscriber's SSE stream: catch up from the table, then follow the live fan-out.

The stream remembers the last seq it wrote. It takes batches from the hub only when they
continue exactly from there; whenever it is behind the feed (resuming from an old seq, a
batch that overlaps what it already sent, or a buffer that overflowed because the client
read slowly), it pages from the table instead. So the hand-over from history to live
events has no gap and no duplicate, whatever the timing.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator

from service import events, frames, logs, metrics
from service.database import UNAVAILABLE, Database
from service.events import AfterHead
from service.fanout import Hub, Subscription

log = logs.get(__name__)


async def open_stream(
    hub: Hub,
    db: Database,
    topic: str,
    after: int | None,
    *,
    page_size: int,
    retry_milliseconds: int,
) -> AsyncIterator[bytes]:
    """Validate the starting point and return the stream's frames.

    ``after=None`` means the live tail: events after the head at connect time.
    Raises ``AfterHead`` before anything is sent when ``after`` is past the head.
    """
    # Subscribe first, then read the head: a hint arriving in between is not lost.
    sub = hub.subscribe(topic)
    try:
        head = await events.head(db, topic)
        if after is not None and after > head:
            raise AfterHead(after, head)
    except BaseException:
        hub.unsubscribe(sub)
        raise
    hub.observe_head(sub.feed, head)
    frames_ = _frames(hub, db, sub, head if after is None else after, page_size, retry_milliseconds)
    # The generator's own `finally` unsubscribes once it has started; this covers a response
    # that is dropped before its first frame (unsubscribing twice is harmless).
    weakref.finalize(frames_, hub.unsubscribe, sub)
    return frames_


async def _frames(
    hub: Hub,
    db: Database,
    sub: Subscription,
    last: int,
    page_size: int,
    retry_milliseconds: int,
) -> AsyncIterator[bytes]:
    topic = sub.feed.topic
    metrics.open_streams.inc()
    log.info("stream.open", topic=topic, after=last)
    try:
        yield frames.retry(retry_milliseconds)
        while not sub.closed:
            batches, behind = sub.take()
            ready: list[bytes] = []
            for batch in batches:
                if batch.last <= last:
                    continue  # already sent from the table
                if batch.first != last + 1:
                    behind = True  # a gap or an overlap: the table settles it
                    break
                ready.append(batch.data)
                metrics.delivered.inc(batch.last - last)
                last = batch.last
            if ready:
                yield b"".join(ready)
            fetched = sub.feed.fetched
            if behind or (fetched is not None and last < fetched):
                try:
                    rows = await events.page(db, topic, last, page_size)
                except UNAVAILABLE as exc:
                    # End cleanly: the client reconnects with its Last-Event-ID and resumes.
                    log.warning("stream.database_unavailable", topic=topic, error=str(exc))
                    return
                if rows:
                    yield frames.encode(rows)
                    metrics.delivered.inc(len(rows))
                    last = rows[-1]["seq"]
                    continue
            if sub.keepalive_due:
                sub.keepalive_due = False
                yield frames.KEEPALIVE
                continue
            await sub.wait()
    finally:
        # Runs on a clean end, on shutdown and when the client goes away (cancellation).
        hub.unsubscribe(sub)
        metrics.open_streams.dec()
        log.info("stream.close", topic=topic, last=last)
