"""Publish-to-delivery latency and throughput of one replica, measured from outside.

    .venv/bin/python bench/latency.py [--subscribers 50] [--rate 200] [--seconds 10]

Starts a throwaway PostgreSQL cluster (or uses CHANGEFEED_TEST_DATABASE_URL's server) and a
real `changefeed serve` process, opens N SSE subscribers on one topic, publishes events at a
fixed rate over HTTP with the send time in each event, and reports the latency from the
POST to each subscriber's receipt (p50/p95/p99/max), then a burst of batched publishes for
throughput (events sequenced and delivered per second). Client and server share the
machine's cores, so the figures are an upper bound on what the service itself costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service import migrate
from service.cluster import Cluster, free_port
from tests.support import Service, create_database, private_tempdir


async def _subscriber(
    base: str, topic: str, n: int, latencies: list[float], ready: asyncio.Event, counts: list[int]
) -> None:
    async with (
        httpx.AsyncClient(base_url=base, timeout=None) as client,
        client.stream("GET", f"/feeds/{topic}") as response,
    ):
        buffer = b""
        seen = 0
        async for chunk in response.aiter_raw():
            now = time.time()
            if not ready.is_set():
                ready.set()
            buffer += chunk
            *frames, buffer = buffer.split(b"\n\n")
            for frame in frames:
                if not frame.startswith(b"id: "):
                    continue
                data = json.loads(frame.rsplit(b"data: ", 1)[1])
                if "t" in data:
                    latencies.append(now - data["t"])
                seen += 1
                counts[0] += 1
            if seen >= n:
                return


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=50)
    parser.add_argument("--rate", type=float, default=200, help="events per second")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--burst", type=int, default=20000, help="events in the throughput run")
    args = parser.parse_args()

    cluster = None
    admin = os.environ.get("CHANGEFEED_TEST_DATABASE_URL")
    if not admin:
        cluster = Cluster(private_tempdir("changefeed-bench-"), tcp_port=free_port())
        await asyncio.to_thread(cluster.ensure)
        admin = cluster.url_for("postgres")
    url = await create_database(admin)
    await asyncio.to_thread(migrate.upgrade, url)
    service = Service(url).start()
    try:
        base = service.base_url
        # Latency at a steady rate.
        topic = "bench.latency"
        total = int(args.rate * args.seconds)
        latencies: list[float] = []
        counts = [0]
        readies = [asyncio.Event() for _ in range(args.subscribers)]
        subs = [
            asyncio.create_task(_subscriber(base, topic, total, latencies, r, counts))
            for r in readies
        ]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 30)
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            start = time.perf_counter()
            for i in range(total):
                target = start + i / args.rate
                delay = target - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await client.post(f"/feeds/{topic}", json={"data": {"t": time.time(), "i": i}})
            await asyncio.wait_for(asyncio.gather(*subs), 60)
        print(
            f"latency: {args.subscribers} subscribers, {total} events at {args.rate:.0f}/s, "
            f"{len(latencies)} deliveries: p50 {_pct(latencies, 0.5):.1f} ms, "
            f"p95 {_pct(latencies, 0.95):.1f} ms, p99 {_pct(latencies, 0.99):.1f} ms, "
            f"max {max(latencies) * 1000:.1f} ms, mean {statistics.mean(latencies) * 1000:.1f} ms"
        )

        # Throughput: batched publishes as fast as one client can send them.
        topic = "bench.burst"
        readies = [asyncio.Event()]
        counts = [0]
        sub = asyncio.create_task(_subscriber(base, topic, args.burst, [], readies[0], counts))
        await asyncio.wait_for(readies[0].wait(), 30)
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            start = time.perf_counter()
            for i in range(0, args.burst, 500):
                batch = [{"data": {"i": j}} for j in range(i, min(i + 500, args.burst))]
                await client.post(f"/feeds/{topic}", json=batch)
            published = time.perf_counter() - start
            await asyncio.wait_for(sub, 120)
            delivered = time.perf_counter() - start
        print(
            f"throughput: {args.burst} events in batches of 500: published in {published:.2f} s "
            f"({args.burst / published:.0f}/s), all delivered to a subscriber in "
            f"{delivered:.2f} s ({args.burst / delivered:.0f}/s)"
        )
    finally:
        service.stop()
        if cluster is not None:
            cluster.destroy()


if __name__ == "__main__":
    asyncio.run(main())
