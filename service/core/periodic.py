"""A replica's housekeeping: work repeated on an interval in its own task."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from .. import logs
from . import database

log = logs.get(__name__)


class Periodic:
    """Runs ``work`` now and then every ``seconds`` until stopped. A failure is logged and
    the next round tries again: housekeeping must never take a replica down."""

    def __init__(self, name: str, seconds: float, work: Callable[[], Awaitable[object]]) -> None:
        self.name = name
        self._seconds = seconds
        self._work = work
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self._work()
            except database.UNAVAILABLE as exc:
                log.warning("periodic.failed", task=self.name, error=str(exc))
            except Exception:
                log.exception("periodic.failed", task=self.name)
            await asyncio.sleep(self._seconds)
