"""Backfill: a captured table's existing rows as `read` events, exact under concurrent
writes. Replaying the topic from seq 1 (read/insert/update as upserts, delete, truncate)
must give the table exactly, whatever the writers did while the backfill read."""

from __future__ import annotations

import asyncio
import json
import os
import random
from typing import Any

import asyncpg
import pytest

from changefeed.core import backfill
from tests.support import changefeed, new_topic, wait_for

SEED = int(os.environ.get("CHANGEFEED_TEST_SEED", random.randrange(1 << 30)))


async def _sequence_all(db: asyncpg.Connection) -> None:
    """Number everything in the inbox (no service here: the sequencer step itself)."""
    for _ in range(10_000):
        if not (await db.fetchrow("SELECT * FROM changefeed.sequence(10000)"))["consumed"]:
            return
    raise AssertionError("the inbox did not drain")


async def _rebuilt(db: asyncpg.Connection, topic: str) -> dict[str, Any]:
    """The table as the topic's events say it is, by key."""
    state: dict[str, Any] = {}
    rows = await db.fetch(
        "SELECT type, data FROM changefeed.events WHERE topic = $1 ORDER BY seq", topic
    )
    for row in rows:
        event = json.loads(row["data"])
        if row["type"] == "truncate":
            state.clear()
            continue
        key = json.dumps(event["key"], sort_keys=True)
        if row["type"] in ("insert", "update", "read"):
            state[key] = event["new"]
        elif row["type"] == "delete":
            state.pop(key, None)
    return state


async def _table(db: asyncpg.Connection, table: str) -> dict[str, Any]:
    """The table's rows by key, without the column the capture excludes."""
    rows = await db.fetch(f"SELECT to_jsonb(t) - 'secret' AS row FROM {table} t")
    found = {}
    for r in rows:
        row = json.loads(r["row"])
        found[json.dumps({"id": row["id"], "part": row["part"]}, sort_keys=True)] = row
    return found


async def _writer(url: str, table: str, rng: random.Random, stop: asyncio.Event) -> int:
    """Random transactions on the table until ``stop``: updates, deletes, inserts, key
    changes, several rows at once, rollbacks."""
    conn = await asyncpg.connect(url)
    done = 0
    try:
        while not stop.is_set():
            try:
                async with conn.transaction():
                    for _ in range(rng.randint(1, 4)):
                        ident = rng.randrange(0, 3000)
                        op = rng.random()
                        if op < 0.35:
                            await conn.execute(
                                f"UPDATE {table} SET v = v + 1, note = $2 WHERE id = $1",
                                ident,
                                f"w{rng.random():.6f}",
                            )
                        elif op < 0.45:  # only the excluded column: publishes nothing
                            await conn.execute(
                                f"UPDATE {table} SET secret = $2 WHERE id = $1",
                                ident,
                                f"s{rng.random():.6f}",
                            )
                        elif op < 0.6:
                            await conn.execute(f"DELETE FROM {table} WHERE id = $1", ident)
                        elif op < 0.8:
                            await conn.execute(
                                f"INSERT INTO {table} (id, part, v, note) "
                                "VALUES ($1, 'a', 0, 'new') ON CONFLICT DO NOTHING",
                                rng.randrange(3000, 6000),
                            )
                        else:  # a key change: out of or into the range being read
                            await conn.execute(
                                f"UPDATE {table} SET id = $2 WHERE id = $1 AND part = 'a' AND "
                                f"NOT EXISTS (SELECT 1 FROM {table} WHERE id = $2 AND part = 'a')",
                                ident,
                                rng.randrange(0, 6000),
                            )
                    if rng.random() < 0.1:
                        raise _Rollback
                done += 1
            except _Rollback:
                pass
            except (asyncpg.DeadlockDetectedError, asyncpg.UniqueViolationError):
                pass  # two writers moved rows onto the same key: that transaction is undone
            await asyncio.sleep(0)
    finally:
        await conn.close()
    return done


