"""uvicorn's httptools protocol with a bound on the request line and headers.

uvicorn bounds request heads only for its slower h11 protocol; with httptools a client can
send headers without end and the server buffers them all. This answers 431 (as problem
details) once a request head passes ``max_head_bytes``, counted two ways: the parsed URL and
headers (exact), and the raw bytes received while the head is incomplete (which also bounds
one endless header value that the parser would buffer before reporting it).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing an oversized request head."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that refuses request heads larger than ``max_head_bytes``."""

    max_head_bytes: ClassVar[int] = 32 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._parsed_head = 0
        self._raw_head = 0
        self._in_head = True
        self._refused = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._parsed_head = 0
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._raw_head = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True

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
        self._refused = True
        body = json.dumps(
            {
                "status": 431,
                "type": "urn:changefeed:problem:headers-too-large",
                "title": "Request header fields too large",
                "detail": f"the request line and headers exceed {self.max_head_bytes} bytes",
            }
        ).encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/problem+json\r\n"
            b"connection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()


def bounded(max_head_bytes: int) -> type[BoundedHttpToolsProtocol]:
    """The protocol class with a given bound, for ``uvicorn.Config(http=...)``."""
    return type("HttpProtocol", (BoundedHttpToolsProtocol,), {"max_head_bytes": max_head_bytes})
