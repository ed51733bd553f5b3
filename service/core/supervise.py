"""A replica's background loops, in one asyncio.TaskGroup."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from .. import logs
from ..backoff import Backoff
from . import database

log = logs.get(__name__)

# A loop: one life of something that runs in the background (a connection, a timer), given
# the backoff it is restarted with, which it resets once it is working.
Loop = Callable[[Backoff], Awaitable[None]]


class Supervisor:
    """Runs named loops until ``stop()``. A loop that returns (its connection was lost) or
    fails is started again after a wait of its backoff; a failure other than the database
    being unreachable is a bug, and is logged with its traceback. ``stop()`` cancels them all
    and waits for them, each one cleaning up in its own ``finally``."""

    def __init__(self) -> None:
        self._loops: list[tuple[str, Loop, float]] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, name: str, loop: Loop, *, ceiling: float = 5.0) -> None:
        """Supervise ``loop``; ``ceiling``: the longest wait before it starts again."""
        self._loops.append((name, loop, ceiling))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="supervisor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for name, loop, ceiling in self._loops:
                group.create_task(_keep(name, loop, Backoff(ceiling=ceiling)), name=name)


async def _keep(name: str, loop: Loop, backoff: Backoff) -> None:
    while True:
        try:
            await loop(backoff)
        except database.UNAVAILABLE as exc:
            log.warning("loop.database_unavailable", loop=name, error=str(exc))
        except Exception:
            log.exception("loop.failed", loop=name)
        await backoff.wait()


def every(seconds: float, work: Callable[[], Awaitable[object]]) -> Loop:
    """A loop running ``work`` now and then every ``seconds`` (housekeeping); supervise it
    with ``ceiling=seconds``, so that after a failure it tries again within the interval."""

    async def loop(backoff: Backoff) -> None:
        while True:
            await work()
            backoff.reset()
            await asyncio.sleep(seconds)

    return loop
