"""Filtered subscriptions: what a filter per subscriber costs the replica.

    .venv/bin/python bench/filters.py [--subscribers 1000,10000] [--rate 100] [--seconds 10]

Two measurements:

- **end to end**: one `changefeed serve` on a throwaway cluster; N subscribers (raw sockets,
  bench/loadgen.py), each with its own tenant filter (`?where={"tenant": "t<i>"}`); events
  published at a rate, each for one random tenant, so each reaches one subscriber. Reported:
  the replica's and PostgreSQL's CPU per published event, beside the same N subscribers
  without a filter (where each event reaches all N: CPU per delivery).
- **in the replica**: the fan-out's selection for one read of 100 events with N distinct
  filters, as the hub does it (each event parsed once, filters looked up through
  filters.Index) against the naive way (every subscriber's filter tried on every event).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.run import children, cpu_seconds, http_post, start_loadgen  # noqa: E402
from changefeed.core import filters  # noqa: E402
from changefeed.ops import migrate  # noqa: E402
from changefeed.ops.cluster import Cluster, free_port  # noqa: E402
from tests.support import Service, create_database, temporary_cluster  # noqa: E402


def in_replica(subscribers: int, events: int = 100) -> dict[str, float]:
    """Microseconds per event to find its subscribers' filters: indexed vs naive."""
    wheres = [filters.checked({"tenant": f"t{i}"}) for i in range(subscribers)]
    datas = [
        json.dumps({"tenant": f"t{random.randrange(subscribers)}", "n": n, "items": [1, 2]})
        for n in range(events)
    ]
    index = filters.Index(wheres)
    began = time.perf_counter()
    for _ in range(5):
        for data in datas:
            index.matching(filters.parse(data))
    indexed = (time.perf_counter() - began) / (5 * events)
    began = time.perf_counter()
    for data in datas:
        parsed = filters.parse(data)
        [w for w in wheres if w.matches(parsed)]
    naive = (time.perf_counter() - began) / events
    return {"indexed_us": round(indexed * 1e6, 2), "naive_us": round(naive * 1e6, 1)}


async def end_to_end(
    service: Service,
    pg_pids: list[int],
    subscribers: int,
    rate: float,
    seconds: float,
    filtered: bool,
) -> dict[str, object]:
    topic = f"bench{time.time_ns()}"
    path = f"/feeds/{topic}"
    if filtered:
        path += "?where=%7B%22tenant%22%3A%22t{i}%22%7D"  # {"tenant":"t<i>"}
    work = Path(tempfile.mkdtemp(prefix="loadgen-"))
    start = work / "start"
    loadgen = await start_loadgen(
        service.port,
        path,
        subscribers=subscribers,
        seconds=seconds + 1.5,
        sample=100,
        work=work,
        start=start,
    )
    await asyncio.sleep(1.0)
    assert service.process is not None
    server_before, pg_before = cpu_seconds([service.process.pid]), cpu_seconds(pg_pids)
    start.touch()
    reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
    published = 0
    began = time.perf_counter()
    while (elapsed := time.perf_counter() - began) < seconds:
        while published < int(elapsed * rate) + 1:
            tenant = random.randrange(subscribers)
            body = b'{"data": {"t": %d, "tenant": "t%d"}}' % (time.time_ns(), tenant)
            assert await http_post(reader, writer, f"/feeds/{topic}", body) == 202
            published += 1
        await asyncio.sleep(max(0.0, published / rate - (time.perf_counter() - began)))
    writer.close()
    out, _ = await loadgen.communicate()
    result = json.loads(out)
    server = cpu_seconds([service.process.pid]) - server_before
    pg = cpu_seconds(pg_pids) - pg_before
    frames = result["frames"]
    return {
        "subscribers": subscribers,
        "filtered": filtered,
        "connected": result["connected"],
        "published": published,
        "delivered": frames,
        "expected": published if filtered else published * subscribers,
        "server_us_per_event": round(server / published * 1e6),
        "server_us_per_delivery": round(server / frames * 1e6, 1) if frames else None,
        "postgres_us_per_event": round(pg / published * 1e6),
        "latency_ms": result["latency_ms"],
    }


async def run(args: argparse.Namespace, cluster: Cluster) -> None:
    for n in args.subscribers:
        print(json.dumps({"in_replica": n, **in_replica(n)}), flush=True)
    url = await create_database(cluster.url_for("postgres"))
    await asyncio.to_thread(migrate.upgrade, url)
    env = {"CHANGEFEED_MAX_STREAMS": "50000", "CHANGEFEED_SUBJECT_MAX_STREAMS": "50000"}
    with Service(url, env=env) as service:
        postmaster = cluster_pids(cluster)
        for n in args.subscribers:
            for filtered in (True, False):
                result = await end_to_end(
                    service, postmaster(), n, args.rate, args.seconds, filtered
                )
                print(json.dumps(result), flush=True)


def cluster_pids(cluster: Cluster) -> Callable[[], list[int]]:
    postmaster = int((cluster.pgdata / "postmaster.pid").read_text().split()[0])
    return lambda: [postmaster, *children(postmaster)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--subscribers", type=lambda t: [int(n) for n in t.split(",")], default=[1000, 10000]
    )
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with temporary_cluster("changefeed-bench-", tcp_port=free_port()) as cluster:
        asyncio.run(run(args, cluster))


if __name__ == "__main__":
    main()
