"""Backoff: exponential, capped, with full jitter."""

from __future__ import annotations

import random

from changefeed.backoff import Backoff


def test_waits_grow_to_the_ceiling_and_reset() -> None:
    random.seed(1)
    backoff = Backoff(first=0.1, ceiling=1.0)
    limits = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    for limit in limits:
        assert 0 <= backoff.next() <= limit
    assert backoff.attempt == len(limits)
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next() <= 0.1


def test_waits_are_jittered() -> None:
    # Replicas that lose the database together must not come back together.
    waits = set()
    for _ in range(20):
        backoff = Backoff(first=1.0, ceiling=1.0)
        waits.add(backoff.next())
    assert len(waits) > 15
