"""The benchmark suite: one command, one table, one JSON file.

    .venv/bin/python bench/run.py [--quick] [--only fanout,latency,...] [--json bench/results.json]

Starts a throwaway PostgreSQL cluster, one `changefeed serve` replica, Nchan (nginx with
Debian's libnginx-mod-nchan, one worker) and the naive baseline (bench/naive.py), then
measures:

- fan-out: 1k subscribers on one topic at 100 events/s, against all three;
- latency: 1k subscribers at 20 events/s (against Nchan too), 100 at 100 events/s;
- idle: 10k open streams on the replica: memory per stream, CPU at rest;
- publishing: single-event requests from 16 concurrent clients; batches of 1000;
  `changefeed.publish()` from 16 SQL sessions;
- catch-up: 1M stored events replayed to one subscriber.

Subscribers are raw asyncio sockets in a separate process (bench/loadgen.py); its CPU is
reported beside the server's. The machine's cores are shared by everything: compare ratios
within one run, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from changefeed.ops import migrate  # noqa: E402
from changefeed.ops.cluster import Cluster, free_port  # noqa: E402
from tests.support import Service, create_database, private_tempdir  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- processes: CPU and memory from /proc ----------------------------------------------------


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return total


# -- the things measured --------------------------------------------------------------------


@dataclass
class Target:
    """Something subscribers connect to and a publisher publishes to."""

    name: str
    port: int
    sub_path: Callable[[str], str]
    publish: Callable[[asyncio.StreamWriter, asyncio.StreamReader, str, bytes], Awaitable[None]]
    pids: Callable[[], list[int]]


async def http_post(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, body: bytes
) -> int:
    """One request on a kept-alive raw connection; returns the status."""
    writer.write(
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body)
    )
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return status


def changefeed_target(service: Service) -> Target:
    async def publish(
        writer: asyncio.StreamWriter, reader: asyncio.StreamReader, topic: str, data: bytes
    ) -> None:
        status = await http_post(reader, writer, f"/feeds/{topic}", b'{"data": %s}' % data)
        assert status == 202, status

    assert service.process is not None
    pid = service.process.pid
    return Target("changefeed", service.port, lambda t: f"/feeds/{t}", publish, lambda: [pid])


@dataclass
class Nchan:
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="nchan-")))
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Nchan:
        conf = (HERE / "nchan.conf").read_text()
        conf = conf.replace("{port}", str(self.port)).replace("{dir}", str(self.directory))
        path = self.directory / "nginx.conf"
        path.write_text(conf)
        self.process = subprocess.Popen(["nginx", "-c", str(path), "-g", "daemon off;"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if len(children(self.process.pid)) >= 1:
                return self
            time.sleep(0.05)
        raise RuntimeError("nginx (nchan) did not start: " + self.error_log())

    def error_log(self) -> str:
        log = self.directory / "error.log"
        return log.read_text()[-2000:] if log.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)

    def target(self) -> Target:
        async def publish(
            writer: asyncio.StreamWriter, reader: asyncio.StreamReader, topic: str, data: bytes
        ) -> None:
            status = await http_post(reader, writer, f"/pub/{topic}", data)
            assert status in (201, 202), status

        assert self.process is not None
        pid = self.process.pid
        return Target(
            "nchan", self.port, lambda t: f"/sub/{t}", publish, lambda: [pid, *children(pid)]
        )


def wait_for_port(port: int, seconds: float) -> None:
    """Until something accepts connections on ``port`` (a server just started)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {seconds} s")


def naive_target(url: str, via: Target) -> tuple[Target, subprocess.Popen[bytes]]:
    port = free_port()
    env = {**os.environ, "CHANGEFEED_DATABASE_URL": url}
    process = subprocess.Popen([sys.executable, str(HERE / "naive.py"), str(port)], env=env)
    wait_for_port(port, 20)
    pid = process.pid
    # Events go through changefeed (its sequencer fills the table the baseline polls).
    return Target("naive", port, lambda t: f"/feeds/{t}", via.publish, lambda: [pid]), process


