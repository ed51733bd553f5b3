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

It also hands each request a ``DirectWrite`` (uvicorn_direct.py). Both subclass and read
uvicorn's internals (the protocol's callbacks and fields, not public API): the versions are
pinned in pyproject.toml, and the tests fail if either stops working (tests/test_hostile.py
for the bounds, tests/test_fastpath.py for the direct write).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from . import problems
from .uvicorn_direct import DIRECT_WRITE, DirectWrite


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
        self._send_problem("request-timeout", f"{what} did not arrive within {seconds:g} seconds")

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
            "headers-too-large",
            f"the request line and headers exceed {self.max_head_bytes} bytes",
        )

    def _send_problem(self, kind: str, detail: str) -> None:
        self._refused = True
        self._disarm()
        self.transport.write(problems.raw_response(kind, detail))
        self.transport.close()


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
