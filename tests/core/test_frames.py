"""SSE frames, read back by a third-party parser (httpx-sse)."""

from __future__ import annotations

import json

import httpx
from httpx_sse import EventSource, ServerSentEvent

from changefeed.core import frames


def parse(data: bytes) -> list[ServerSentEvent]:
    response = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=data)
    return list(EventSource(response).iter_sse())


def test_retry_and_keepalive() -> None:
    (event,) = parse(frames.retry(1500) + frames.KEEPALIVE)
    assert event.retry == 1500


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


def test_multi_topic_frames() -> None:
    rows = [
        {"position": 41, "type": "created", "topic": "orders.eu", "seq": 3, "data": '{"a": 1}'},
        {"position": 44, "type": "t\u00e9", "topic": "b", "seq": 1, "data": '"\\u2028"'},
    ]
    encoded = frames.encode_multi(rows)  # type: ignore[arg-type]
    assert len(encoded) == 2
    first, second = parse(b"".join(encoded))
    assert (first.id, first.event) == ("41", "created")
    assert first.json() == {"topic": "orders.eu", "seq": 3, "data": {"a": 1}}
    assert (second.id, second.event) == ("44", "t\u00e9")
    assert json.loads(second.data)["data"] == "\u2028"