def granian_target(url: str) -> tuple[Target, subprocess.Popen[bytes]] | None:
    """The same app under granian (a Rust ASGI server), for the server comparison."""
    granian = shutil.which("granian") or str(Path(sys.executable).parent / "granian")
    if not Path(granian).exists():
        return None
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHANGEFEED_")}
    env.update(
        CHANGEFEED_DATABASE_URL=url,
        CHANGEFEED_AUTH="none",
        CHANGEFEED_MAX_STREAMS="20000",
        CHANGEFEED_LOG_LEVEL="warning",
    )
    process = subprocess.Popen(
        [
            granian,
            "--interface",
            "asgi",
            "--factory",
            "changefeed.ops.asgi:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--no-ws",
            "--log-level",
            "warning",
        ],
        cwd=HERE.parent,
        env=env,
    )
    wait_for_port(port, 30)
    time.sleep(1)

    async def publish(
        writer: asyncio.StreamWriter, reader: asyncio.StreamReader, topic: str, data: bytes
    ) -> None:
        assert await http_post(reader, writer, f"/feeds/{topic}", b'{"data": %s}' % data) == 202

    pid = process.pid
    target = Target(
        "changefeed (granian)",
        port,
        lambda t: f"/feeds/{t}",
        publish,
        lambda: [pid, *children(pid)],
    )
    return target, process


