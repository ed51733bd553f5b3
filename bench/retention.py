"""Retention's cost: batched deletes (what changefeed.trim() does) against dropping time
partitions, each while a writer keeps sequencing events.

    .venv/bin/python bench/retention.py [--events 1000000]

Starts a throwaway PostgreSQL cluster and migrates it. Then:

1. Fills topic `bench` with N events through the real inbox and sequencer function.
2. Batched deletes: a count policy keeps the latest N/2; trim() removes the rest in
   transactions of 5000 rows while a writer sequences 100-event batches as fast as it can.
   Reports the removal rate, the writer's step latency (p50/p99/max) against its baseline,
   and the events table's size before, after, and after refilling N/2 events (space reuse).
3. Partitions: the same rows copied into a table partitioned by time (10 partitions);
   the writer inserts into it while the oldest half of the partitions are dropped, once
   alone and once while a long read (like an export) runs on the table: DROP needs an
   exclusive lock on the parent, so it queues behind the read and the writer queues
   behind it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from changefeed.ops import migrate
from changefeed.ops.cluster import free_port
from tests.support import create_database, temporary_cluster


class Writer:
    """Sequences batches of events in a loop and records each step's duration."""

    def __init__(self, url: str, statement: str) -> None:
        self.url = url
        self.statement = statement
        self.steps: list[float] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Writer:
        self._conn = await asyncpg.connect(self.url)
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            await self._conn.execute(self.statement)
            self.steps.append(time.perf_counter() - started)
            await asyncio.sleep(0.005)

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task
        await self._conn.close()

    def summary(self) -> str:
        ms = sorted(s * 1000 for s in self.steps)
        if not ms:
            return "no steps"
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        return f"p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms"


SEQUENCED_WRITE = """
WITH queued AS (
    INSERT INTO changefeed.inbox (topic, type, data)
    SELECT 'writer', 'w', jsonb_build_object('n', i) FROM generate_series(1, 100) i
)
SELECT 1;
SELECT changefeed.sequence();
"""


async def size(conn: asyncpg.Connection, table: str) -> str:
    """Total size with indexes, live rows, and bytes per live row (space reuse shows as a
    steady bytes-per-row after deleting and refilling)."""
    row = await conn.fetchrow(
        f"SELECT pg_total_relation_size('{table}') AS bytes, count(*) AS n FROM {table}"
    )
    return f"{row['bytes'] / 2**20:.0f} MiB, {row['n']:,} rows, {row['bytes'] / row['n']:.0f} B/row"


async def fill(conn: asyncpg.Connection, topic: str, n: int) -> None:
    await conn.execute(
        "INSERT INTO changefeed.inbox (topic, type, data) "
        "SELECT $1, 'order.created', jsonb_build_object('n', i, 'note', 'some text here') "
        "FROM generate_series(1, $2) AS i",
        topic,
        n,
    )
    while await conn.fetchval("SELECT (changefeed.sequence(10000)).consumed") > 0:
        pass


