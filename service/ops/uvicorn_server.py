"""uvicorn's server, draining streams at a shutdown signal, on one of uvicorn's internals.

``_captured_signals`` is not public API: the versions are pinned in pyproject.toml, and
tests/test_cli.py (the embedded default stops its cluster at SIGTERM) fails if clearing it
stops working, since uvicorn would then kill the process before the cluster is stopped.
"""

from __future__ import annotations

import asyncio
from types import FrameType

import uvicorn

from ..core.runtime import Runtime


class DrainingServer(uvicorn.Server):
    """uvicorn, ending open streams as soon as a shutdown signal arrives.

    uvicorn waits for open connections before the app's shutdown runs, and an event
    stream never ends by itself: so the streams are drained at the signal itself.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.runtime: Runtime | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.loop is not None and self.runtime is not None:
            self.loop.call_soon_threadsafe(self.runtime.drain)
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal once it has stopped, which would kill the process
        # before the embedded cluster is stopped: the shutdown is complete without that.
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()
