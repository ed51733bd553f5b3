"""A large topic sequenced, exported and verified, with the time of each step.

    .venv/bin/python bench/audit.py [--events 1000000]

Starts a throwaway PostgreSQL cluster and a real `changefeed serve` process, fills the inbox
in one SQL statement (so that the sequencer's rate is what is measured), then times: the
sequencer numbering and chaining every event, the NDJSON export over HTTP (streamed to
/dev/null, counted), and `changefeed verify` recomputing the chain.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from changefeed.ops import migrate
from changefeed.ops.cluster import Cluster, free_port
from tests.support import REPO, Service, create_database, private_tempdir


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    n = args.events

    cluster = Cluster(private_tempdir("changefeed-bench-"), tcp_port=free_port())
    await asyncio.to_thread(cluster.ensure)
    url = await create_database(cluster.url_for("postgres"))
    await asyncio.to_thread(migrate.upgrade, url)
    service = Service(
        url, env={"CHANGEFEED_SEQUENCER_BATCH_SIZE": os.environ.get("BATCH", "5000")}
    ).start()
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        await conn.execute(
            "INSERT INTO changefeed.inbox (topic, type, data) "
            "SELECT 'audit', 'order.created', jsonb_build_object('n', i, 'note', 'x') "
            "FROM generate_series(1, $1) AS i",
            n,
        )
        filled = time.perf_counter() - started
        started = time.perf_counter()
        head = "SELECT coalesce(max(head), 0) FROM changefeed.topics WHERE topic = 'audit'"
        while await conn.fetchval(head) < n:
            await asyncio.sleep(0.2)
        sequenced = time.perf_counter() - started

        started = time.perf_counter()
        lines = 0
        size = 0
        async with (
            httpx.AsyncClient(base_url=service.base_url, timeout=None) as client,
            client.stream(
                "GET", "/feeds/audit/events", headers={"Accept": "application/x-ndjson"}
            ) as response,
        ):
            async for chunk in response.aiter_raw():
                lines += chunk.count(b"\n")
                size += len(chunk)
        exported = time.perf_counter() - started
        assert lines == n, lines

        env = {k: v for k, v in os.environ.items() if not k.startswith("CHANGEFEED_")}
        env["CHANGEFEED_DATABASE_URL"] = url
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "changefeed", "verify", "audit"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        verified = time.perf_counter() - started
        assert result.returncode == 0, result.stdout + result.stderr

        print(f"events: {n}")
        print(f"inbox filled by one INSERT: {filled:.1f} s")
        print(f"sequenced and chained:      {sequenced:.1f} s ({n / sequenced:,.0f} events/s)")
        rate = f"{n / exported:,.0f} events/s, {size / 2**20:.0f} MiB"
        print(f"exported as NDJSON:         {exported:.1f} s ({rate})")
        print(f"verified (changefeed verify): {verified:.1f} s ({n / verified:,.0f} events/s)")
    finally:
        await conn.close()
        service.stop()
        cluster.destroy()


if __name__ == "__main__":
    asyncio.run(main())
