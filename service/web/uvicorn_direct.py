"""The direct write of live batches to parked streams, on uvicorn's internals.

Relies on uvicorn's httptools protocol (``protocol.cycle``: ``response_started``,
``response_complete``, ``disconnected``, ``chunked_encoding``; ``protocol.flow.write_paused``;
``protocol.transport``), which are not public API: the versions are pinned in pyproject.toml
(the range the suite passed at), and tests/test_fastpath.py fails if the fan-out stops
writing this way (``changefeed_direct_writes_total`` stays at zero).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .uvicorn_protocol import BoundedHttpToolsProtocol

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
