"""Server-Sent Events framing.

Written by hand rather than with Litestar's ServerSentEvent: the fan-out encodes each event
once per replica and writes the same bytes to every subscriber, which needs frames as bytes.
Safe without escaping: ``type`` cannot hold control characters (a table constraint) and
``data`` is PostgreSQL's one-line JSON text.

A topic's events are framed by PostgreSQL itself (``events.frames_page``), as
``id: <seq>.<hash8>`` (the seq and the first 8 hex digits of the event's chain hash, so
that a resuming client proves which event it saw last), ``event: <type>``, ``data: <json>``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import asyncpg

KEEPALIVE = b": keepalive\n\n"


def retry(milliseconds: int) -> bytes:
    """The reconnection delay a client should use."""
    return b"retry: %d\n\n" % milliseconds


def reset(reason: str, detail: str, requested: str, after: int, **extra: object) -> bytes:
    """The in-stream signal that the stream does not continue where the client asked:
    ``after`` is where it continues from (0: the start of what the topic holds)."""
    body = json.dumps(
        {"reason": reason, "detail": detail, "requested": requested, "after": after, **extra}
    )
    return b"event: reset\ndata: %s\n\n" % body.encode()


def closed(reason: str, detail: str) -> bytes:
    """The last frame of a stream the server ends on purpose, saying why."""
    return (
        b"event: closed\ndata: %s\n\n" % json.dumps({"reason": reason, "detail": detail}).encode()
    )


def encode_multi(rows: Iterable[asyncpg.Record]) -> list[bytes]:
    """Frames for a multi-topic stream, one per event: the id is the global position and
    the data names the topic and seq. Topics need no JSON escaping (``[A-Za-z0-9._:-]``)."""
    return [
        b'id: %d\nevent: %s\ndata: {"topic": "%s", "seq": %d, "data": %s}\n\n'
        % (
            row["position"],
            row["type"].encode(),
            row["topic"].encode(),
            row["seq"],
            row["data"].encode(),
        )
        for row in rows
    ]