def plot(sweep: list[dict[str, Any]], path: Path) -> None:
    """Deliveries/s and latency against subscribers, per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name in sorted({r["target"] for r in sweep}):
        rows = [r for r in sweep if r["target"] == name]
        xs = [r["subscribers"] for r in rows]
        left.plot(xs, [r["deliveries_per_s"] for r in rows], marker="o", label=name)
        right.plot(xs, [r["latency_ms"]["p50"] for r in rows], marker="o", label=f"{name} p50")
        right.plot(
            xs,
            [r["latency_ms"]["p99"] for r in rows],
            marker="x",
            linestyle="--",
            label=f"{name} p99",
        )
    demanded = sorted({r["subscribers"] for r in sweep})
    left.plot(
        demanded,
        [n * sweep[0]["rate"] for n in demanded],
        color="grey",
        linestyle=":",
        label="demanded",
    )
    left.set(
        xlabel="subscribers (one topic, 100 events/s)",
        ylabel="deliveries/s",
        title="Fan-out throughput",
    )
    right.set(
        xlabel="subscribers (one topic, 100 events/s)",
        ylabel="ms, publish to receipt",
        title="Latency",
        yscale="log",
    )
    left.legend()
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# -- scenarios ------------------------------------------------------------------------------


async def fanout(
    target: Target,
    publish_to: Target,
    pg_pids: Callable[[], list[int]],
    *,
    subscribers: int,
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    """N subscribers on one topic, events published at ``rate`` for ``seconds``."""
    topic = f"bench{time.time_ns()}"
    work = Path(tempfile.mkdtemp(prefix="loadgen-"))
    start = work / "start"
    loadgen = await start_loadgen(
        target.port,
        target.sub_path(topic),
        subscribers=subscribers,
        seconds=seconds + 1.5,
        sample=min(subscribers, 100),
        work=work,
        start=start,
    )
    await asyncio.sleep(1.0)
    server_cpu, pg_cpu = cpu_seconds(target.pids()), cpu_seconds(pg_pids())
    start.touch()
    reader, writer = await asyncio.open_connection("127.0.0.1", publish_to.port)
    published = 0
    began = time.perf_counter()
    while (elapsed := time.perf_counter() - began) < seconds:
        due = int(elapsed * rate) + 1
        while published < due:
            try:
                await publish_to.publish(writer, reader, topic, b'{"t": %d}' % time.time_ns())
            except (asyncio.IncompleteReadError, ConnectionError):
                # The server closed the kept-alive connection: open another and go on.
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", publish_to.port)
                continue
            published += 1
        await asyncio.sleep(max(0.0, published / rate - (time.perf_counter() - began)))
    publishing_seconds = time.perf_counter() - began
    writer.close()
    out, _ = await loadgen.communicate()
    result = json.loads(out)
    server_cpu = cpu_seconds(target.pids()) - server_cpu
    pg_cpu = cpu_seconds(pg_pids()) - pg_cpu
    shutil.rmtree(work, ignore_errors=True)
    demanded = subscribers * published
    frames = result["frames"]
    return {
        "target": target.name,
        "subscribers": subscribers,
        "rate": rate,
        "connected": result["connected"],
        "published": published,
        "delivered_share": round(frames / demanded, 4) if demanded else None,
        # Per second of publishing (the count includes what arrived just after it).
        "deliveries_per_s": round(frames / publishing_seconds),
        "events_per_read": round(frames / result["reads"], 2) if result["reads"] else None,
        "server_cpu_s": round(server_cpu, 2),
        "server_us_per_delivery": round(server_cpu / frames * 1e6, 2) if frames else None,
        "postgres_cpu_s": round(pg_cpu, 2),
        "loadgen_cpu_s": result["cpu_seconds"],
        "latency_ms": result["latency_ms"],
    }


async def start_loadgen(
    port: int,
    path: str,
    *,
    subscribers: int,
    seconds: float,
    sample: int,
    work: Path,
    start: Path | None = None,
) -> asyncio.subprocess.Process:
    """bench/loadgen.py holding ``subscribers`` streams on ``path``, once all are connected;
    with ``start``, it counts frames only once that file exists."""
    ready = work / "ready"
    options = ["--start-file", str(start)] if start is not None else []
    loadgen = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "loadgen.py"),
        "--port",
        str(port),
        "--path",
        path,
        "--subscribers",
        str(subscribers),
        "--seconds",
        str(seconds),
        "--sample",
        str(sample),
        "--ready-file",
        str(ready),
        *options,
        stdout=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(300):
        while not ready.exists():
            if loadgen.returncode is not None:
                raise RuntimeError("loadgen failed")
            await asyncio.sleep(0.05)
    return loadgen


async def idle(service: Service, streams: int, rest_seconds: float) -> dict[str, Any]:
    target = changefeed_target(service)
    pids = target.pids()
    work = Path(tempfile.mkdtemp(prefix="loadgen-"))
    rss_before = rss_bytes(pids)
    loadgen = await start_loadgen(
        target.port,
        "/feeds/idle",
        subscribers=streams,
        seconds=rest_seconds + 10,
        sample=0,
        work=work,
    )
    await asyncio.sleep(3)
    rss_after = rss_bytes(pids)
    cpu = cpu_seconds(pids)
    await asyncio.sleep(rest_seconds)
    cpu = cpu_seconds(pids) - cpu
    out, _ = await loadgen.communicate()
    result = json.loads(out)
    shutil.rmtree(work, ignore_errors=True)
    return {
        "streams": streams,
        "connected": result["connected"],
        "rss_mib_before": round(rss_before / 2**20, 1),
        "rss_mib_after": round(rss_after / 2**20, 1),
        "kib_per_stream": round((rss_after - rss_before) / streams / 1024, 1),
        "cpu_share_at_rest": round(cpu / rest_seconds, 4),
        "rest_seconds": rest_seconds,
    }


async def publishing(service: Service, url: str, seconds: float) -> dict[str, Any]:
    db = await asyncpg.connect(url)

    async def head(topic: str) -> int:
        value = await db.fetchval("SELECT head FROM changefeed.topics WHERE topic = $1", topic)
        return int(value or 0)

    async def until_sequenced(topic: str, count: int) -> float:
        started = time.perf_counter()
        while await head(topic) < count:
            await asyncio.sleep(0.05)
        return time.perf_counter() - started

    async def http_clients(topic: str, clients: int, body: bytes, per: int) -> dict[str, Any]:
        accepted = 0

        async def client() -> None:
            nonlocal accepted
            reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
            while time.perf_counter() < deadline:
                assert await http_post(reader, writer, f"/feeds/{topic}", body) == 202
                accepted += per
            writer.close()

        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(client() for _ in range(clients)))
        took = time.perf_counter() - started
        tail = await until_sequenced(topic, accepted)
        return {
            "events": accepted,
            "accepted_per_s": round(accepted / took),
            "sequenced_per_s": round(accepted / (took + tail)),
        }

    single = await http_clients("pub-single", 16, b'{"data": {"n": 1}}', 1)
    batch_body = json.dumps([{"data": {"n": i}} for i in range(1000)]).encode()
    batched = await http_clients("pub-batch", 4, batch_body, 1000)

    sessions = [await asyncpg.connect(url) for _ in range(16)]
    done = 0

    async def sql(conn: asyncpg.Connection) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await conn.execute("SELECT changefeed.publish('pub-sql', 'sql', '{\"n\": 1}')")
            done += 1

    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(sql(c) for c in sessions))
    took = time.perf_counter() - started
    tail = await until_sequenced("pub-sql", done)
    for c in sessions:
        await c.close()
    await db.close()
    return {
        "single_event_16_clients": single,
        "batches_of_1000": batched,
        "sql_publish_16_sessions": {
            "events": done,
            "accepted_per_s": round(done / took),
            "sequenced_per_s": round(done / (took + tail)),
        },
    }


async def catch_up(service: Service, url: str, events: int) -> dict[str, Any]:
    db = await asyncpg.connect(url)
    await db.execute(
        "INSERT INTO changefeed.inbox (topic, type, data) "
        "SELECT 'replay', 'e', jsonb_build_object('n', i, 'note', 'some text') "
        "FROM generate_series(1, $1) AS i",
        events,
    )
    filled = time.perf_counter()
    while (
        await db.fetchval("SELECT head FROM changefeed.topics WHERE topic='replay'") or 0
    ) < events:
        await asyncio.sleep(0.2)
    sequencing = time.perf_counter() - filled
    await db.close()
    pids = changefeed_target(service).pids()
    cpu = cpu_seconds(pids)
    reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
    writer.write(b"GET /feeds/replay?after=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    started = time.perf_counter()
    frames = 0
    tail = b""
    while frames < events:
        chunk = await reader.read(1 << 20)
        if not chunk:
            break
        joined = tail + chunk
        frames += joined.count(b"\ndata:")
        tail = joined[-5:]
    took = time.perf_counter() - started
    writer.close()
    return {
        "events": frames,
        "seconds": round(took, 2),
        "events_per_s": round(frames / took),
        "server_cpu_s": round(cpu_seconds(pids) - cpu, 2),
        # The backlog of one INSERT sequenced beforehand, in steps of the default batch.
        "sequenced_per_s": round(events / sequencing),
    }


# -- the run --------------------------------------------------------------------------------


def table(results: dict[str, Any]) -> str:
    lines = [
        "| scenario | target | delivered | deliveries/s | µs CPU/delivery (server) "
        "| p50 / p99 ms | server / PG / loadgen CPU s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("fanout", "latency_1k_20", "latency_100_100", "servers", "sweep"):
        for r in results.get(name, []):
            lat = r["latency_ms"]
            lines.append(
                f"| {name} {r['subscribers']}×{r['rate']:g}/s | {r['target']} "
                f"| {r['delivered_share']:.1%} | {r['deliveries_per_s']:,} "
                f"| {r['server_us_per_delivery']} | {lat['p50']} / {lat['p99']} "
                f"| {r['server_cpu_s']} / {r['postgres_cpu_s']} / {r['loadgen_cpu_s']} |"
            )
    out = "\n".join(lines)
    if "idle" in results:
        i = results["idle"]
        out += (
            f"\n\nidle: {i['connected']:,} streams, {i['kib_per_stream']} KiB each "
            f"(RSS {i['rss_mib_before']} → {i['rss_mib_after']} MiB), "
            f"{i['cpu_share_at_rest']:.2%} of a core at rest over {i['rest_seconds']} s"
        )
    if "publishing" in results:
        for name, p in results["publishing"].items():
            out += (
                f"\npublishing, {name}: {p['accepted_per_s']:,} events/s accepted, "
                f"{p['sequenced_per_s']:,}/s sequenced ({p['events']:,} events)"
            )
    if "catch_up" in results:
        c = results["catch_up"]
        out += (
            f"\ncatch-up: {c['events']:,} events replayed to one subscriber in {c['seconds']} s "
            f"({c['events_per_s']:,}/s); its backlog was sequenced at {c['sequenced_per_s']:,}/s"
        )
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, smaller counts")
    parser.add_argument(
        "--only",
        help="comma-separated: fanout,latency,servers,sweep,idle,publishing,catchup "
        "(default: all but sweep)",
    )
    parser.add_argument("--plot", default=str(HERE.parent / "docs" / "bench-fanout.png"))
    parser.add_argument("--peers", default="nchan,naive", help="peers to compare (or none)")
    parser.add_argument("--json", default=str(HERE / "results.json"))
    parser.add_argument("--server-env", action="append", default=[], help="KEY=VALUE for serve")
    args = parser.parse_args()
    only = set((args.only or "fanout,latency,servers,idle,publishing,catchup").split(","))
    peers = set() if args.peers == "none" else set(args.peers.split(","))
    seconds = 5.0 if args.quick else 15.0

    cluster = Cluster(private_tempdir("changefeed-bench-"), tcp_port=free_port())
    await asyncio.to_thread(cluster.ensure)
    url = await create_database(cluster.url_for("postgres"))
    await asyncio.to_thread(migrate.upgrade, url)
    env = {"CHANGEFEED_MAX_STREAMS": "20000", "CHANGEFEED_POOL_MAX_SIZE": "20"}
    env.update(dict(kv.split("=", 1) for kv in args.server_env))
    service = Service(url, env=env).start()
    postmaster = int((cluster.pgdata / "postmaster.pid").read_text().split()[0])

    def pg_pids() -> list[int]:
        return [postmaster, *children(postmaster)]

    cf = changefeed_target(service)
    nchan = Nchan().start() if "nchan" in peers and shutil.which("nginx") else None
    naive, naive_process = naive_target(url, cf) if "naive" in peers else (None, None)
    results: dict[str, Any] = {"quick": args.quick, "server_env": env}
    try:
        if "fanout" in only:
            results["fanout"] = []
            for target in [cf, nchan.target() if nchan else None, naive]:
                if target is not None:
                    via = cf if target.name == "naive" else target
                    results["fanout"].append(
                        await fanout(
                            target, via, pg_pids, subscribers=1000, rate=100, seconds=seconds
                        )
                    )
                    print(json.dumps(results["fanout"][-1]), flush=True)
        if "latency" in only:
            results["latency_1k_20"] = []
            for target in [cf, nchan.target() if nchan else None]:
                if target is not None:
                    results["latency_1k_20"].append(
                        await fanout(
                            target, target, pg_pids, subscribers=1000, rate=20, seconds=seconds
                        )
                    )
                    print(json.dumps(results["latency_1k_20"][-1]), flush=True)
            results["latency_100_100"] = [
                await fanout(cf, cf, pg_pids, subscribers=100, rate=100, seconds=seconds)
            ]
            print(json.dumps(results["latency_100_100"][-1]), flush=True)
        if "servers" in only:
            results["servers"] = [
                await fanout(cf, cf, pg_pids, subscribers=1000, rate=100, seconds=seconds)
            ]
            started = granian_target(url)
            if started is not None:
                target, process = started
                try:
                    results["servers"].append(
                        await fanout(
                            target, target, pg_pids, subscribers=1000, rate=100, seconds=seconds
                        )
                    )
                finally:
                    process.terminate()
                    process.wait(10)
            for row in results["servers"]:
                print(json.dumps(row), flush=True)
        if "sweep" in only:
            results["sweep"] = []
            for n in (100, 250, 500, 1000, 2000):
                for target in [cf, nchan.target() if nchan else None]:
                    if target is not None:
                        row = await fanout(
                            target, target, pg_pids, subscribers=n, rate=100, seconds=seconds
                        )
                        results["sweep"].append(row)
                        print(json.dumps(row), flush=True)
            plot(results["sweep"], Path(args.plot))
        if "idle" in only:
            results["idle"] = await idle(
                service, 2000 if args.quick else 10_000, 10 if args.quick else 30
            )
            print(json.dumps(results["idle"]), flush=True)
        if "publishing" in only:
            results["publishing"] = await publishing(service, url, seconds)
            print(json.dumps(results["publishing"]), flush=True)
        if "catchup" in only:
            results["catch_up"] = await catch_up(service, url, 100_000 if args.quick else 1_000_000)
            print(json.dumps(results["catch_up"]), flush=True)
    finally:
        service.stop()
        if nchan:
            nchan.stop()
        if naive_process:
            naive_process.terminate()
            naive_process.wait(10)
        cluster.stop("fast")
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(table(results))
    print(f"\n(JSON: {args.json})")


if __name__ == "__main__":
    asyncio.run(main())
