"""Server-Sent Events framing.

Written by hand rather than with Litestar's ServerSentEvent: the fan-out encodes each event
once per replica and writes the same bytes to every subscriber, which needs frames as bytes.
Safe without escaping: ``type`` cannot hold control characters (a table constraint) and
``data`` is PostgreSQL's one-line JSON text.

A topic's events are framed by PostgreSQL itself (``events.frames_page``), as
``id: <seq>.<hash8>`` (the seq and the first 8 hex digits of the event's chain hash, so
that a resuming client proves which event it saw last), ``event: <type>``, ``data: <json>``.
A stream asked for with ``dispatch=message`` gets ``message`` frames instead: no ``event:``
line (so that a browser's ``EventSource.onmessage`` receives every event, whatever its
type) and the data ``{"topic", "seq", "type", "data"}``.

Frames that carry no event do not end with a blank line where the protocol lets them: the
keep-alive is a comment line alone, and ``retry:`` shares the opening frame, whose ``id:``
gives every client a resume point before its first event (clients that hand each blank
line to user code as an event, as httpx-sse and fetch-event-source do, then see one empty
event, with that id, instead of one per keep-alive).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import asyncpg

KEEPALIVE = b": keepalive\n"


def keepalive(resume_id: bytes | None = None) -> bytes:
    """The keep-alive; for a filtered stream whose client's last id is behind the stream's
    position, an id-only frame instead (an ``EventSource`` takes the id as its last event
    id although the frame dispatches no event), so that a reconnect resumes there."""
    return KEEPALIVE if resume_id is None else b"id: %s\n\n" % resume_id


def opening(retry_milliseconds: int, last_id: str) -> bytes:
    """A stream's first frame: the reconnection delay, and the id of the position the
    stream starts after (``0``: before the first event), which an ``EventSource`` keeps as
    its last event id although the frame dispatches no event."""
    return b"retry: %d\nid: %s\n\n" % (retry_milliseconds, last_id.encode())


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


def encode_multi(rows: Iterable[asyncpg.Record], *, message: bool = False) -> list[bytes]:
    """Frames for a multi-topic stream, one per event: the id is the global position and
    the hash of the event there, the data names the topic, seq and type. Topics need no
    JSON escaping (``[A-Za-z0-9._:-]``); types do."""
    return [
        b'id: %s\n%sdata: {"topic": "%s", "seq": %d, "type": %s, "data": %s}\n\n'
        % (
            position_id(row["position"], row["hash8"]).encode(),
            b"" if message else b"event: %s\n" % row["type"].encode(),
            row["topic"].encode(),
            row["seq"],
            json.dumps(row["type"], ensure_ascii=False).encode(),
            row["data"].encode(),
        )
        for row in rows
    ]


def position_id(position: int, hash8: str | None) -> str:
    """An event's id: ``<position>.<hash8>``, or the bare position where no hash is known
    (position 0, or an event that retention removed)."""
    return f"{position}.{hash8}" if hash8 else str(position)
