"""Streams of several topics in one order (the global position): wildcards and lists."""

from __future__ import annotations

import asyncio
import json
import os
import random
import uuid

import asyncpg
import httpx
from httpx_sse import ServerSentEvent, aconnect_sse

from tests.support import Reader, publish, seq, subscribe, wait_for

SEED = int(os.environ.get("CHANGEFEED_TEST_SEED", random.randrange(1 << 30)))


def _prefix() -> str:
    return f"m{uuid.uuid4().hex[:8]}"


async def _log(db: asyncpg.Connection, like: str) -> list[tuple[int, str, int]]:
    async def drained() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM changefeed.inbox") == 0)

    await wait_for(drained, timeout=30)
    rows = await db.fetch(
        "SELECT position, topic, seq FROM changefeed.events WHERE topic LIKE $1 ORDER BY position",
        like,
    )
    return [(r["position"], r["topic"], r["seq"]) for r in rows]


async def test_wildcard_stream_in_global_order(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    p = _prefix()
    async with subscribe(client, f"{p}.orders.*") as stream:
        await publish(client, f"{p}.orders.eu", {"type": "created", "data": {"n": 1}})
        await publish(client, f"{p}.other", {"data": "not mine"})
        await publish(client, f"{p}.orders.us", [{"data": {"n": 2}}, {"data": {"n": 3}}])
        await publish(client, f"{p}.orders", {"data": "no: the pattern needs the dot"})
        await publish(client, f"{p}.orders.eu.paid", {"data": {"n": 4}})
        events = await stream.take(4)
        await stream.expect_nothing(within=0.3)
    log = await _log(db, f"{p}.orders.%")
    assert [int(seq(e)) for e in events] == [pos for pos, _, _ in log]
    assert [int(seq(e)) for e in events] == sorted(int(seq(e)) for e in events)
    bodies = [json.loads(e.data) for e in events]
    assert [(b["topic"], b["seq"]) for b in bodies] == [(t, s) for _, t, s in log]
    assert [b["data"]["n"] for b in bodies] == [1, 2, 3, 4]
    assert events[0].event == "created"


async def test_topic_list_and_resume(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    p = _prefix()
    a, b, c = f"{p}.a", f"{p}.b", f"{p}.c"
    for i in range(3):
        for topic in (a, b, c):
            await publish(client, topic, {"data": i})
    log = [e for e in await _log(db, f"{p}.%") if e[1] in (a, b)]
    async with aconnect_sse(
        client, "GET", "/feeds", params={"topic": [a, b], "after": "0"}
    ) as source:
        got = []
        async for event in source.aiter_sse():
            if event.data:
                got.append((int(seq(event)), json.loads(event.data)["topic"]))
            if len(got) == len(log):
                break
    assert got == [(pos, t) for pos, t, _ in log]
    # Resume after the third: exactly the rest. The header beats ?after.
    third = log[2][0]
    async with aconnect_sse(
        client,
        "GET",
        "/feeds",
        params={"topic": [a, b], "after": "0"},
        headers={"Last-Event-ID": str(third)},
    ) as source:
        rest = []
        async for event in source.aiter_sse():
            if event.data:
                rest.append(int(seq(event)))
            if len(rest) == len(log) - 3:
                break
    assert rest == [pos for pos, _, _ in log[3:]]


def _key(event: ServerSentEvent) -> tuple[int, str]:
    return int(seq(event)), json.loads(event.data)["topic"]


async def test_wildcard_resumed_at_random_points_is_exact(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    rng = random.Random(SEED)
    print(f"seed={SEED}")
    p = _prefix()
    topics = [f"{p}.x.{i}" for i in range(4)] + [f"{p}.y.{i}" for i in range(2)]
    done = asyncio.Event()
    final: list[int] = [0]

    async def writer(w: int, wrng: random.Random) -> None:
        for i in range(30):
            topic = wrng.choice(topics)
            batch = [{"data": {"w": w, "i": i, "j": j}} for j in range(wrng.randint(1, 3))]
            assert (await publish(client, topic, batch)).status_code == 202
            await asyncio.sleep(wrng.random() * 0.01)

    async with asyncio.timeout(90):
        readers = [
            asyncio.create_task(
                Reader(f"r{i}", _key).run(
                    client, f"{p}.x.*", done, final, random.Random(rng.random()), most=25
                )
            )
            for i in range(4)
        ]
        await asyncio.gather(*(writer(w, random.Random(rng.random())) for w in range(3)))
        log = [(pos, t) for pos, t, _ in await _log(db, f"{p}.x.%")]
        final[0] = log[-1][0]
        done.set()
        results = await asyncio.gather(*readers)
    for received in results:
        assert received == log
    print(f"events={len(log)} (of the selection) readers={len(results)} anomalies=0")


async def test_live_tail_and_beyond_head_for_many(client: httpx.AsyncClient) -> None:
    p = _prefix()
    async with subscribe(client, f"{p}.*") as first:
        await publish(client, f"{p}.a", {"data": "before"})
        await first.next()  # sequenced: the live tail starts after it
    async with subscribe(client, f"{p}.*") as stream:
        await stream.expect_nothing(within=0.3)
        await publish(client, f"{p}.a", {"data": "after"})
        assert json.loads((await stream.next()).data)["data"] == "after"
    response = await client.get("/feeds", params={"topic": f"{p}.a", "after": str(10**12)})
    assert response.status_code == 409


async def test_resume_of_several_topics_is_verified_by_hash(client: httpx.AsyncClient) -> None:
    p = _prefix()
    await publish(client, f"{p}.a", [{"data": 1}, {"data": 2}])
    await publish(client, f"{p}.b", {"data": 3})
    async with subscribe(client, f"{p}.*", after=0) as stream:
        events = await stream.take(3)
    first, second, third = events
    assert all(e.id.count(".") == 1 and len(e.id.split(".")[1]) == 8 for e in events)
    # The true id resumes exactly; so does the opening id of a live tail cut early.
    async with subscribe(client, f"{p}.*", last_event_id=first.id) as stream:
        assert [e.id for e in await stream.take(2)] == [second.id, third.id]
    async with subscribe(client, f"{p}.*") as stream:
        opening = stream.opening
    assert opening is not None and seq(opening) >= seq(third)
    await publish(client, f"{p}.a", {"data": 4})
    async with subscribe(client, f"{p}.*", last_event_id=opening.id) as stream:
        assert json.loads((await stream.next()).data)["data"] == 4
    # Another history at that position: said first, then the selection from its start.
    position = seq(second)
    async with subscribe(client, f"{p}.*", last_event_id=f"{position}.00000000") as stream:
        reset = await stream.next()
        assert reset.event == "reset"
        body = json.loads(reset.data)
        assert (body["reason"], body["after"]) == ("mismatch", 0)
        assert [e.id for e in await stream.take(3)] == [e.id for e in events]
    # Past the last position, with a hash: the database went back in time.
    async with subscribe(client, f"{p}.*", last_event_id="999999999.0123abcd") as stream:
        reset = await stream.next()
        assert reset.event == "reset" and json.loads(reset.data)["reason"] == "behind"


async def test_several_topics_as_message_frames(client: httpx.AsyncClient) -> None:
    p = _prefix()
    await publish(client, f"{p}.a", {"type": "created", "data": 1})
    async with (
        subscribe(client, f"{p}.*", after=0, dispatch="message") as messages,
        subscribe(client, f"{p}.*", after=0) as typed,
    ):
        assert json.loads((await messages.next()).data)["type"] == "created"
        await typed.next()
        # Live: both kinds of subscriber on one replica's global feed.
        await publish(client, f"{p}.b", {"type": "paid", "data": 2})
        live, plain = await messages.next(), await typed.next()
    assert (live.event, plain.event) == ("message", "paid")
    assert live.id == plain.id
    assert json.loads(live.data) == {"topic": f"{p}.b", "seq": 1, "type": "paid", "data": 2}
    assert json.loads(plain.data) == json.loads(live.data)
