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
- **an index on data** (``--index``): a topic of ``--events`` events; a catch-up through
  all of it with a selective filter (one tenant in 1000) and an unselective one (half the
  events), page by page as a stream does, without and with a GIN ``jsonb_path_ops`` index
  on ``events.data``; and what the index costs sequencing (events numbered per second).
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

import asyncpg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.run import children, cpu_seconds, http_post, start_loadgen  # noqa: E402
from changefeed.core import events, filters  # noqa: E402
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


async def sequence_all(conn: asyncpg.Connection) -> float:
    """Number everything in the inbox; seconds taken."""
    began = time.perf_counter()
    while (await conn.fetchrow("SELECT * FROM changefeed.sequence(10000)"))["consumed"]:
        pass
    return time.perf_counter() - began


async def catch_up(conn: asyncpg.Connection, topic: str, where: filters.Where, head: int) -> float:
    """Seconds to page through the whole topic with a filter, as a stream catches up."""
    after, began = 0, time.perf_counter()
    while after < head:
        _, after = await events.filtered_frames_page(conn, topic, after, 1000, where, head)
    return time.perf_counter() - began


async def index(url: str, count: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        publish = (
            "SELECT changefeed.publish($1, 'order', jsonb_build_object("
            "'tenant', 't' || (i % 1000), 'half', i % 2 = 0, 'n', i)) "
            "FROM generate_series(1, $2) i"
        )
        await conn.execute(publish, "indexed", count)
        plain = await sequence_all(conn)
        head = await events.head(conn, "indexed")
        await conn.execute("VACUUM ANALYZE changefeed.events")
        selective = filters.checked({"tenant": "t7"})
        unselective = filters.checked({"half": True})
        rows = {"events": count, "sequencing_per_s": round(count / plain)}
        for name, where in (("selective", selective), ("unselective", unselective)):
            rows[f"{name}_catch_up_s"] = round(await catch_up(conn, "indexed", where, head), 2)
        await conn.execute(
            "CREATE INDEX events_data ON changefeed.events USING gin (data jsonb_path_ops)"
        )
        await conn.execute("ANALYZE changefeed.events")
        for name, where in (("selective", selective), ("unselective", unselective)):
            seconds = await catch_up(conn, "indexed", where, head)
            rows[f"{name}_catch_up_with_index_s"] = round(seconds, 2)
        await conn.execute(publish, "indexed2", count)
        rows["sequencing_with_index_per_s"] = round(count / await sequence_all(conn))
        print(json.dumps({"index": rows}), flush=True)
    finally:
        await conn.close()


async def run(args: argparse.Namespace, cluster: Cluster) -> None:
    url = await create_database(cluster.url_for("postgres"))
    await asyncio.to_thread(migrate.upgrade, url)
    if args.index:
        await index(url, args.events)
        return
    for n in args.subscribers:
        print(json.dumps({"in_replica": n, **in_replica(n)}), flush=True)
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
    parser.add_argument("--index", action="store_true", help="measure a GIN index on data")
    parser.add_argument("--events", type=int, default=1_000_000, help="for --index")
    args = parser.parse_args()
    with temporary_cluster("changefeed-bench-", tcp_port=free_port()) as cluster:
        asyncio.run(run(args, cluster))


if __name__ == "__main__":
    main()
