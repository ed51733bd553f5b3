"""Backfill of a large captured table: rows per second, and what it does to writers.

    .venv/bin/python bench/backfill.py [--rows 1000000] [--chunk-rows 1000[,10000,...]]

Starts a throwaway PostgreSQL cluster, fills a table, captures it, and runs a writer that
updates random rows one per transaction. It measures the writer's latency alone, then
during a backfill (core/backfill.py calling the procedure changefeed.backfill, as
`changefeed backfill` does) for each chunk size in turn, while a sequencer loop numbers
what arrives, as a service's would. Reported per chunk size: the backfill's rows/s, the time
until every read is numbered, and the writer's p50/p99/max latency without and with it.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from changefeed.core import backfill
from changefeed.ops import migrate
from changefeed.ops.cluster import free_port
from tests.support import create_database, temporary_cluster


async def writer(url: str, rows: int, stop: asyncio.Event) -> list[float]:
    """One-row UPDATEs of random rows, each its own transaction; their latencies."""
    conn = await asyncpg.connect(url)
    latencies: list[float] = []
    try:
        while not stop.is_set():
            started = time.perf_counter()
            await conn.execute("UPDATE big SET v = v + 1 WHERE id = $1", random.randrange(rows))
            latencies.append(time.perf_counter() - started)
    finally:
        await conn.close()
    return latencies


async def sequencer(url: str, stop: asyncio.Event) -> None:
    conn = await asyncpg.connect(url)
    try:
        while True:
            row = await conn.fetchrow("SELECT * FROM changefeed.sequence(10000)")
            if not row["consumed"]:
                if stop.is_set():
                    return
                await asyncio.sleep(0.05)
    finally:
        await conn.close()


def summary(latencies: list[float]) -> str:
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[int(len(ms) * 0.99)]
    return (
        f"{len(ms)} updates, p50 {statistics.median(ms):.2f} ms, p99 {p99:.2f} ms, "
        f"max {ms[-1]:.1f} ms"
    )


async def run(admin_url: str, rows: int, chunk_rows: list[int], baseline_seconds: float) -> None:
    url = await create_database(admin_url)
    await asyncio.to_thread(migrate.upgrade, url)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL, name text, "
            "amount numeric, at timestamptz DEFAULT now())"
        )
        started = time.perf_counter()
        await conn.execute(
            "INSERT INTO big (id, v, name, amount) "
            "SELECT i, 0, 'customer ' || i, i * 1.5 FROM generate_series(0, $1 - 1) i",
            rows,
        )
        await conn.execute("VACUUM ANALYZE big")
        print(f"filled {rows:,} rows in {time.perf_counter() - started:.1f} s")
        await conn.fetchval("SELECT changefeed.capture('big')")
    finally:
        await conn.close()

    stop = asyncio.Event()
    task = asyncio.create_task(writer(url, rows, stop))
    await asyncio.sleep(baseline_seconds)
    stop.set()
    print(f"writer alone:           {summary(await task)}")

    for size in chunk_rows:
        stop, done = asyncio.Event(), asyncio.Event()
        writing = asyncio.create_task(writer(url, rows, stop))
        numbering = asyncio.create_task(sequencer(url, done))
        started = time.perf_counter()
        read = await backfill.backfill(url, "public.big", chunk_rows=size)
        elapsed = time.perf_counter() - started
        stop.set()
        latencies = await writing
        done.set()
        await numbering
        numbered = time.perf_counter() - started
        print(f"chunks of {size}:")
        print(f"  writer during backfill: {summary(latencies)}")
        print(
            f"  backfill: {read:,} rows in {elapsed:.1f} s = {read / elapsed:,.0f} rows/s; "
            f"all numbered after {numbered:.1f} s = {read / numbered:,.0f} rows/s end to end"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--chunk-rows",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1000],
        help="rows per chunk; several, comma-separated, run one after another",
    )
    parser.add_argument("--baseline-seconds", type=float, default=10.0)
    args = parser.parse_args()
    with temporary_cluster("changefeed-bench-", tcp_port=free_port()) as cluster:
        asyncio.run(
            run(cluster.url_for("postgres"), args.rows, args.chunk_rows, args.baseline_seconds)
        )


if __name__ == "__main__":
    main()
