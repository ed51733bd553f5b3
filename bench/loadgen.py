"""SSE subscribers on raw asyncio sockets: cheap enough that the client is not the bottleneck.

    python bench/loadgen.py --port P --path /feeds/t --subscribers 1000 --seconds 20 \
        [--sample 100] [--ready-file F] > result.json

``{i}`` in the path is replaced by each subscriber's number.

Opens N connections with a bare HTTP/1.1 GET (no client library), counts event frames on
every connection (bytes.count in C), and on ``--sample`` of them parses the publisher's
send time ``"t": <ns>`` from each event to measure latency. Writes one JSON object: frames
received, latency percentiles, its own CPU seconds. Runs as its own process so that the
orchestrator can report its CPU beside the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import sys
import time
from pathlib import Path

_STAMP = re.compile(rb'"t": ?(\d{19})')


class Subscriber(asyncio.Protocol):
    """One SSE connection: counts frames; a sampled one records latencies."""

    def __init__(self, request: bytes, sample: bool, latencies: list[int]) -> None:
        self.request = request
        self.sample = sample
        self.latencies = latencies
        self.frames = 0
        self.reads = 0
        self.headers_done = False
        self.status = 0
        self.connected = asyncio.get_running_loop().create_future()
        self.closed = False
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]  # (uvloop's is no subclass)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        if not self.headers_done:
            head, sep, data = data.partition(b"\r\n\r\n")
            if not sep:
                return
            self.headers_done = True
            self.status = int(head.split(b" ", 2)[1])
            if not self.connected.done():
                self.connected.set_result(self.status)
        # One "data:" line per event; a read may split it, so the last 5 bytes (one short
        # of the pattern, which so cannot match twice) are carried to the next read.
        self.reads += 1
        joined = self._tail + data
        self.frames += joined.count(b"\ndata:")
        self._tail = joined[-5:]
        if self.sample:
            for stamp in _STAMP.findall(data):
                self.latencies.append(now - int(stamp))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.connected.done():
            self.connected.set_result(0)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--sample", type=int, default=100, help="connections timing latency")
    parser.add_argument("--ready-file", help="touched once every connection has its headers")
    parser.add_argument("--start-file", help="counting starts when this file appears")
    parser.add_argument("--header", action="append", default=[])
    args = parser.parse_args()

    loop = asyncio.get_running_loop()
    extra = "".join(f"{h}\r\n" for h in args.header)
    latencies: list[int] = []
    subscribers: list[Subscriber] = []
    for i in range(args.subscribers):
        # "{i}" in the path: each subscriber its own (a filter per subscriber, say).
        request = (
            f"GET {args.path.replace('{i}', str(i))} HTTP/1.1\r\nHost: {args.host}:{args.port}"
            f"\r\nAccept: text/event-stream\r\n{extra}\r\n"
        ).encode()
        sub = Subscriber(request, i < args.sample, latencies)
        await loop.create_connection(lambda s=sub: s, args.host, args.port)  # type: ignore[misc]
        subscribers.append(sub)
    statuses = await asyncio.gather(*(s.connected for s in subscribers))
    if args.ready_file:
        Path(args.ready_file).touch()
    if args.start_file:
        while not Path(args.start_file).exists():
            await asyncio.sleep(0.01)
    for s in subscribers:
        s.frames = s.reads = 0
    latencies.clear()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    await asyncio.sleep(args.seconds)
    elapsed = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    ms = sorted(v / 1e6 for v in latencies)

    def pct(p: float) -> float | None:
        return round(ms[min(len(ms) - 1, int(len(ms) * p))], 2) if ms else None

    json.dump(
        {
            "subscribers": args.subscribers,
            "connected": sum(1 for s in statuses if s == 200),
            "still_open": sum(1 for s in subscribers if not s.closed),
            "frames": sum(s.frames for s in subscribers),
            "reads": sum(s.reads for s in subscribers),
            "seconds": round(elapsed, 3),
            "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": ms[-1] if ms else None},
            "latency_samples": len(ms),
            "cpu_seconds": round(
                (cpu_after.ru_utime - cpu_before.ru_utime)
                + (cpu_after.ru_stime - cpu_before.ru_stime),
                3,
            ),
        },
        sys.stdout,
    )


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
