"""Backfill: a captured table's existing rows as `read` events, exact under concurrent
writes. Replaying the topic from seq 1 (read/insert/update as upserts, delete, truncate)
must give the table exactly, whatever the writers did while the backfill read."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from changefeed.core import backfill
from changefeed.core.capture import captures
from tests.support import REPO, Service, changefeed, metrics, new_topic, url_as, wait_for

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


async def _table(db: asyncpg.Connection, table: str, where: str = "true") -> dict[str, Any]:
    """The table's rows by key (those satisfying ``where``), without the column the capture
    excludes."""
    rows = await db.fetch(f"SELECT to_jsonb(t) - 'secret' AS row FROM {table} t WHERE {where}")
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


# A row filter that writers' updates cross both ways, on a published column and on the
# excluded one (an update of only that column can then be an insert or a delete).
ROW_FILTER = "v % 3 <> 1 AND coalesce(secret, '') < 's0.7'"


@pytest.mark.slow
@pytest.mark.parametrize(
    "truncate, row_filter",
    [(False, None), (True, None), (False, ROW_FILTER), (True, ROW_FILTER)],
    ids=["writes", "writes-and-truncate", "row-filter", "row-filter-and-truncate"],
)
async def test_backfill_under_concurrent_writes_rebuilds_the_table(
    database: str, truncate: bool, row_filter: str | None
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
            f"INSERT INTO {table} SELECT i, 'a', i, 'old', 's0.1' FROM generate_series(0, 2999) i"
        )
        await db.fetchval(
            "SELECT changefeed.capture($1::regclass, $2, exclude => '{secret}', row_filter => $3)",
            table,
            topic,
            row_filter,
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
                # Once the first chunks have committed: somewhere inside the backfill.
                async def begun() -> bool:
                    return bool(
                        await db.fetchval(
                            "SELECT count(*) FROM changefeed.backfills WHERE rows_read > 0"
                        )
                    )

                await wait_for(begun, timeout=30, interval=0.005)
                await db.execute(f"TRUNCATE {table}")
            read = await reading
            stop.set()
            transactions = await asyncio.gather(*writers)
        assert read > 0 and min(transactions) > 0, (read, transactions)
        await _sequence_all(db)
        rebuilt, actual = await _rebuilt(db, topic), await _table(db, table, row_filter or "true")
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
            (["backfill", "public.tenants", "--where", "nosuch > 1"], "invalid row filter"),
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
        assert changefeed("capture", "--list", env=env).stdout.startswith(
            "public.users -> users (key id; excluded password_hash)\n  backfill done: 1 rows"
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


async def test_backfill_from_sql_commits_chunk_by_chunk(database: str) -> None:
    """``CALL changefeed.backfill(...)``: the same procedure as the command line's, refused
    inside a transaction block (it commits after each chunk) before it publishes anything."""
    db = await asyncpg.connect(database)
    try:
        await db.execute("CREATE TABLE public.notes (id int PRIMARY KEY, body text, tenant int)")
        await db.execute(
            "INSERT INTO public.notes SELECT i, 'n' || i, i % 2 FROM generate_series(1, 30) i"
        )
        await db.fetchval("SELECT changefeed.capture('public.notes', row_filter => 'tenant = 1')")
        with pytest.raises(asyncpg.InvalidTransactionTerminationError):
            async with db.transaction():
                await db.execute("CALL changefeed.backfill('public.notes')")
        assert await db.fetchval("SELECT count(*) FROM changefeed.inbox") == 0
        assert await db.fetchval("SELECT count(*) FROM changefeed.backfills") == 0
        # The capture's filter and the call's: odd ids of tenant 1 up to 10.
        published = await db.fetchval(
            "CALL changefeed.backfill('public.notes', 'id <= 10', chunk_rows => 2)"
        )
        assert published == 5
        run = await db.fetchrow("SELECT * FROM changefeed.backfills")
        assert (run["state"], run["rows_read"], run["row_filter"]) == ("done", 5, "id <= 10")
        assert run["rows_estimate"] is not None and run["finished_at"] is not None
        await _sequence_all(db)
        keys = await db.fetch(
            "SELECT data->'key'->>'id' AS id FROM changefeed.events WHERE topic = 'notes' "
            "ORDER BY seq"
        )
        assert [int(k["id"]) for k in keys] == [1, 3, 5, 7, 9]
        for call, error in [
            ("CALL changefeed.backfill('public.notes', chunk_rows => 0)", "at least 1"),
            ("CALL changefeed.backfill('changefeed.inbox')", "is not captured"),
            ("CALL changefeed.backfill('public.notes', 'body')", "must be type boolean"),
        ]:
            with pytest.raises(asyncpg.PostgresError, match=error):
                await db.execute(call)
    finally:
        await db.close()


async def test_operators_see_a_backfills_progress_and_its_end(database: str) -> None:
    """``capture --list`` and the service's metrics show the latest backfill of each table:
    running with its count, then done; failed with the error; interrupted when the
    command was killed (and its session then ends, so no backfill runs without it)."""
    db = await asyncpg.connect(database)
    env = {"CHANGEFEED_DATABASE_URL": database}
    blocker = await asyncpg.connect(database)
    try:
        await db.execute("CREATE TABLE public.parts (id int PRIMARY KEY, v int)")
        await db.execute("INSERT INTO public.parts SELECT i, i FROM generate_series(1, 100) i")
        await db.execute("ANALYZE public.parts")
        await db.fetchval("SELECT changefeed.capture('public.parts')")

        async def latest() -> dict[str, Any]:
            run: dict[str, Any] = (await captures(db))[0]["backfill"] or {}
            return run

        async def published(rows: int) -> bool:
            return (await latest()).get("rows") == rows

        # A writer holds row 60: the backfill publishes its first chunks, then waits.
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("UPDATE public.parts SET v = -1 WHERE id = 60")
        command = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "changefeed", "backfill", "public.parts", "--chunk-rows", "20"],
            env={**{k: v for k, v in os.environ.items() if not k.startswith("CHANGEFEED_")}, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await wait_for(lambda: published(40), timeout=30)
            running = await latest()
            assert running["state"] == "running" and running["estimate"] == 100
            with Service(database) as svc:
                async with httpx.AsyncClient(base_url=svc.base_url) as client:
                    samples = await metrics(client)
                    assert samples["changefeed_backfill_rows"] == 40
                    assert samples["changefeed_backfill_rows_estimate"] == 100
                    assert samples["changefeed_backfill_running"] == 1
            command.kill()
            async with asyncio.timeout(10):
                await command.wait()

            async def gone() -> bool:
                return not await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE application_name = 'changefeed:backfill'"
                )

            # The server notices the lost client (client_connection_check_interval).
            await wait_for(gone, timeout=15)
        finally:
            if command.returncode is None:
                command.kill()
            await transaction.rollback()
        interrupted = await latest()
        assert interrupted["state"] == "interrupted" and interrupted["rows"] == 40
        assert "40 rows" in changefeed("capture", "--list", env=env).stdout
        # A condition that fails on some row fails the run, which says why.
        failed = changefeed("backfill", "public.parts", "--where", "100 / (v - 50) <> 0", env=env)
        assert failed.returncode == 1 and "division by zero" in failed.stderr
        failure = await latest()
        assert failure["state"] == "failed" and "division by zero" in failure["error"]
        assert changefeed("backfill", "public.parts", env=env).returncode == 0
        done = await latest()
        assert done["state"] == "done" and done["rows"] == 100
    finally:
        await blocker.close()
        await db.close()


async def test_a_role_with_the_documented_grants_may_backfill(database: str) -> None:
    """docs/operations.md's grants, run as written, are enough for a role that is not the
    owner; without the table's UPDATE it is refused; with them, it can still publish
    nothing but the reads of a running backfill of a table it may read."""
    operations = (REPO / "docs" / "operations.md").read_text()
    grants = operations.split("A role other than changefeed's owner needs:")[1]
    grants = grants.split("```sql\n")[1].split("```")[0]
    role = f"backfiller_{uuid.uuid4().hex[:8]}"
    db = await asyncpg.connect(database)
    try:
        await db.execute(
            f"""
            CREATE SCHEMA app;
            CREATE TABLE app.orders (id int PRIMARY KEY, v int);
            CREATE TABLE app.payroll (id int PRIMARY KEY, salary int);
            INSERT INTO app.orders SELECT i, i FROM generate_series(1, 10) i;
            SELECT changefeed.capture('app.orders'), changefeed.capture('app.payroll');
            CREATE ROLE {role} LOGIN;
            GRANT USAGE ON SCHEMA app TO {role};
            """
        )
        await db.execute(grants.replace("backfiller", role))
        await db.execute(f"REVOKE UPDATE ON app.orders FROM {role}")
        with pytest.raises(backfill.BackfillError, match=r"may not read and lock app\.orders"):
            await backfill.backfill(url_as(database, role), "app.orders")
        await db.execute(f"GRANT UPDATE ON app.orders TO {role}")
        assert await backfill.backfill(url_as(database, role), "app.orders") == 10
        run = await db.fetchval("SELECT id FROM changefeed.backfills WHERE state = 'done'")
        other = await asyncpg.connect(url_as(database, role))
        try:
            forged = uuid.uuid4()
            for attempt, error in [
                (
                    "SELECT changefeed.publish('payroll', 'insert', '{\"salary\": 1}')",
                    asyncpg.InsufficientPrivilegeError,
                ),
                (
                    "SELECT changefeed.backfill_begin('app.payroll', NULL, 0, gen_random_uuid())",
                    asyncpg.InsufficientPrivilegeError,
                ),
                (
                    f"SELECT changefeed.backfill_publish({run}, '{forged}', ARRAY['{{}}'::jsonb])",
                    asyncpg.InsufficientPrivilegeError,
                ),
            ]:
                with pytest.raises(error):
                    await other.execute(attempt)
            await other.execute(
                "SELECT changefeed.backfill_report($1, $2, NULL, 5, 'running', NULL)",
                run,
                forged,
            )
        finally:
            await other.close()
        row = await db.fetchrow("SELECT state, rows_read FROM changefeed.backfills")
        assert (row["state"], row["rows_read"]) == ("done", 10)
        assert await db.fetchval("SELECT count(*) FROM changefeed.inbox") == 10
    finally:
        await db.close()


async def test_what_review_found_is_refused_or_exact(database: str) -> None:
    """A filter that closes its parenthesis reads each row once; a column named like the
    chunk's alias; a float key printed rounded; another isolation level."""
    db = await asyncpg.connect(database)
    try:
        await db.execute(
            """
            CREATE TABLE public.t (id int PRIMARY KEY, tenant int, r jsonb);
            INSERT INTO public.t SELECT i, i % 3, '{"x": 1}' FROM generate_series(1, 8) i;
            CREATE TABLE public.f (id float8 PRIMARY KEY);
            INSERT INTO public.f SELECT 1 + i * 2.220446049250313e-16
                FROM generate_series(0, 9) i;
            SELECT changefeed.capture('public.t', row_filter => 'tenant = 1) OR (tenant = 2'),
                   changefeed.capture('public.f');
            """
        )
        assert await backfill.backfill(database, "public.t", chunk_rows=2) == 6
        assert (
            await db.fetchval(
                "CALL changefeed.backfill('public.t', 'true) OR (true', chunk_rows => 2)"
            )
            == 6
        )
        await _sequence_all(db)
        new = await db.fetch(
            "SELECT data->'new' AS new FROM changefeed.events WHERE topic = 't' ORDER BY seq"
        )
        assert [json.loads(n["new"])["id"] for n in new] == [1, 2, 4, 5, 7, 8] * 2
        assert json.loads(new[0]["new"]) == {"id": 1, "tenant": 1, "r": {"x": 1}}
        await db.execute("SET extra_float_digits = 0")
        async with asyncio.timeout(30):
            assert await db.fetchval("CALL changefeed.backfill('public.f', chunk_rows => 3)") == 10
        await db.execute("SET default_transaction_isolation = 'repeatable read'")
        with pytest.raises(asyncpg.PostgresError, match="runs in READ COMMITTED"):
            await db.execute("CALL changefeed.backfill('public.t')")
    finally:
        await db.close()


