"""What writing costs PostgreSQL per event: capture triggers, the inbox's check, publish().

    .venv/bin/python bench/writes.py [--rows 50000]

Starts a throwaway PostgreSQL cluster and measures, in one database at the current
revision and one at revision 0007 (before the security hardening of 0008), side by side:

- a multi-row INSERT and UPDATE of a captured table, per row, against the same on a table
  without capture;
- inbox appends as the HTTP path makes them (1000 events per statement), per event, of
  data without and with zeros;
- `changefeed.publish()`, one event per call, in one transaction, per call.

Time is measured in the database session itself (wall clock of each statement), with
nothing else running; compare the two columns of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from changefeed.ops import migrate
from changefeed.ops.cluster import free_port
from tests.support import create_database, temporary_cluster

DATA = '{"id": %d, "name": "customer %d", "amount": %d.5, "tags": ["a", "b"]}'
# The same with zeros, which the inbox's check prints one by one (a zero keeps its scale).
ZEROS = '{"id": %d, "name": "customer %d", "amount": %d.5, "qty": 0, "discount": 0.0}'
APPEND = """
INSERT INTO changefeed.inbox (topic, type, data, event_id)
SELECT p, t, d::jsonb, i FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
    AS u(p, t, d, i)
"""


async def timed(conn: asyncpg.Connection, statement: str, *args: object) -> float:
    started = time.perf_counter()
    await conn.execute(statement, *args)
    return time.perf_counter() - started


async def measure(url: str, rows: int) -> dict[str, float]:
    conn = await asyncpg.connect(url)
    try:
        for table in ("plain", "captured"):
            await conn.execute(
                f"CREATE TABLE {table} (id int PRIMARY KEY, name text, qty int, "
                "price numeric, tags text[], at timestamptz DEFAULT now())"
            )
        await conn.fetchval("SELECT changefeed.capture('captured')")
        out: dict[str, float] = {}
        for table in ("plain", "captured"):
            insert = await timed(
                conn,
                f"INSERT INTO {table} (id, name, qty, price, tags) SELECT g, 'item ' || g, "
                "g % 100, g * 1.25, ARRAY['a', 'b'] FROM generate_series(1, $1) g",
                rows,
            )
            update = await timed(conn, f"UPDATE {table} SET qty = qty + 1")
            out[f"{table}_insert_us"] = insert / rows * 1e6
            out[f"{table}_update_us"] = update / rows * 1e6
        for key, shape in (("inbox_append_us", DATA), ("inbox_append_zeros_us", ZEROS)):
            await conn.execute("DELETE FROM changefeed.inbox")
            data = [shape % (i, i, i) for i in range(rows)]
            took = 0.0
            for start in range(0, rows, 1000):
                part = data[start : start + 1000]
                n = len(part)
                took += await timed(conn, APPEND, ["t"] * n, ["x"] * n, part, [None] * n)
            out[key] = took / rows * 1e6
        calls = min(rows, 10_000)
        started = time.perf_counter()
        await conn.execute(
            f"DO $$ BEGIN FOR i IN 1..{calls} LOOP PERFORM changefeed.publish('p', 'x', "
            "jsonb_build_object('id', i, 'name', 'customer', 'tags', jsonb_build_array('a'))); "
            "END LOOP; END $$"
        )
        out["publish_call_us"] = (time.perf_counter() - started) / calls * 1e6
        return out
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50_000)
    args = parser.parse_args()
    with temporary_cluster("changefeed-bench-", tcp_port=free_port()) as cluster:
        results = {}
        for revision in ("0007", "head"):
            url = await create_database(cluster.url_for("postgres"))
            await asyncio.to_thread(migrate.upgrade, url, revision=revision)
            results[revision] = await measure(url, args.rows)
        print(f"{'µs per row or call':<28} {'0007':>8} {'head':>8}")
        for key in results["head"]:
            print(f"{key:<28} {results['0007'][key]:>8.1f} {results['head'][key]:>8.1f}")


if __name__ == "__main__":
    asyncio.run(main())
