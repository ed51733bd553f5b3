"""SSE frames, read back by a third-party parser (httpx-sse)."""

from __future__ import annotations

import json

import httpx
from httpx_sse import EventSource, ServerSentEvent

from changefeed.core import frames


def parse(data: bytes) -> list[ServerSentEvent]:
    response = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=data)
    return list(EventSource(response).iter_sse())


def test_opening_frame_gives_a_resume_point_and_keepalives_dispatch_nothing() -> None:
    # One empty dispatch for the opening frame, whatever the number of keep-alives: a
    # parser that hands blank lines to user code shows one empty event, not one per tick.
    (event,) = parse(frames.KEEPALIVE + frames.opening(1500, "7.0a1b2c3d") + frames.KEEPALIVE * 3)
    assert (event.retry, event.id, event.data) == (1500, "7.0a1b2c3d", "")
    # Keep-alives between events neither dispatch nor disturb them.
    rows = [{"position": 9, "hash8": None, "type": "x", "topic": "t", "seq": 1, "data": "1"}]
    stream = frames.KEEPALIVE + frames.encode_multi(rows)[0] + frames.KEEPALIVE  # type: ignore[list-item]
    (only,) = parse(stream)
    assert (only.id, only.event) == ("9", "x")


def test_reset_and_closed() -> None:
    reset, closed = parse(
        frames.reset("retention", "cut \u00e9", "7", 9, first_seq=10)
        + frames.closed("token-expired", "reconnect")
    )
    assert reset.event == "reset"
    assert reset.json() == {
        "reason": "retention",
        "detail": "cut \u00e9",
        "requested": "7",
        "after": 9,
        "first_seq": 10,
    }
    assert closed.event == "closed" and closed.json()["reason"] == "token-expired"


ROWS = [
    {
        "position": 41,
        "hash8": "0a1b2c3d",
        "type": "created",
        "topic": "orders.eu",
        "seq": 3,
        "data": '{"a": 1}',
    },
    {
        "position": 44,
        "hash8": None,
        "type": 't\u00e9"\\',
        "topic": "b",
        "seq": 1,
        "data": '"\\u2028"',
    },
]


def test_multi_topic_frames() -> None:
    encoded = frames.encode_multi(ROWS)  # type: ignore[arg-type]
    assert len(encoded) == 2
    first, second = parse(b"".join(encoded))
    assert (first.id, first.event) == ("41.0a1b2c3d", "created")
    assert first.json() == {"topic": "orders.eu", "seq": 3, "type": "created", "data": {"a": 1}}
    assert (second.id, second.event) == ("44", 't\u00e9"\\')
    assert json.loads(second.data)["type"] == 't\u00e9"\\'
    assert json.loads(second.data)["data"] == "\u2028"


def test_message_frames_have_no_event_line() -> None:
    typed = parse(b"".join(frames.encode_multi(ROWS)))  # type: ignore[arg-type]
    messages = parse(b"".join(frames.encode_multi(ROWS, message=True)))  # type: ignore[arg-type]
    assert [m.event for m in messages] == ["message", "message"]
    assert [(m.id, m.json()) for m in messages] == [(t.id, t.json()) for t in typed]