async def test_a_capture_declared_again_during_a_backfill_fails_it(database: str) -> None:
    """Excluding a column while a backfill runs: the backfill stops at the declaration, so
    no read event after it carries the column, and it fails saying to run it again."""
    db = await asyncpg.connect(database)
    blocker = await asyncpg.connect(database)
    declarer = await asyncpg.connect(database)
    try:
        await db.execute("CREATE TABLE public.people (id int PRIMARY KEY, secret text)")
        await db.execute("INSERT INTO public.people SELECT i, 's' FROM generate_series(1, 100) i")
        await db.fetchval("SELECT changefeed.capture('public.people')")
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("UPDATE public.people SET secret = 't' WHERE id = 60")
        reading = asyncio.create_task(backfill.backfill(database, "public.people", chunk_rows=20))

        async def waiting(pid: int, rows: int) -> bool:
            return bool(
                await db.fetchval(
                    "SELECT (SELECT wait_event_type = 'Lock' FROM pg_stat_activity "
                    "WHERE pid = $1) AND (SELECT rows_read = $2 FROM changefeed.backfills)",
                    pid,
                    rows,
                )
            )

        async def runner_waits() -> bool:
            pid = await db.fetchval("SELECT runner_pid FROM changefeed.backfills")
            return pid is not None and await waiting(pid, 40)

        await wait_for(runner_waits, timeout=15)
        declaring = asyncio.create_task(
            declarer.fetchval("SELECT changefeed.capture('public.people', exclude => '{secret}')")
        )
        await wait_for(lambda: waiting(declarer.get_server_pid(), 40), timeout=15)
        await transaction.rollback()
        async with asyncio.timeout(30):
            with pytest.raises(backfill.BackfillError, match="declared again"):
                await reading
            await declaring
        run = await db.fetchrow("SELECT state, rows_read FROM changefeed.backfills")
        assert (run["state"], run["rows_read"]) == ("failed", 60)
        await _sequence_all(db)
        reads = await db.fetch(
            "SELECT data FROM changefeed.events WHERE topic = 'people' AND type = 'read'"
        )
        assert len(reads) == 60
    finally:
        await declarer.close()
        await blocker.close()
        await db.close()
