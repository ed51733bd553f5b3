"""The supervisor: loops restarted after they end or fail, all stopped together."""

from __future__ import annotations

import asyncio

import asyncpg

from changefeed.backoff import Backoff
from changefeed.core.supervise import Supervisor, every


async def test_a_loop_is_restarted_after_it_ends_or_fails() -> None:
    lives: list[int] = []
    restarted = asyncio.Event()

    async def loop(backoff: Backoff) -> None:
        lives.append(backoff.attempt)
        if len(lives) == 1:
            raise RuntimeError("a bug")
        if len(lives) == 2:
            raise asyncpg.CannotConnectNowError("starting up")
        if len(lives) == 3:
            return  # its connection was lost
        backoff.reset()
        restarted.set()
        await asyncio.Event().wait()

    supervisor = Supervisor()
    supervisor.add("flaky", loop, ceiling=0.01)
    supervisor.start()
    try:
        async with asyncio.timeout(5):
            await restarted.wait()
    finally:
        await supervisor.stop()
    # Each failure lengthened the backoff the next life was given.
    assert lives == [0, 1, 2, 3]


async def test_stop_cancels_every_loop_and_runs_their_cleanup() -> None:
    started: list[str] = []
    cleaned: list[str] = []
    both = asyncio.Event()

    def forever(name: str):  # type: ignore[no-untyped-def]
        async def loop(backoff: Backoff) -> None:
            started.append(name)
            if len(started) == 2:
                both.set()
            try:
                await asyncio.Event().wait()
            finally:
                cleaned.append(name)

        return loop

    supervisor = Supervisor()
    supervisor.add("a", forever("a"))
    supervisor.add("b", forever("b"))
    supervisor.start()
    async with asyncio.timeout(5):
        await both.wait()
    async with asyncio.timeout(5):
        await supervisor.stop()
    assert sorted(cleaned) == ["a", "b"]


async def test_every_runs_now_and_again_after_a_failure() -> None:
    calls = 0
    third = asyncio.Event()

    async def work() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionResetError("the database went away")
        if calls == 3:
            third.set()

    supervisor = Supervisor()
    supervisor.add("housekeeping", every(0.01, work), ceiling=0.01)
    supervisor.start()
    try:
        async with asyncio.timeout(5):
            await third.wait()
    finally:
        await supervisor.stop()
    assert calls >= 3
