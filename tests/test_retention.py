"""Retention: policies remove old events in short batches, and every reader that asked for
a removed event is told so (SSE reset frame, 410, a consumer's skipped count)."""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest
from httpx_sse import aconnect_sse

from changefeed.core.schema import SEQUENCE_LOCK
from tests.support import (
    SSE,
    Service,
    apply_changes,
    changefeed,
    metrics,
    new_topic,
    publish,
    seq,
    subscribe,
    wait_for,
)

SEED = int(os.environ.get("CHANGEFEED_TEST_SEED", random.randrange(1 << 30)))


@pytest.fixture(scope="module")
def service(module_database: str) -> Iterator[Service]:
    # Policies are enforced only when a test asks (`changefeed trim`), not by the loop.
    with Service(module_database, env={"CHANGEFEED_RETENTION_INTERVAL_SECONDS": "3600"}) as svc:
        yield svc


def _cli(url: str, *args: str) -> str:
    done = changefeed(*args, env={"CHANGEFEED_DATABASE_URL": url}, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def _topic_with(client: httpx.AsyncClient, db: asyncpg.Connection, n: int) -> str:
    topic = new_topic("ret")
    assert (await publish(client, topic, [{"data": i} for i in range(1, n + 1)])).status_code == 202

    async def sequenced() -> bool:
        return bool(await db.fetchval("SELECT head FROM changefeed.topics WHERE topic=$1", topic))

    await wait_for(sequenced, timeout=30)
    return topic


async def _hash8(db: asyncpg.Connection, topic: str, seq: int) -> str:
    value: str = await db.fetchval(
        "SELECT left(encode(hash, 'hex'), 8) FROM changefeed.events WHERE topic=$1 AND seq=$2",
        topic,
        seq,
    )
    return value


async def _seqs(client: httpx.AsyncClient, topic: str, after: int = 0) -> list[int]:
    page = (await client.get(f"/feeds/{topic}/events", params={"after": after})).json()
    return [e["seq"] for e in page["events"]]


@pytest.mark.slow
async def test_count_policy_keeps_the_latest_and_verify_still_holds(
    client: httpx.AsyncClient, db: asyncpg.Connection, module_database: str
) -> None:
    topic = await _topic_with(client, db, 10)
    assert "keep the latest 4 events" in _cli(
        module_database, "retention", "set", topic, "--max-count", "4"
    )
    assert f"{topic}: 6 removed" in _cli(module_database, "trim")
    page = (await client.get(f"/feeds/{topic}/events")).json()
    assert [e["seq"] for e in page["events"]] == [7, 8, 9, 10]
    assert (page["head"], page["first_seq"]) == (10, 7)
    # The chain is checked from the mark on, seeded with the last removed event's hash.
    assert "intact" in _cli(module_database, "verify", topic)
    await publish(client, topic, {"data": 11})
    await wait_for(lambda: _seqs(client, topic, 10), timeout=30)
    assert "intact" in _cli(module_database, "verify", topic)
    # An edited row is still found after a trim.
    await db.execute(
        "UPDATE changefeed.events SET data = '\"x\"' WHERE topic = $1 AND seq = 8", topic
    )
    broken = changefeed("verify", topic, env={"CHANGEFEED_DATABASE_URL": module_database})
    assert broken.returncode == 1 and "broken at seq 8" in broken.stdout


async def test_age_policy_removes_by_event_time(
    client: httpx.AsyncClient, db: asyncpg.Connection, module_database: str
) -> None:
    topic = await _topic_with(client, db, 5)
    _cli(module_database, "retention", "set", topic, "--max-age", "1 hour")
    # Nothing is an hour old yet.
    assert await db.fetch("SELECT * FROM changefeed.trim(5000) WHERE topic = $1", topic) == []
    # Two hours from now, all of it is.
    rows = await db.fetch(
        "SELECT * FROM changefeed.trim(5000, now() + interval '2 hours') WHERE topic = $1", topic
    )
    assert [(r["first_seq"], r["removed"]) for r in rows] == [(6, 5)]
    page = (await client.get(f"/feeds/{topic}/events")).json()
    assert (page["events"], page["head"], page["first_seq"]) == ([], 5, 6)
    # Numbering goes on from the head, and the chain from the removed tail.
    await publish(client, topic, {"data": 6})
    assert await wait_for(lambda: _seqs(client, topic), timeout=30) == [6]
    assert "intact" in _cli(module_database, "verify", topic)


@pytest.mark.slow
async def test_the_most_specific_policy_governs(
    client: httpx.AsyncClient, db: asyncpg.Connection, module_database: str
) -> None:
    prefix = new_topic("ret")
    _cli(module_database, "retention", "set", f"{prefix}.*", "--max-count", "1")
    _cli(module_database, "retention", "set", f"{prefix}.keep.*", "--max-count", "3")
    _cli(module_database, "retention", "set", f"{prefix}.keep.all", "--max-count", "100")
    topics = [f"{prefix}.a", f"{prefix}.keep.b", f"{prefix}.keep.all"]
    for topic in topics:
        await publish(client, topic, [{"data": i} for i in range(5)])

    async def all_sequenced() -> bool:
        heads = await db.fetch(
            "SELECT head FROM changefeed.topics WHERE topic = ANY($1::text[])", topics
        )
        return [r["head"] for r in heads] == [5, 5, 5]

    await wait_for(all_sequenced, timeout=30)
    _cli(module_database, "trim")
    assert [len(await _seqs(client, t)) for t in topics] == [1, 3, 5]
    listed = _cli(module_database, "retention", "list")
    assert f"{prefix}.keep.*: keep the latest 3 events" in listed
    _cli(module_database, "retention", "clear", f"{prefix}.*")
    assert f"{prefix}.*:" not in _cli(module_database, "retention", "list")


@pytest.mark.slow
async def test_bad_policies_are_refused_with_a_message(module_database: str) -> None:
    env = {"CHANGEFEED_DATABASE_URL": module_database}
    for args, message in [
        (["bad topic", "--max-count", "1"], "invalid topic"),
        (["t", "--max-count", "0"], "at least 1"),
        (["t", "--max-age", "soon"], "invalid max-age"),
        (["t", "--max-age", "-1 day"], "positive"),
        (["t"], "--max-age and/or --max-count"),
    ]:
        done = changefeed("retention", "set", *args, env=env, timeout=60)
        assert done.returncode == 1 and message in done.stderr, (args, done.stderr)


async def test_sse_resume_below_the_mark_gets_a_reset_naming_the_first_seq(
    client: httpx.AsyncClient, db: asyncpg.Connection, module_database: str
) -> None:
    topic = await _topic_with(client, db, 10)
    hashes = {n: await _hash8(db, topic, n) for n in (2, 7)}
    _cli(module_database, "retention", "set", topic, "--max-count", "3")
    _cli(module_database, "trim")
    for resume in (f"2.{hashes[2]}", "2"):
        async with subscribe(client, topic, last_event_id=resume) as stream:
            reset = await stream.next()
            assert reset.event == "reset"
            body = json.loads(reset.data)
            assert (body["reason"], body["first_seq"], body["after"]) == ("retention", 8, 7)
            assert "3 to 7" in body["detail"]
            assert [seq(e) for e in await stream.take(3)] == ["8", "9", "10"]
    # At the last removed event the client's id is still checked, against the kept tail
    # hash: the right one continues without a reset, a wrong one is a rewritten history.
    async with subscribe(client, topic, last_event_id=f"7.{hashes[7]}") as stream:
        assert [(e.event, seq(e)) for e in await stream.take(3)] == [
            ("message", "8"),
            ("message", "9"),
            ("message", "10"),
        ]
    async with subscribe(client, topic, last_event_id="7.00000000") as stream:
        assert json.loads((await stream.next()).data)["reason"] == "mismatch"
    # after=0 asks for the earliest events held: nothing is owed before them.
    async with subscribe(client, topic, after=0) as stream:
        assert [seq(e) for e in await stream.take(3)] == ["8", "9", "10"]


async def test_replay_and_export_below_the_mark_are_410(
    client: httpx.AsyncClient, db: asyncpg.Connection, module_database: str
) -> None:
    topic = await _topic_with(client, db, 10)
    _cli(module_database, "retention", "set", topic, "--max-count", "3")
    _cli(module_database, "trim")
    gone = await client.get(f"/feeds/{topic}/events", params={"after": 2})
    assert gone.status_code == 410
    assert gone.headers["content-type"].startswith("application/problem+json")
    problem = gone.json()
    assert (problem["type"], problem["first_seq"]) == ("urn:changefeed:problem:trimmed", 8)
    ndjson = {"accept": "application/x-ndjson"}
    exported = await client.get(f"/feeds/{topic}/events", params={"after": 2}, headers=ndjson)
    assert exported.status_code == 410 and exported.json()["first_seq"] == 8
    # From the last removed seq, or from the earliest held, nothing is missing.
    assert await _seqs(client, topic, after=7) == [8, 9, 10]
    assert await _seqs(client, topic, after=0) == [8, 9, 10]
    lines = (await client.get(f"/feeds/{topic}/events", headers=ndjson)).text.splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [8, 9, 10]


async def _sequence_and_trim(db: asyncpg.Connection, topic: str, n: int, keep: int) -> None:
    """Publish, sequence and trim in one transaction: live streams are notified only after
    the events they were owed are already gone."""
    async with db.transaction():
        await db.execute(
            "SELECT changefeed.publish($1, 'message', to_jsonb(i)) FROM generate_series(1, $2) i",
            topic,
            n,
        )
        await db.execute("SELECT changefeed.sequence()")
        await db.execute(
            "INSERT INTO changefeed.retention (pattern, max_count) VALUES ($1, $2)", topic, keep
        )
        await db.execute("SELECT changefeed.trim()")


async def test_a_live_stream_overtaken_by_retention_is_told(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    topic = new_topic("ret")
    async with subscribe(client, topic) as stream:  # the live tail of an empty topic
        await _sequence_and_trim(db, topic, 10, keep=2)
        reset = await stream.next()
        assert reset.event == "reset"
        assert json.loads(reset.data)["first_seq"] == 9
        assert [seq(e) for e in await stream.take(2)] == ["9", "10"]


@contextlib.asynccontextmanager
async def _open_many(client: httpx.AsyncClient, pattern: str) -> AsyncIterator[SSE]:
    async with aconnect_sse(client, "GET", "/feeds", params={"topic": pattern}) as source:
        sse = SSE(source.aiter_sse())
        try:
            await sse.next()  # retry
            yield sse
        finally:
            await sse.close()


async def test_a_multi_topic_stream_is_told_which_topic_lost_events(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    prefix = new_topic("ret")
    quiet, cut = f"{prefix}.quiet", f"{prefix}.cut"
    async with _open_many(client, f"{prefix}.*") as stream:
        await publish(client, quiet, {"data": "before"})
        assert json.loads((await stream.next()).data)["topic"] == quiet
        await _sequence_and_trim(db, cut, 10, keep=2)
        reset = await stream.next()
        assert reset.event == "reset"
        assert json.loads(reset.data)["lost"] == {cut: 9}
        got = [json.loads(e.data) for e in await stream.take(2)]
        assert [(e["topic"], e["seq"]) for e in got] == [(cut, 9), (cut, 10)]
        await publish(client, quiet, {"data": "after"})
        # Reported once: the stream goes on without another reset.
        assert json.loads((await stream.next()).data)["topic"] == quiet


async def test_a_consumer_behind_the_mark_is_moved_past_it_and_told(
    client: httpx.AsyncClient, db: asyncpg.Connection, module_database: str
) -> None:
    topic = await _topic_with(client, db, 10)
    name = f"c-{topic}"
    assert (await client.put(f"/consumers/{name}", json={"topics": [topic]})).status_code in (
        200,
        201,
    )
    first = (await client.get(f"/consumers/{name}/events", params={"limit": 2})).json()
    await client.post(f"/consumers/{name}/ack", json={"lease": first["lease"]})
    _cli(module_database, "retention", "set", topic, "--max-count", "3")
    _cli(module_database, "trim")
    cursor = (await client.get(f"/consumers/{name}")).json()["cursors"][0]
    assert (cursor["acked"], cursor["first_seq"]) == (7, 8)
    assert (cursor["skipped"], cursor["skipped_upto"]) == (5, 7)
    batch = (await client.get(f"/consumers/{name}/events", params={"limit": 10})).json()
    assert [e["seq"] for e in batch["events"]] == [8, 9, 10]


@pytest.fixture
async def own_service(database: str) -> AsyncIterator[Service]:
    env = {"CHANGEFEED_RETENTION_INTERVAL_SECONDS": "0.2", "CHANGEFEED_MAX_INBOX_EVENTS": "5"}
    with Service(database, env=env) as svc:
        yield svc


async def test_the_loop_enforces_policies_and_a_full_inbox_refuses_publishes(
    own_service: Service, database: str
) -> None:
    db = await asyncpg.connect(database)
    try:
        async with httpx.AsyncClient(base_url=own_service.base_url, timeout=30) as http:
            topic = new_topic("ret")
            _cli(database, "retention", "set", topic, "--max-count", "1")
            await publish(http, topic, [{"data": i} for i in range(5)])

            async def trimmed() -> bool:
                return await _seqs(http, topic) == [5]

            await wait_for(trimmed, timeout=30)
            assert (await metrics(http))["changefeed_events_removed_total"] >= 4

            # Hold the sequencer's lock: nothing leaves the inbox until it is released.
            await db.execute("SELECT pg_advisory_lock($1)", SEQUENCE_LOCK)
            assert (await publish(http, topic, [{"data": i} for i in range(5)])).status_code == 202

            async def refused() -> httpx.Response | None:
                response = await publish(http, topic, {"data": "one more"})
                return response if response.status_code == 503 else None

            response = await wait_for(refused, timeout=30)
            assert response.headers["retry-after"] == "1"
            assert "wait for the sequencer" in response.json()["detail"]
            await db.execute("SELECT pg_advisory_unlock($1)", SEQUENCE_LOCK)

            async def accepted() -> bool:
                return (await publish(http, topic, {"data": "again"})).status_code == 202

            await wait_for(accepted, timeout=30)
    finally:
        await db.close()


async def _publish_keyed(
    client: httpx.AsyncClient, db: asyncpg.Connection, topic: str, changes: list[object]
) -> None:
    before = await db.fetchval("SELECT head FROM changefeed.topics WHERE topic = $1", topic) or 0
    events = [{"data": c} for c in changes]
    assert (await publish(client, topic, events)).status_code == 202

    async def sequenced() -> bool:
        head = await db.fetchval("SELECT head FROM changefeed.topics WHERE topic = $1", topic)
        return head == before + len(changes)

    await wait_for(sequenced, timeout=30)


@pytest.mark.slow
async def test_compaction_keeps_the_latest_event_per_key(
    client: httpx.AsyncClient, db: asyncpg.Connection, module_database: str
) -> None:
    topic = new_topic("ret")

    def change(key: str, v: int) -> dict[str, object]:
        return {"key": {"id": key}, "v": v}

    # seqs 1..8: a1 b1 a2 c1 b2 a3, an event without a key, d1
    await _publish_keyed(
        client,
        db,
        topic,
        [
            *(change("a", 1), change("b", 1), change("a", 2), change("c", 1)),
            *(change("b", 2), change("a", 3), {"note": "no key"}, change("d", 1)),
        ],
    )
    assert "before them the latest event per key" in _cli(
        module_database, "retention", "set", topic, "--max-count", "2", "--compact"
    )
    _cli(module_database, "trim")
    page = (await client.get(f"/feeds/{topic}/events")).json()
    assert [e["seq"] for e in page["events"]] == [4, 5, 6, 7, 8]
    assert (page["first_seq"], page["compacted"]) == (7, True)
    # seqs 9..12: a4, another keyless event, b3, c2. The tail is the latest 2 (11, 12); a4
    # (9) is now the latest of a before it, so the a3 kept by the first round goes.
    await _publish_keyed(
        client, db, topic, [change("a", 4), {"note": "again"}, change("b", 3), change("c", 2)]
    )
    _cli(module_database, "trim")
    assert await _seqs(client, topic) == [4, 5, 7, 8, 9, 10, 11, 12]
    # A reader anywhere below the mark is not told of a gap: the events kept after its
    # position bring it up to date (the latest value of every key changed since).
    async with subscribe(client, topic, after=2) as stream:
        assert [seq(e) for e in await stream.take(8)] == ["4", "5", "7", "8", "9", "10", "11", "12"]
    assert (await client.get(f"/feeds/{topic}/events", params={"after": 2})).status_code == 200
    verified = _cli(module_database, "verify", topic)
    assert "checked from seq 11" in verified and "intact" in verified


@pytest.mark.slow
async def test_a_compacted_capture_topic_still_rebuilds_the_table(
    db: asyncpg.Connection, module_database: str
) -> None:
    rng = random.Random(SEED)
    print(f"seed={SEED}")
    topic = new_topic("ret")
    await db.execute("CREATE TABLE stock (id int PRIMARY KEY, qty int)")
    await db.fetchval("SELECT changefeed.capture('public.stock', $1)", topic)
    _cli(module_database, "retention", "set", topic, "--max-count", "20", "--compact")

    async def changes(n: int) -> None:
        for _ in range(n):
            key, op = rng.randint(1, 30), rng.random()
            if op < 0.5:
                await db.execute(
                    "INSERT INTO stock VALUES ($1, 1) "
                    "ON CONFLICT (id) DO UPDATE SET qty = stock.qty + 1",
                    key,
                )
            elif op < 0.8:
                await db.execute("DELETE FROM stock WHERE id = $1", key)
            elif op < 0.95:
                # Re-key a row: a delete of the old key and an insert of the new one.
                await db.execute(
                    "UPDATE stock SET id = $2 WHERE id = $1 "
                    "AND NOT EXISTS (SELECT 1 FROM stock WHERE id = $2)",
                    key,
                    rng.randint(1, 30),
                )
            else:
                await db.execute("TRUNCATE stock")

    async def drained() -> bool:
        return bool(await db.fetchval("SELECT count(*) = 0 FROM changefeed.inbox"))

    for _ in range(4):
        await changes(150)
        await wait_for(drained, timeout=30)
        _cli(module_database, "trim")
    stored = await db.fetchval("SELECT count(*) FROM changefeed.events WHERE topic = $1", topic)
    head = await db.fetchval("SELECT head FROM changefeed.topics WHERE topic = $1", topic)
    assert stored < head / 2, (stored, head)  # compaction removed most of the history
    await db.execute("CREATE TABLE stock_replayed (LIKE stock INCLUDING ALL)")
    await apply_changes(db, topic, "stock_replayed")
    differences = await db.fetchval(
        "SELECT count(*) FROM ((TABLE stock EXCEPT TABLE stock_replayed) "
        "UNION ALL (TABLE stock_replayed EXCEPT TABLE stock)) d"
    )
    assert differences == 0
