"""Admission: whether this replica takes a publish or a stream now. The one place for
the limits a request meets before it is served: the replica draining, its stream cap, the
inbox backlog, the grants, a token's remaining life, and the per-subject limits (a token
bucket for publishing; the hub counts each subject's open streams, under the limit given
here).

The per-subject limits are per replica rather than global: a shared counter would put a
database round trip on every publish. Behind a load balancer a subject's effective limit is
the per-replica one times the replicas it reaches; the docs say so.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .auth import Principal, Unauthenticated

if TYPE_CHECKING:
    from ..settings import Settings
    from .fanout import Hub
    from .inbox import Backlog


class Unavailable(Exception):
    """This replica cannot take the request now (shutting down, at its stream cap, the
    inbox backed up): try again shortly, here or at another replica (503)."""

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


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


class Admission:
    """The checks a publish or a stream passes before it is served (raising Unavailable,
    Forbidden, Limited or Unauthenticated); nothing is taken from a subject's allowance by
    a request that is refused."""

    def __init__(self, settings: Settings, hub: Hub, backlog: Backlog) -> None:
        self._settings = settings
        self._hub = hub
        self._backlog = backlog
        self._publishing = PublishLimits(
            rate=settings.subject_publish_rate, burst=settings.subject_publish_burst
        )

    def publish(self, principal: Principal, topic: str) -> None:
        """May ``principal`` publish to ``topic`` now (checked before the body is read)."""
        principal.require("publish", topic)
        if self._backlog.full:
            raise Unavailable(
                f"{self._backlog.events} events wait for the sequencer (the limit is "
                f"{self._backlog.limit}): it is down or behind; retry shortly"
            )

    def charge(self, principal: Principal, events: int) -> None:
        """Take ``events`` from the subject's publishing allowance, or Limited (taking
        nothing)."""
        if principal.limited:
            self._publishing.spend(principal.subject, events)

    def stream(self, principal: Principal) -> None:
        """May ``principal`` open a stream now (the per-subject count is the hub's, which
        registers the stream)."""
        # The leeway lets a token through whose issuer's clock is ahead of ours; a stream
        # opened on it would be closed at once as expired, and the client would reconnect
        # in a loop with the same token. Refused instead: it must fetch a fresh one.
        if principal.expires_at is not None and principal.expires_at <= time.time():
            raise Unauthenticated("the token has expired: a stream needs one that has not")
        if self._hub.closed:
            raise Unavailable("this replica is shutting down; reconnect")
        if self._hub.subscriber_count >= self._settings.max_streams:
            raise Unavailable(
                f"this replica serves its maximum of {self._settings.max_streams} streams; "
                "retry after the delay in Retry-After"
            )
