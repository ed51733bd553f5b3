"""Change-data capture: every change of a captured table is an event in the writer's
transaction, and replaying the topic from the start rebuilds the table exactly."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess

import asyncpg
import pytest

from tests.support import apply_changes, changefeed, wait_for

SEED = int(os.environ.get("CHANGEFEED_TEST_SEED", random.randrange(1 << 30)))


def _changefeed(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return changefeed(*args, env={"CHANGEFEED_DATABASE_URL": url}, timeout=60)


async def _drained(db: asyncpg.Connection) -> None:
    async def empty() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM changefeed.inbox") == 0)

    await wait_for(empty, timeout=30)


async def test_capture_cli_and_event_shape(service: object, module_database: str) -> None:
    db = await asyncpg.connect(module_database)
    try:
        await db.execute("CREATE SCHEMA app; CREATE TABLE app.shape (id int PRIMARY KEY, v text)")
        result = _changefeed(module_database, "capture", "app.shape", "--topic", "shape.changes")
        assert result.returncode == 0, result.stderr
        assert "shape.changes" in result.stdout
        await db.execute(
            "INSERT INTO app.shape VALUES (1, 'a'); UPDATE app.shape SET v = 'b' WHERE id = 1;"
            "DELETE FROM app.shape; TRUNCATE app.shape"
        )
        async with db.transaction():
            await db.execute("INSERT INTO app.shape VALUES (2, 'kept')")
        await db.execute("BEGIN; INSERT INTO app.shape VALUES (3, 'x'); ROLLBACK")
        await _drained(db)
        events = [
            (r["type"], json.loads(r["data"]))
            for r in await db.fetch(
                "SELECT type, data::text FROM changefeed.events WHERE topic = 'shape.changes' "
                "ORDER BY seq"
            )
        ]
        table = "app.shape"
        one = {"id": 1}
        assert events[:4] == [
            ("insert", {"table": table, "op": "insert", "key": one, "new": {"id": 1, "v": "a"}}),
            (
                "update",
                {
                    "table": table,
                    "op": "update",
                    "key": one,
                    "new": {"id": 1, "v": "b"},
                    "old": {"id": 1, "v": "a"},
                },
            ),
            ("delete", {"table": table, "op": "delete", "key": one, "old": {"id": 1, "v": "b"}}),
            ("truncate", {"table": table, "op": "truncate"}),
        ]
        # The committed insert of id 2 follows; the rolled-back id 3 never appears.
        assert [e[1]["key"] for e in events[4:]] == [{"id": 2}]

        assert _changefeed(module_database, "uncapture", "app.shape").returncode == 0
        await db.execute("INSERT INTO app.shape VALUES (4, 'uncaptured')")
        await _drained(db)
        count = await db.fetchval(
            "SELECT count(*) FROM changefeed.events WHERE topic = 'shape.changes'"
        )
        assert count == 5
    finally:
        await db.close()


async def test_capture_errors_are_clear(module_database: str) -> None:
    db = await asyncpg.connect(module_database)
    try:
        await db.execute(
            "CREATE TABLE nokey (x int); CREATE TABLE big (id int PRIMARY KEY, v text)"
        )
        result = _changefeed(module_database, "capture", "public.nokey")
        assert result.returncode == 1
        assert "no primary key" in result.stderr
        result = _changefeed(module_database, "capture", "public.missing")
        assert result.returncode == 1 and "missing" in result.stderr
        await db.fetchval("SELECT changefeed.capture('big')")
        with pytest.raises(asyncpg.ProgramLimitExceededError, match=r"event of public\.big"):
            await db.execute("INSERT INTO big VALUES (1, repeat('x', 70000))")
        assert await db.fetchval("SELECT count(*) FROM big") == 0  # the writer's statement failed
    finally:
        await db.close()


async def test_replay_rebuilds_a_table_after_a_random_concurrent_workload(
    service: object, module_database: str
) -> None:
    rng = random.Random(SEED)
    print(f"seed={SEED}")
    db = await asyncpg.connect(module_database)
    await db.execute(
        "CREATE TABLE items (id int PRIMARY KEY, name text, qty int, tags text[], "
        "price numeric(10, 2), seen timestamptz, meta jsonb)"
    )
    await db.fetchval("SELECT changefeed.capture('public.items', 'items.cdc')")

    async def worker(w: int, wrng: random.Random) -> tuple[int, int]:
        conn = await asyncpg.connect(module_database)
        committed = rolled_back = 0
        try:
            for _ in range(40):
                try:
                    async with conn.transaction():
                        for _ in range(wrng.randint(1, 4)):
                            op = wrng.random()
                            key = wrng.randint(1, 60)
                            if op < 0.45:
                                await conn.execute(
                                    "INSERT INTO items VALUES ($1, $2, $3, $4, $5, now(), $6) "
                                    "ON CONFLICT (id) DO UPDATE SET qty = items.qty + 1",
                                    key,
                                    f"item {key} by {w}",
                                    wrng.randint(0, 9),
                                    [f"t{wrng.randint(0, 3)}"],
                                    wrng.randint(0, 99999) / 100,
                                    json.dumps({"w": w, "nested": {"k": [1, None, "é"]}}),
                                )
                            elif op < 0.8:
                                await conn.execute(
                                    "UPDATE items SET qty = qty + $2, name = name || '!' "
                                    "WHERE id = $1",
                                    key,
                                    wrng.randint(1, 5),
                                )
                            elif op < 0.97:
                                await conn.execute("DELETE FROM items WHERE id = $1", key)
                            else:
                                # Re-key a row: the event's key is the old one.
                                await conn.execute(
                                    "UPDATE items SET id = id + 1000 WHERE id = $1", key
                                )
                        if wrng.random() < 0.3:
                            await asyncio.sleep(wrng.random() * 0.05)  # hold it open a while
                        if wrng.random() < 0.2:
                            raise _Rollback
                    committed += 1
                except _Rollback:
                    rolled_back += 1
                except (asyncpg.DeadlockDetectedError, asyncpg.UniqueViolationError):
                    rolled_back += 1
        finally:
            await conn.close()
        return committed, rolled_back

    try:
        results = await asyncio.gather(*(worker(w, random.Random(rng.random())) for w in range(4)))
        await db.execute("TRUNCATE items")  # a truncate mid-history, then more changes
        more = [worker(w, random.Random(rng.random())) for w in range(4)]
        results += await asyncio.gather(*more)
        await _drained(db)
        await db.execute("CREATE TABLE items_replayed (LIKE items INCLUDING ALL)")
        applied = await apply_changes(db, "items.cdc", "items_replayed")
        differences = await db.fetchval(
            "SELECT count(*) FROM ((TABLE items EXCEPT TABLE items_replayed) "
            "UNION ALL (TABLE items_replayed EXCEPT TABLE items)) d"
        )
        rows = await db.fetchval("SELECT count(*) FROM items")
        committed = sum(c for c, _ in results)
        rolled_back = sum(r for _, r in results)
        print(
            f"transactions committed={committed} rolled_back={rolled_back} "
            f"events_replayed={applied} rows={rows} differences={differences}"
        )
        assert rows > 0 and applied > rows
        assert differences == 0
    finally:
        await db.close()


class _Rollback(Exception):
    pass


async def _events(db: asyncpg.Connection, topic: str) -> list[tuple[str, dict[str, object]]]:
    for _ in range(1000):
        if not (await db.fetchrow("SELECT * FROM changefeed.sequence(10000)"))["consumed"]:
            break
    rows = await db.fetch(
        "SELECT type, data FROM changefeed.events WHERE topic = $1 ORDER BY seq", topic
    )
    return [(r["type"], json.loads(r["data"])) for r in rows]


async def test_a_row_filter_publishes_only_the_rows_in_it(database: str) -> None:
    """Rows outside the filter publish nothing; an update that takes a row out of it is its
    delete, one that brings it in its insert; the filter runs with the writer's rights."""
    db = await asyncpg.connect(database)
    try:
        await db.execute(
            "CREATE TABLE public.orders (id int PRIMARY KEY, tenant int, total int, note text)"
        )
        result = changefeed(
            "capture",
            "public.orders",
            "--topic",
            "acme",
            "--where",
            "tenant = 42",
            "--exclude",
            "note",
            env={"CHANGEFEED_DATABASE_URL": database},
        )
        assert result.returncode == 0, result.stderr
        await db.execute("INSERT INTO public.orders VALUES (1, 42, 10, 'a'), (2, 7, 20, 'b')")
        await db.execute("UPDATE public.orders SET total = 11 WHERE id = 1")  # update
        await db.execute("UPDATE public.orders SET total = 21 WHERE id = 2")  # nothing
        await db.execute("UPDATE public.orders SET note = 'x' WHERE id = 1")  # only excluded
        await db.execute("UPDATE public.orders SET tenant = 7 WHERE id = 1")  # out: delete
        await db.execute("UPDATE public.orders SET tenant = 42, id = 3 WHERE id = 2")  # in
        await db.execute("DELETE FROM public.orders WHERE id = 1")  # outside: nothing
        await db.execute("DELETE FROM public.orders WHERE id = 3")  # delete
        events = await _events(db, "acme")
        assert [(t, e["key"]) for t, e in events] == [
            ("insert", {"id": 1}),
            ("update", {"id": 1}),
            ("delete", {"id": 1}),
            ("insert", {"id": 3}),
            ("delete", {"id": 3}),
        ]
        assert events[2][1]["old"] == {"id": 1, "tenant": 42, "total": 11}
        assert events[3][1]["new"] == {"id": 3, "tenant": 42, "total": 21}
        listed = changefeed("capture", "--list", env={"CHANGEFEED_DATABASE_URL": database})
        assert listed.stdout.strip() == (
            "public.orders -> acme (key id; excluded note; where tenant = 42)"
        )
    finally:
        await db.close()


