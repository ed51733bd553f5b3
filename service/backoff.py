"""Waiting before trying again, for the service and its clients alike."""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Exponential backoff with full jitter: the n-th wait is uniform between 0 and
    ``min(ceiling, first * 2**n)``, back to ``first`` after ``reset()``. The jitter is what
    matters when many replicas (or clients) lose the same server at the same moment: without
    it they would all come back in lockstep, and again after each failure."""

    def __init__(self, first: float = 0.1, ceiling: float = 5.0) -> None:
        self.first, self.ceiling, self.attempt = first, ceiling, 0

    def next(self) -> float:
        """The next wait, in seconds (and count it)."""
        delay = min(self.ceiling, self.first * 2**self.attempt)
        self.attempt += 1
        return random.uniform(0, delay)

    async def wait(self) -> None:
        await asyncio.sleep(self.next())

    def reset(self) -> None:
        self.attempt = 0