async def batched_deletes(url: str, conn: asyncpg.Connection, n: int) -> None:
    await fill(conn, "bench", n)
    await conn.execute("VACUUM ANALYZE changefeed.events")
    before = await size(conn, "changefeed.events")
    async with Writer(url, SEQUENCED_WRITE) as baseline:
        await asyncio.sleep(3)
    await conn.execute(
        "INSERT INTO changefeed.retention (pattern, max_count) VALUES ('bench', $1)", n // 2
    )
    reader = await asyncpg.connect(url)
    async with Writer(url, SEQUENCED_WRITE) as during:
        # The same long read as in the partition case: deletes do not wait for it.
        long_read = asyncio.create_task(
            reader.execute("SELECT count(*), pg_sleep(2) FROM changefeed.events")
        )
        await asyncio.sleep(0.2)
        started = time.perf_counter()
        removed = 0
        while True:
            step = await conn.fetchval(
                "SELECT coalesce(sum(removed), 0)::bigint FROM changefeed.trim()"
            )
            removed += step
            if step < 5000:
                break
        took = time.perf_counter() - started
        await long_read
    await reader.close()
    after = await size(conn, "changefeed.events")
    await conn.execute("VACUUM changefeed.events")
    vacuumed = await size(conn, "changefeed.events")
    await fill(conn, "bench", n // 2)
    refilled = await size(conn, "changefeed.events")
    print("## batched deletes (changefeed.trim, 5000 rows per transaction)\n")
    print("| measure | value |\n| --- | --- |")
    print(f"| removed | {removed:,} events in {took:.1f} s ({removed / took:,.0f}/s) |")
    print(f"| writer steps, baseline (100 events each) | {baseline.summary()} |")
    print(f"| writer steps, during trim and a 2 s read | {during.summary()} |")
    print(f"| events table, full | {before} |")
    print(f"| after trim | {after} |")
    print(f"| after vacuum | {vacuumed} |")
    print(f"| refilled with {n // 2:,} events | {refilled} |")
    print()


PARTITIONED = """
CREATE TABLE bench_part (LIKE changefeed.events) PARTITION BY RANGE (time);
"""


async def partitions(url: str, conn: asyncpg.Connection, n: int) -> None:
    # The same rows as the events table (the refilled topic), spread over 10 time ranges.
    bounds = await conn.fetchrow("SELECT min(time) AS lo, max(time) AS hi FROM changefeed.events")
    lo, hi = bounds["lo"], bounds["hi"]
    step = (hi - lo) / 10
    await conn.execute(PARTITIONED)
    edges = [lo + step * i for i in range(10)] + [hi + (hi - lo)]
    for i in range(10):
        await conn.execute(
            f"CREATE TABLE bench_part_{i} PARTITION OF bench_part "
            f"FOR VALUES FROM ('{edges[i].isoformat()}') TO ('{edges[i + 1].isoformat()}')"
        )
    await conn.execute("INSERT INTO bench_part SELECT * FROM changefeed.events")
    await conn.execute("CREATE INDEX ON bench_part (topic, seq)")
    rows = await conn.fetchval("SELECT count(*) FROM bench_part")
    write = (
        "INSERT INTO bench_part (topic, seq, position, type, data, time, published_at) "
        "SELECT 'w', i, i, 'w', '{}', now(), now() FROM generate_series(1, 100) i"
    )
    async with Writer(url, write) as alone:
        await asyncio.sleep(1)
        started = time.perf_counter()
        for i in range(3):
            await conn.execute(f"DROP TABLE bench_part_{i}")
        dropped_alone = time.perf_counter() - started
        await asyncio.sleep(1)
    reader = await asyncpg.connect(url)
    try:
        async with Writer(url, write) as behind_reader:
            await asyncio.sleep(1)
            # A long read on the parent, like an export or an auditor's scan.
            long_read = asyncio.create_task(
                reader.execute("SELECT count(*), pg_sleep(2) FROM bench_part")
            )
            await asyncio.sleep(0.2)
            started = time.perf_counter()
            for i in range(3, 5):
                await conn.execute(f"DROP TABLE bench_part_{i}")
            dropped_behind = time.perf_counter() - started
            await long_read
            await asyncio.sleep(1)
    finally:
        await reader.close()
    print("## time partitions (DROP TABLE of the oldest partitions)\n")
    print("| measure | value |\n| --- | --- |")
    print(f"| rows | {rows:,} in 10 partitions; 3 then 2 dropped |")
    print(f"| drop 3 partitions, no reader | {dropped_alone * 1000:.0f} ms |")
    print(f"| writer steps meanwhile | {alone.summary()} |")
    print(f"| drop 2 partitions while a 2 s read runs | {dropped_behind * 1000:.0f} ms |")
    print(f"| writer steps meanwhile | {behind_reader.summary()} |")
    print()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    with temporary_cluster("changefeed-bench-", tcp_port=free_port()) as cluster:
        url = await create_database(cluster.url_for("postgres"))
        await asyncio.to_thread(migrate.upgrade, url)
        conn = await asyncpg.connect(url)
        try:
            await batched_deletes(url, conn, args.events)
            await partitions(url, conn, args.events)
        finally:
            await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
