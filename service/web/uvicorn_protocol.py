"""uvicorn's httptools protocol with bounds on request heads and on slow clients.

uvicorn bounds request heads only for its slower h11 protocol; with httptools a client can
send headers without end and the server buffers them all. This answers 431 (as problem
details) once a request head passes ``max_head_bytes``, counted two ways: the parsed URL and
headers (exact), and the raw bytes received while the head is incomplete (which also bounds
one endless header value that the parser would buffer before reporting it).

uvicorn also has no time limit on a request that arrives slowly (its keep-alive timer stops
at the first byte), so a client trickling a byte at a time holds a connection forever. Here
a request head must arrive within ``head_seconds`` of its first byte (or of the connection),
and a body within ``body_seconds`` of its head; otherwise 408 and the connection is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from . import problems


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing an oversized request head."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that refuses request heads larger than ``max_head_bytes``."""

    max_head_bytes: ClassVar[int] = 32 * 1024
    head_seconds: ClassVar[float] = 10.0
    body_seconds: ClassVar[float] = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._parsed_head = 0
        self._raw_head = 0
        self._in_head = True
        self._refused = False
        self._deadline: asyncio.TimerHandle | None = None
        self._direct: DirectWrite | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm(self.head_seconds, "the request head")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
        if self._direct is not None:
            self._direct.lost()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._parsed_head = 0
        self._in_head = True
        self._arm(self.head_seconds, "the request head")

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._raw_head = 0
        self._arm(self.body_seconds, "the request body")
        super().on_headers_complete()
        # The app sees this in the scope before its task first runs (the same dict).
        extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
        self._direct = extensions[DIRECT_WRITE] = DirectWrite(self)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()
        self._in_head = True

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._timed_out, what, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self, what: str, seconds: float) -> None:
        self._deadline = None
        if self._refused or self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # too late for a status line: just end it
            return
        self._send_problem(
            b"408 Request Timeout",
            408,
            "request-timeout",
            "Request timeout",
            f"{what} did not arrive within {seconds:g} seconds",
        )

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._raw_head += len(data)
        super().data_received(data)
        # After parsing, so that one read holding a whole (small-headed) request passes.
        if self._in_head and self._raw_head > self.max_head_bytes and not self._refused:
            self._refuse()

    def send_400_response(self, msg: str) -> None:
        # The parser stops with an error when a callback raised HeadTooLarge.
        if self._parsed_head > self.max_head_bytes:
            self._refuse()
        else:
            super().send_400_response(msg)

    def _count(self, size: int) -> None:
        self._parsed_head += size
        if self._parsed_head > self.max_head_bytes:
            raise HeadTooLarge

    def _refuse(self) -> None:
        self._send_problem(
            b"431 Request Header Fields Too Large",
            431,
            "headers-too-large",
            "Request header fields too large",
            f"the request line and headers exceed {self.max_head_bytes} bytes",
        )

    def _send_problem(self, status: bytes, code: int, kind: str, title: str, detail: str) -> None:
        self._refused = True
        self._disarm()
        body = problems.render(code, kind, title, detail)
        self.transport.write(
            b"HTTP/1.1 %s\r\n"
            b"content-type: application/problem+json\r\n"
            b"connection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (status, len(body), body)
        )
        self.transport.close()


DIRECT_WRITE = "changefeed.direct_write"


class DirectWrite:
    """Writes a chunk of the current streaming response straight to the connection, and
    tells the stream when the connection is gone.

    The fan-out calls this for a live stream whose task is parked, instead of waking the
    task to pass the bytes through its generator, Litestar and ASGI ``send``: measured, that
    path cost about twice the write itself per subscriber and event. It refuses (returns
    False, and the caller takes the ordinary path) unless the response is mid-stream in
    chunked encoding and the transport takes writes without back-pressure.

    ``on_lost`` lets a stream end when its client goes away without a second task per
    stream listening to ASGI ``receive`` for the disconnect (response.EventStream).
    """

    __slots__ = ("_cycle", "_on_lost", "_protocol")

    def __init__(self, protocol: BoundedHttpToolsProtocol) -> None:
        self._protocol = protocol
        self._cycle = protocol.cycle
        self._on_lost: Callable[[], None] | None = None

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the connection is lost (at once if it is already)."""
        if self._cycle.disconnected:
            callback()
        else:
            self._on_lost = callback

    def lost(self) -> None:
        callback, self._on_lost = self._on_lost, None
        if callback is not None:
            callback()

    def __call__(self, data: bytes) -> bool:
        cycle, protocol = self._cycle, self._protocol
        if (
            not data  # an empty chunk would end the response
            or not cycle.response_started
            or cycle.response_complete
            or cycle.disconnected
            or not cycle.chunked_encoding
            or protocol.flow.write_paused
            or protocol.transport.is_closing()
        ):
            return False
        protocol.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        return True


def bounded(
    max_head_bytes: int, head_seconds: float = 10.0, body_seconds: float = 30.0
) -> type[BoundedHttpToolsProtocol]:
    """The protocol class with given bounds, for ``uvicorn.Config(http=...)``."""
    return type(
        "HttpProtocol",
        (BoundedHttpToolsProtocol,),
        {
            "max_head_bytes": max_head_bytes,
            "head_seconds": head_seconds,
            "body_seconds": body_seconds,
        },
    )
