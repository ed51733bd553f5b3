"""Prometheus metrics of one replica, served at ``/metrics``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

open_streams = Gauge("changefeed_open_streams", "SSE streams open on this replica")
subscriptions = Gauge(
    "changefeed_subscriptions", "Fan-out registrations (one per open stream, while it lives)"
)
feeds = Gauge("changefeed_topic_feeds", "Topics this replica fans out (topics with subscribers)")
published = Counter(
    "changefeed_events_published",
    "Events accepted by this replica's publish API (repeats of a stored id included: they are "
    "dropped when numbered, see changefeed_events_deduplicated)",
)
sequenced = Counter("changefeed_events_sequenced", "Events numbered by this replica's sequencer")
deduplicated = Counter(
    "changefeed_events_deduplicated",
    "Events this replica's sequencer dropped as repeats of an id already stored in their topic",
)


class _Count(Collector):
    """A counter kept in a plain integer, for hot paths: a Counter's lock on every delivery
    was a measurable share of a replica's CPU at high fan-out."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.count = 0
        REGISTRY.register(self)

    def inc(self, n: int = 1) -> None:
        self.count += n

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.count)


delivered = _Count("changefeed_events_delivered", "Event frames written to subscribers")
# The two fast paths, which rest on uvicorn's and Litestar's internals (web/uvicorn_direct.py,
# web/fastpath.py): the tests fail if either stops being taken.
direct_writes = _Count(
    "changefeed_direct_writes",
    "Live batches the fan-out wrote straight to a parked stream's connection",
)
fast_publishes = _Count(
    "changefeed_fast_publishes", "Publishes answered by the fast path, below the framework"
)
# Offers of a live batch to filtered subscribers: only to those whose filter took some of
# the batch's events (a test fails if every filtered subscriber is offered every batch).
filtered_offers = _Count(
    "changefeed_filtered_offers",
    "Live batches offered to filtered subscribers (only those whose filter took an event)",
)
fallbacks = Counter(
    "changefeed_slow_consumer_fallbacks",
    "Times a subscriber's buffer overflowed and it fell back to paging from the table",
)
listener_connects = Counter(
    "changefeed_listener_connects", "Times the LISTEN connection was (re)established"
)
sequencer_lag = Gauge(
    "changefeed_sequencer_lag_seconds",
    "Age of the oldest committed, unsequenced inbox row (0 unless this replica sequences)",
)
inbox_backlog = Gauge(
    "changefeed_inbox_backlog", "Events waiting in the inbox for the sequencer (read each second)"
)
retention_removed = Counter(
    "changefeed_events_removed", "Events removed by retention by this replica"
)
# Backfills run in whichever session calls changefeed.backfill; their progress is in the
# database, which every replica reads every few seconds (so all report the same).
backfill_rows = Gauge(
    "changefeed_backfill_rows",
    "Rows published so far by the latest backfill of each captured table",
    ["table"],
)
backfill_rows_estimate = Gauge(
    "changefeed_backfill_rows_estimate",
    "The planner's row count of the table when its latest backfill began",
    ["table"],
)
backfill_running = Gauge(
    "changefeed_backfill_running",
    "1 while the latest backfill of the table runs (0 once done, failed, cancelled or interrupted)",
    ["table"],
)
is_sequencer = Gauge("changefeed_is_sequencer", "1 while this replica holds the sequencer role")
delivery_latency = Histogram(
    "changefeed_delivery_latency_seconds",
    "From publish to this replica's fan-out reading the event",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def _task_count() -> float:
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # scraped outside the event loop
        return 0.0


tasks = Gauge("changefeed_asyncio_tasks", "asyncio tasks alive in this replica (leak detector)")
tasks.set_function(_task_count)
