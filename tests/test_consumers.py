"""Durable consumers: leases shared by workers, acknowledgements, redelivery, lag."""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from dataclasses import dataclass, field

import asyncpg
import httpx
import pytest

from tests.support import new_topic, publish, wait_for

SEED = int(os.environ.get("CHANGEFEED_TEST_SEED", random.randrange(1 << 30)))


def _names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"c{tag}", f"q{tag}"


async def _sequenced(db: asyncpg.Connection) -> None:
    async def drained() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM changefeed.inbox") == 0)

    await wait_for(drained, timeout=30)


async def test_define_describe_list_delete(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    name, prefix = _names()
    await publish(client, f"{prefix}.a", [{"data": i} for i in range(3)])
    await publish(client, f"{prefix}.b", {"data": 0})
    await _sequenced(db)
    created = await client.put(f"/consumers/{name}", json={"topics": [f"{prefix}.*"]})
    assert created.status_code == 201
    assert created.json()["lag"] == 4
    again = await client.put(
        f"/consumers/{name}", json={"topics": [f"{prefix}.a"], "visibility_timeout": 5}
    )
    assert again.status_code == 200
    body = again.json()
    assert body["lag"] == 3 and body["visibility_timeout"] == 5
    assert [c["topic"] for c in body["cursors"]] == [f"{prefix}.a"]
    listed = (await client.get("/consumers")).json()["consumers"]
    assert any(c["name"] == name and c["lag"] == 3 for c in listed)
    # Starting at the latest: nothing of the past is owed.
    late, _ = _names()
    response = await client.put(
        f"/consumers/{late}", json={"topics": [f"{prefix}.*"], "start": "latest"}
    )
    assert response.json()["lag"] == 0
    assert (await client.delete(f"/consumers/{name}")).status_code == 204
    assert (await client.get(f"/consumers/{name}")).status_code == 404
    assert (await client.delete(f"/consumers/{name}")).status_code == 404


async def test_bad_consumer_input(client: httpx.AsyncClient) -> None:
    name, _ = _names()
    bodies: list[dict[str, object]] = [
        {"topics": []},
        {"topics": ["bad topic"]},
        {"topics": ["a"], "x": 1},
        {"topics": ["a"], "visibility_timeout": 0},
        {"topics": ["a"], "start": "now"},
    ]
    for body in bodies:
        response = await client.put(f"/consumers/{name}", json=body)
        assert response.status_code == 400, body
        assert response.headers["content-type"].startswith("application/problem+json")
    assert (await client.put("/consumers/bad name", json={"topics": ["a"]})).status_code == 400
    await client.put(f"/consumers/{name}", json={"topics": ["a"]})
    for params in ({"limit": "0"}, {"limit": "x"}, {"wait": "31"}):
        assert (await client.get(f"/consumers/{name}/events", params=params)).status_code == 400
    bad_acks = ({"lease": "not-a-uuid"}, {"lease": str(uuid.uuid4())}, {"position": 1})
    statuses = [(await client.post(f"/consumers/{name}/ack", json=b)).status_code for b in bad_acks]
    assert statuses == [400, 409, 400]
    assert (await client.get("/consumers/none-such/events")).status_code == 404


async def test_leases_are_exclusive_per_topic_and_lapse(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    name, prefix = _names()
    await client.put(
        f"/consumers/{name}", json={"topics": [f"{prefix}.a"], "visibility_timeout": 1}
    )
    await publish(client, f"{prefix}.a", [{"data": i} for i in range(5)])
    await _sequenced(db)
    first = (await client.get(f"/consumers/{name}/events", params={"limit": "3"})).json()
    assert [e["seq"] for e in first["events"]] == [1, 2, 3]
    # The topic is leased: another worker gets nothing of it meanwhile.
    other = (await client.get(f"/consumers/{name}/events")).json()
    assert other["events"] == [] and other["lease"] is None
    # Partial acknowledgement: the cursor moves to seq 2; 3.. are handed out again at once.
    acked = await client.post(
        f"/consumers/{name}/ack",
        json={"lease": first["lease"], "position": first["events"][1]["position"]},
    )
    assert acked.json()["acked"] == {f"{prefix}.a": 2}
    second = (await client.get(f"/consumers/{name}/events")).json()
    assert [e["seq"] for e in second["events"]] == [3, 4, 5]

    # Not acknowledged in time: it lapses, the events come back, and the late ack is refused.
    async def lapsed() -> dict[str, object] | None:
        batch = (await client.get(f"/consumers/{name}/events")).json()
        return batch if batch["events"] else None

    third = await wait_for(lapsed, timeout=10, interval=0.2)
    assert [e["seq"] for e in third["events"]] == [3, 4, 5]
    late = await client.post(f"/consumers/{name}/ack", json={"lease": second["lease"]})
    assert late.status_code == 409
    done = await client.post(f"/consumers/{name}/ack", json={"lease": third["lease"]})
    assert done.json()["acked"] == {f"{prefix}.a": 5}
    assert (await client.get(f"/consumers/{name}")).json()["lag"] == 0


async def test_long_poll_returns_when_an_event_arrives(client: httpx.AsyncClient) -> None:
    name, prefix = _names()
    await client.put(f"/consumers/{name}", json={"topics": [f"{prefix}.*"]})
    poll = asyncio.create_task(client.get(f"/consumers/{name}/events", params={"wait": "20"}))
    await asyncio.sleep(0.2)  # let the poll start waiting (it must also work if it has not)
    started = time.monotonic()
    await publish(client, f"{prefix}.x", {"data": "hello"})
    batch = (await asyncio.wait_for(poll, 20)).json()
    assert [e["data"] for e in batch["events"]] == ["hello"]
    assert time.monotonic() - started < 10, "the long poll should answer on the notification"


@dataclass
class _Batch:
    worker: str
    runs: dict[str, list[int]]  # topic -> seqs received
    sent: float  # when the poll was sent (monotonic)
    received: float
    expires: float  # the lease's expiry, on the same clock
    released: float | None = None  # when its ack was sent, if it was


@dataclass
class _Ledger:
    batches: list[_Batch] = field(default_factory=list)
    processed: dict[tuple[str, int], int] = field(default_factory=dict)  # event -> times
    confirmed: dict[str, int] = field(default_factory=dict)  # cursors acks answered with
    requested: dict[str, int] = field(default_factory=dict)  # most any ack asked for
    crashes: int = 0
    violations: list[str] = field(default_factory=list)


@pytest.mark.slow
async def test_workers_killed_at_random_share_a_consumer_correctly(
    client: httpx.AsyncClient, db: asyncpg.Connection, module_database: str
) -> None:
    """3 workers, killed at random (their leases never acknowledged) and restarted: every
    event is processed at least once, each topic in order, no topic held by two workers at
    once, and the cursor never passes an unacknowledged event. The checks use only what
    the client can prove from its own clock, so scheduling delays cannot fail them."""
    rng = random.Random(SEED)
    print(f"seed={SEED}")
    name, prefix = _names()
    topics = [f"{prefix}.t{i}" for i in range(5)]
    visibility = 1.0
    await client.put(
        f"/consumers/{name}", json={"topics": [f"{prefix}.*"], "visibility_timeout": visibility}
    )
    ledger = _Ledger()
    published = asyncio.Event()

    async def publisher() -> None:
        for i in range(60):
            batch = [{"data": {"i": i, "j": j}} for j in range(rng.randint(1, 5))]
            await publish(client, rng.choice(topics), batch)
            await asyncio.sleep(rng.random() * 0.02)
        published.set()

    async def worker(w: int, wrng: random.Random) -> None:
        own = await asyncpg.connect(module_database)
        try:
            await work(w, wrng, own)
        finally:
            await own.close()

    async def work(w: int, wrng: random.Random, own: asyncpg.Connection) -> None:
        generation = 0
        while True:
            me = f"w{w}.{generation}"
            floor = dict(ledger.confirmed)
            sent = time.monotonic()
            params = {"limit": str(wrng.randint(1, 20)), "wait": "1"}
            batch = (await client.get(f"/consumers/{name}/events", params=params)).json()
            received = time.monotonic()
            if not batch["events"]:
                if (
                    published.is_set()
                    and (await client.get(f"/consumers/{name}")).json()["lag"] == 0
                ):
                    return
                continue
            runs: dict[str, list[int]] = {}
            for event in batch["events"]:
                runs.setdefault(event["topic"], []).append(event["seq"])
                key = (event["topic"], event["seq"])
                ledger.processed[key] = ledger.processed.get(key, 0) + 1
            record = _Batch(me, runs, sent, received, sent + visibility)
            ledger.batches.append(record)
            for topic, seqs in runs.items():
                # In order: a contiguous run starting right after the cursor at lease time,
                # which lies between what acks had confirmed and what they had asked for.
                first = seqs[0]
                low, high = floor.get(topic, 0) + 1, ledger.requested.get(topic, 0) + 1
                if seqs != list(range(first, first + len(seqs))) or not low <= first <= high:
                    ledger.violations.append(f"{me}: {topic} {seqs} outside [{low}, {high}]")
            fate = wrng.random()
            if fate < 0.15:
                ledger.crashes += 1  # killed: never acknowledged; a new process starts
                generation += 1
                continue
            upto = None
            if fate < 0.35:  # acknowledge part of the batch only
                upto = batch["events"][wrng.randrange(len(batch["events"]))]["position"]
            for event in batch["events"]:
                if upto is None or event["position"] <= upto:
                    topic = event["topic"]
                    ledger.requested[topic] = max(ledger.requested.get(topic, 0), event["seq"])
            record.released = time.monotonic()
            ack = await client.post(
                f"/consumers/{name}/ack", json={"lease": batch["lease"], "position": upto}
            )
            if ack.status_code == 409:
                record.released = None  # it lapsed first; the server handed it on
                continue
            for topic, cursor in ack.json()["acked"].items():
                ledger.confirmed[topic] = max(ledger.confirmed.get(topic, 0), cursor)
            for row in await own.fetch(
                "SELECT topic, acked_seq FROM changefeed.consumer_topics WHERE consumer = $1",
                name,
            ):
                if row["acked_seq"] > ledger.requested.get(row["topic"], 0):
                    ledger.violations.append(f"cursor of {row['topic']} passed the acks")

    async with asyncio.timeout(120):
        await asyncio.gather(
            publisher(), *(worker(w, random.Random(rng.random())) for w in range(3))
        )

    # No topic held by two workers at once: a batch of another worker received before this
    # one was released (or had lapsed) would prove an overlap.
    for a in ledger.batches:
        end = a.released if a.released is not None else a.expires
        for b in ledger.batches:
            if b is a or b.worker == a.worker or not set(a.runs) & set(b.runs):
                continue
            if a.sent <= b.received < end and b.sent >= a.received:
                ledger.violations.append(
                    f"{b.worker} held {set(a.runs) & set(b.runs)} with {a.worker}"
                )
    heads = {
        r["topic"]: r["head"]
        for r in await db.fetch(
            "SELECT topic, head FROM changefeed.topics WHERE topic = ANY($1)", topics
        )
    }
    everything = {(t, s) for t, h in heads.items() for s in range(1, h + 1)}
    missing = everything - set(ledger.processed)
    redelivered = sum(n - 1 for n in ledger.processed.values())
    print(
        f"events={len(everything)} batches={len(ledger.batches)} crashes={ledger.crashes} "
        f"redelivered={redelivered} violations={len(ledger.violations)}"
    )
    assert not missing, sorted(missing)[:10]
    assert not ledger.violations, ledger.violations[:10]
    assert ledger.confirmed == heads


async def test_an_existing_consumer_changes_hands_only_in_one_statement(
    module_database: str,
) -> None:
    """The owner check is part of the statement that changes or deletes a consumer, so no
    concurrent request can pass a check and then change another subject's consumer."""
    from changefeed.core import database, leases
    from changefeed.core.topics import Selector

    db = await database.create(module_database, min_size=1, max_size=2, timeout=10)
    try:
        name = new_topic("owned")
        assert await leases.define(db, name, Selector(["a"]), 30, "earliest", "alice", False)
        with pytest.raises(leases.NameTaken):
            await leases.define(db, name, Selector(["b"]), 30, "earliest", "mallory", False)
        with pytest.raises(leases.UnknownConsumer):
            await leases.delete(db, name, "mallory", False)
        found = await leases.find(db, name)
        assert found is not None and found.owner == "alice" and found.selection == ["a"]
        # A subject the consumer is granted to by name may change it; its owner stays.
        assert not await leases.define(db, name, Selector(["c"]), 30, "earliest", "bob", True)
        assert (await leases.find(db, name)) == leases.Found("alice", ["c"])
        await leases.delete(db, name, "alice", False)
        assert await leases.find(db, name) is None
    finally:
        await db.close()