async def test_bad_row_filters_are_refused_and_leave_the_capture_as_it_was(
    database: str,
) -> None:
    db = await asyncpg.connect(database)
    env = {"CHANGEFEED_DATABASE_URL": database}
    try:
        await db.execute("CREATE TABLE public.items (id int PRIMARY KEY, v int)")
        await db.execute("INSERT INTO public.items VALUES (1, 1)")
        assert changefeed("capture", "public.items", "--where", "v > 0", env=env).returncode == 0
        for condition, message in [
            ("", "the row filter is empty"),
            ("v >", "syntax error"),
            ("v", "must be type boolean"),
            ("nosuch = 1", 'column "nosuch" does not exist'),
            ("count(*) > 1", "aggregate functions are not allowed"),
            # One expression only: EXECUTE would run all three statements.
            ("true); DELETE FROM public.items; SELECT (true", "invalid row filter"),
            ("public.nosuch(v)", "does not exist"),
        ]:
            result = changefeed("capture", "public.items", "--where", condition, env=env)
            assert result.returncode == 1, (condition, result.stdout)
            assert message in result.stderr, (condition, result.stderr)
            assert "Traceback" not in result.stderr
        assert await db.fetchval("SELECT count(*) FROM public.items") == 1
        listed = json.loads(changefeed("capture", "--list", "--json", env=env).stdout)
        assert listed["captures"][0]["where"] == "v > 0"
        await db.execute("INSERT INTO public.items VALUES (2, 0), (3, 5)")
        assert [e["key"] for _, e in await _events(db, "items")] == [{"id": 3}]
    finally:
        await db.close()


async def test_a_row_filter_runs_with_the_writers_rights(database: str) -> None:
    """A filter that reads another table reads it as the writer: a writer who may not read
    it fails its statement, rather than the filter reading it with the owner's rights."""
    db = await asyncpg.connect(database)
    try:
        await db.execute(
            """
            CREATE TABLE public.accounts (id int PRIMARY KEY, vip bool);
            CREATE TABLE public.payments (id int PRIMARY KEY, account int);
            CREATE ROLE payments_writer;
            GRANT INSERT ON public.payments TO payments_writer;
            """
        )
        await db.fetchval(
            "SELECT changefeed.capture('public.payments', row_filter => "
            "'account IN (SELECT a.id FROM public.accounts a WHERE a.vip)')"
        )
        await db.execute("INSERT INTO public.accounts VALUES (1, true), (2, false)")
        await db.execute("INSERT INTO public.payments VALUES (10, 1), (11, 2)")
        assert [e["key"] for _, e in await _events(db, "payments")] == [{"id": 10}]
        async with db.transaction():
            await db.execute("SET LOCAL ROLE payments_writer")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="accounts"):
                await db.execute("INSERT INTO public.payments VALUES (12, 1)")
    finally:
        await db.close()
