"""Server-Sent Events framing.

Written by hand rather than with Litestar's ServerSentEvent: the fan-out encodes each event
once per replica and writes the same bytes to every subscriber, which needs frames as bytes.
Safe without escaping: ``type`` cannot hold control characters (a table constraint) and
``data`` is PostgreSQL's one-line JSON text.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

KEEPALIVE = b": keepalive\n\n"


def retry(milliseconds: int) -> bytes:
    """The reconnection delay a client should use."""
    return b"retry: %d\n\n" % milliseconds


def encode(rows: Iterable[asyncpg.Record]) -> bytes:
    """One frame per event, joined: ``id: <seq>``, ``event: <type>``, ``data: <json>``."""
    return b"".join(
        b"id: %d\nevent: %s\ndata: %s\n\n"
        % (row["seq"], row["type"].encode(), row["data"].encode())
        for row in rows
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
