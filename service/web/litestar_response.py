"""The event-stream response: Litestar's ``Stream`` with one task per stream, not two.

Litestar sends a streaming body from a task group: one task iterates the body while a
second waits on ASGI ``receive`` for the client's disconnect and cancels the first. An idle
SSE stream lives for hours, so that second task, its task group and their events are a
third of a parked stream's Python memory (measured with tracemalloc). When the connection
itself reports its end (``uvicorn_direct.DirectWrite.on_lost``, which closes the subscription and
so ends the frames), the body is sent from the handler's own task instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import Receive, Send


class EventStream(Stream):
    """A ``Stream`` whose end on disconnect is the iterator's business, not Litestar's."""

    __slots__ = ()

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        response = super().to_asgi_response(*args, **kwargs)
        assert type(response) is ASGIStreamingResponse
        # Same slots, one method overridden: cheaper than re-stating Stream's assembly of
        # headers, cookies and media type.
        response.__class__ = _OneTaskStreamingResponse
        return response


class _OneTaskStreamingResponse(ASGIStreamingResponse):
    __slots__ = ()

    async def send_body(self, send: Send, receive: Receive) -> None:
        await self._stream(send)


def event_stream(
    frames: AsyncIterator[bytes],
    headers: dict[str, str],
    *,
    ends_on_disconnect: bool,
) -> Stream:
    """The response for an SSE stream; ``ends_on_disconnect``: the frames end by themselves
    when the client goes away (else Litestar listens for the disconnect, as usual)."""
    kind = EventStream if ends_on_disconnect else Stream
    return kind(frames, media_type="text/event-stream", headers=headers)