class _Rollback(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("truncate", [False, True], ids=["writes", "writes-and-truncate"])
async def test_backfill_under_concurrent_writes_rebuilds_the_table(
    database: str, truncate: bool
) -> None:
    rng = random.Random(SEED)
    table, topic = "public.orders_bf", new_topic("bf")
    db = await asyncpg.connect(database)
    try:
        await db.execute(
            f"CREATE TABLE {table} (id int, part text, v int NOT NULL, note text, "
            "secret text, PRIMARY KEY (id, part))"
        )
        # Rows from before the capture: only the backfill can publish them.
        await db.execute(
            f"INSERT INTO {table} SELECT i, 'a', 0, 'old', 'x' FROM generate_series(0, 2999) i"
        )
        await db.fetchval(
            "SELECT changefeed.capture($1::regclass, $2, exclude => '{secret}')", table, topic
        )
        stop = asyncio.Event()
        writers = [
            asyncio.create_task(_writer(database, table, random.Random(rng.random()), stop))
            for _ in range(4)
        ]
        async with asyncio.timeout(120):
            reading = asyncio.create_task(
                backfill.backfill(database, table, chunk_rows=rng.choice([7, 50, 200]))
            )
            if truncate:
                await asyncio.sleep(0.05)  # pacing: somewhere inside the backfill
                await db.execute(f"TRUNCATE {table}")
            read = await reading
            stop.set()
            transactions = await asyncio.gather(*writers)
        assert read > 0 and min(transactions) > 0, (read, transactions)
        await _sequence_all(db)
        rebuilt, actual = await _rebuilt(db, topic), await _table(db, table)
        assert rebuilt == actual, f"seed {SEED}: {len(rebuilt)} rebuilt, {len(actual)} rows"
        leaked = await db.fetchval(
            "SELECT count(*) FROM changefeed.events WHERE topic = $1 "
            "AND (data->'new' ? 'secret' OR data->'old' ? 'secret')",
            topic,
        )
        assert leaked == 0
    finally:
        await db.close()


async def test_backfill_from_the_command_line(database: str) -> None:
    db = await asyncpg.connect(database)
    try:
        await db.execute("CREATE TABLE public.tenants (id int PRIMARY KEY, name text)")
        await db.execute(
            "INSERT INTO public.tenants SELECT i, 't' || i FROM generate_series(1, 25) i"
        )
        env = {"CHANGEFEED_DATABASE_URL": database}
        captured = changefeed(
            "capture", "public.tenants", "--topic", "tenants", "--backfill", env=env
        )
        assert captured.returncode == 0, captured.stderr
        assert captured.stdout.strip() == "25 rows published as read events on tenants"
        again = changefeed("backfill", "public.tenants", "--where", "id <= 5", "--json", env=env)
        assert again.returncode == 0 and json.loads(again.stdout) == {"read": 5}
        await _sequence_all(db)
        events = await db.fetch(
            "SELECT type, data FROM changefeed.events WHERE topic = 'tenants' ORDER BY seq"
        )
        assert len(events) == 30 and {e["type"] for e in events} == {"read"}
        first = json.loads(events[0]["data"])
        assert first == {
            "table": "public.tenants",
            "op": "read",
            "key": {"id": 1},
            "new": {"id": 1, "name": "t1"},
        }
        for argv, message in (
            (["backfill", "public.nosuch"], "does not exist"),
            (["backfill", "public.tenants", "--where", "nosuch > 1"], "cannot read"),
            (["backfill", "changefeed.events"], "is not captured"),
        ):
            result = changefeed(*argv, env=env)
            assert result.returncode == 1 and message in result.stderr, (argv, result.stderr)
    finally:
        await db.close()


async def test_excluded_columns_appear_in_no_event(database: str) -> None:
    db = await asyncpg.connect(database)
    env = {"CHANGEFEED_DATABASE_URL": database}
    try:
        await db.execute(
            "CREATE TABLE public.users (id int PRIMARY KEY, name text, password_hash text)"
        )
        await db.execute("INSERT INTO public.users VALUES (1, 'ann', 'h1')")
        captured = changefeed(
            "capture", "public.users", "--exclude", "password_hash", "--backfill", env=env
        )
        assert captured.returncode == 0, captured.stderr
        await db.execute("UPDATE public.users SET password_hash = 'h2' WHERE id = 1")  # nothing
        await db.execute("UPDATE public.users SET name = 'anne', password_hash = 'h3'")
        await db.execute("INSERT INTO public.users VALUES (2, 'bob', 'h4')")
        await db.execute("DELETE FROM public.users WHERE id = 2")
        await _sequence_all(db)
        events = [
            (r["type"], json.loads(r["data"]))
            for r in await db.fetch(
                "SELECT type, data FROM changefeed.events WHERE topic = 'users' ORDER BY seq"
            )
        ]
        assert [t for t, _ in events] == ["read", "update", "insert", "delete"]
        assert events[1][1]["new"] == {"id": 1, "name": "anne"}
        assert events[1][1]["old"] == {"id": 1, "name": "ann"}
        assert all("password_hash" not in json.dumps(e) for _, e in events)
        # Refused, and nothing half-declared: the capture stays as it was.
        for argv, message in (
            (["--exclude", "id"], "is a key column"),
            (["--exclude", "nosuch"], "has no column"),
        ):
            result = changefeed("capture", "public.users", *argv, env=env)
            assert result.returncode == 1 and message in result.stderr, result.stderr
        listed = changefeed("capture", "--list", "--json", env=env)
        (users,) = json.loads(listed.stdout)["captures"]
        assert (users["table"], users["topic"], users["key"], users["excluded"]) == (
            "public.users",
            "users",
            ["id"],
            ["password_hash"],
        )
        assert changefeed("capture", "--list", env=env).stdout.strip() == (
            "public.users -> users (key id; excluded password_hash)"
        )
    finally:
        await db.close()


async def test_every_chunk_reads_through_the_primary_key(database: str) -> None:
    """Chunks are key ranges read through the primary key's index, each from where the last
    one ended: a chunk that scanned the table, or the index from its start, would make a
    backfill of n rows read n²/chunk of them."""
    db = await asyncpg.connect(database)
    try:
        await db.execute(
            "CREATE TABLE public.wide (id int, part text, v int, PRIMARY KEY (id, part))"
        )
        await db.execute(
            "INSERT INTO public.wide SELECT i, 'a', 0 FROM generate_series(1, 50000) i"
        )
        await db.execute("ANALYZE public.wide")
        await db.fetchval("SELECT changefeed.capture('public.wide')")
        counts = (
            "SELECT seq_scan, idx_scan, seq_tup_read + (SELECT sum(i.idx_tup_read) "
            "FROM pg_stat_user_indexes i WHERE i.relid = t.relid) AS tuples "
            "FROM pg_stat_user_tables t "
            "WHERE t.relid = 'public.wide'::regclass"
        )
        # This session's own counts (the setup's) reach the statistics first.
        await db.execute("SELECT pg_stat_force_next_flush()")
        await db.execute("SELECT 1")
        await db.execute("SELECT pg_stat_clear_snapshot()")
        before = await db.fetchrow(counts)
        assert await backfill.backfill(database, "public.wide", chunk_rows=5000) == 50000
        # The backfill's session has ended, so its counts are flushed; read them afresh.
        after = before
        for _ in range(100):
            await db.execute("SELECT pg_stat_clear_snapshot()")
            after = await db.fetchrow(counts)
            if after["idx_scan"] >= before["idx_scan"] + 20:
                break
            await asyncio.sleep(0.05)
        assert after["idx_scan"] >= before["idx_scan"] + 20, (before, after)
        assert after["seq_scan"] == before["seq_scan"], (before, after)
        # Each row is read about twice (finding the chunk's end, then reading the chunk);
        # scanning from the start each time would read about 5.5 times as many here.
        assert after["tuples"] - before["tuples"] <= 3 * 50000, (before, after)
    finally:
        await db.close()


async def test_a_chunk_aborted_by_a_deadlock_is_read_again(database: str) -> None:
    """A writer that holds row 2 and then wants row 1 while a chunk holds row 1 and waits
    for row 2: PostgreSQL aborts one of them (the chunk, which waited first). The chunk is
    read again after the writer commits, with the writer's values."""
    db = await asyncpg.connect(database)
    writer = await asyncpg.connect(database)
    try:
        await db.execute("CREATE TABLE public.pair (id int PRIMARY KEY, v int)")
        await db.execute("INSERT INTO public.pair VALUES (1, 0), (2, 0), (3, 0)")
        await db.fetchval("SELECT changefeed.capture('public.pair')")
        transaction = writer.transaction()
        await transaction.start()
        await writer.execute("UPDATE public.pair SET v = 1 WHERE id = 2")
        reading = asyncio.create_task(backfill.backfill(database, "public.pair"))

        async def chunk_waits() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name "
                    "LIKE '%backfill%' AND wait_event_type = 'Lock'"
                )
            )

        await wait_for(chunk_waits, timeout=10)
        # The cycle: PostgreSQL's deadlock check (after deadlock_timeout, 1 s) ends it.
        await writer.execute("UPDATE public.pair SET v = 1 WHERE id = 1")
        await transaction.commit()
        async with asyncio.timeout(30):
            assert await reading == 3
        await _sequence_all(db)
        rebuilt = await _rebuilt(db, "pair")
        assert sorted((r["id"], r["v"]) for r in rebuilt.values()) == [(1, 1), (2, 1), (3, 0)]
    finally:
        await writer.close()
        await db.close()
