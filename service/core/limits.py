"""Per-subject limits on one replica: a token bucket for publishing (the hub counts each
subject's open streams).

Per replica rather than global: a shared counter would put a database round trip on every
publish. Behind a load balancer a subject's effective limit is the per-replica one times
the replicas it reaches; the docs say so.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


class Limited(Exception):
    """Over a per-subject limit (429); ``retry_after`` in whole seconds."""

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


@dataclass
class _Bucket:
    tokens: float
    updated: float = field(default_factory=time.monotonic)


class PublishLimits:
    """Meters published events per subject."""

    def __init__(self, *, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}

    def spend(self, subject: str, events: int) -> None:
        """Take ``events`` from the subject's bucket, or Limited (taking nothing)."""
        now = time.monotonic()
        bucket = self._buckets.get(subject)
        if bucket is None:
            bucket = self._buckets[subject] = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if events > bucket.tokens:
            wait = (events - bucket.tokens) / self.rate
            raise Limited(
                f"{subject} may publish {self.rate:g} events per second (bursts of "
                f"{self.burst}); this batch of {events} fits in {wait:.1f} s",
                retry_after=max(1, math.ceil(wait)),
            )
        bucket.tokens -= events
        if len(self._buckets) > 100_000:
            self._forget_full(now)

    def _forget_full(self, now: float) -> None:
        # Buckets that have refilled carry no state worth keeping: bound the memory.
        full = [
            s
            for s, b in self._buckets.items()
            if b.tokens + (now - b.updated) * self.rate >= self.burst
        ]
        for subject in full:
            del self._buckets[subject]
