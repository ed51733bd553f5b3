"""Publishing (batches, defaults, idempotent ids) and the JSON replay API."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import httpx

from tests.support import Service, metrics, new_topic, publish, subscribe, wait_for


async def _sequenced(db: asyncpg.Connection, topic: str, count: int) -> None:
    async def drained() -> bool:
        pending = await db.fetchval("SELECT count(*) FROM changefeed.inbox WHERE topic = $1", topic)
        return bool(pending == 0)

    await wait_for(drained, timeout=10)
    assert (
        await db.fetchval("SELECT count(*) FROM changefeed.events WHERE topic = $1", topic) == count
    )


async def test_publish_answers_202_with_the_count(client: httpx.AsyncClient) -> None:
    response = await publish(client, new_topic(), [{"data": 1}, {"data": 2}])
    assert response.status_code == 202
    assert response.json() == {"accepted": 2}


async def test_defaults_and_any_json_data(client: httpx.AsyncClient) -> None:
    topic = new_topic()
    values = [{"a": 1}, [1, 2], "text", 3.5, None, True]
    async with subscribe(client, topic) as stream:
        await publish(client, topic, [{"data": v} for v in values] + [{}])
        events = await stream.take(len(values) + 1)
    assert {e.event for e in events} == {"message"}
    assert [json.loads(e.data) for e in events] == [*values, None]


async def test_client_id_makes_retries_idempotent(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    topic = new_topic()
    first = {"type": "order.created", "id": "order-1", "data": {"n": 1}}
    before = await metrics(client)
    # The same id twice in one batch, again later, and concurrently: stored once.
    await publish(client, topic, [first, first])
    await publish(client, topic, first)
    await asyncio.gather(*(publish(client, topic, first) for _ in range(5)))
    await publish(client, topic, {"id": "order-2", "data": {"n": 2}})
    await _sequenced(db, topic, 2)
    page = (await client.get(f"/feeds/{topic}/events", params={"after": 0})).json()
    assert [(e["seq"], e["id"]) for e in page["events"]] == [(1, "order-1"), (2, "order-2")]
    # The metrics say so: 9 accepted, 2 stored, 7 dropped as repeats.
    after = await metrics(client)
    counted = {
        name: after[f"changefeed_events_{name}_total"]
        - before.get(f"changefeed_events_{name}_total", 0)
        for name in ("published", "sequenced", "deduplicated")
    }
    assert counted == {"published": 9, "sequenced": 2, "deduplicated": 7}
    # Ids are per topic: the same id on another topic is another event.
    other = new_topic()
    await publish(client, other, first)
    await _sequenced(db, other, 1)


async def test_sql_publish_with_id_is_idempotent_too(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    topic = new_topic()
    for _ in range(3):
        await db.execute("SELECT changefeed.publish($1, 't', '1'::jsonb, 'same')", topic)
    await _sequenced(db, topic, 1)


async def test_replay_pages_through_a_topic(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    topic = new_topic()
    await publish(
        client, topic, [{"type": "n", "data": {"i": i}, "id": f"e{i}"} for i in range(25)]
    )
    await _sequenced(db, topic, 25)

    seen: list[int] = []
    url: str | None = f"/feeds/{topic}/events?after=0&limit=10"
    pages = 0
    while url:
        body = (await client.get(url)).json()
        pages += 1
        assert body["topic"] == topic and body["head"] == 25
        for event in body["events"]:
            assert set(event) == {"seq", "type", "data", "time", "id", "hash"}
            assert len(event["hash"]) == 64
            assert event["data"] == {"i": event["seq"] - 1}
            assert event["id"] == f"e{event['seq'] - 1}"
            seen.append(event["seq"])
        url = body["next"] if body["events"] else None
    assert seen == list(range(1, 26))
    assert pages == 4  # 10 + 10 + 5, then an empty page at the head

    times = [
        e["time"] for e in (await client.get(f"/feeds/{topic}/events?limit=25")).json()["events"]
    ]
    assert times == sorted(times)


async def test_replay_of_an_unknown_topic_is_empty(client: httpx.AsyncClient) -> None:
    topic = new_topic()
    body = (await client.get(f"/feeds/{topic}/events")).json()
    assert body == {
        "topic": topic,
        "after": 0,
        "head": 0,
        "first_seq": 1,
        "compacted": False,
        "events": [],
        "next": f"/feeds/{topic}/events?after=0&limit=100",
    }


async def test_health_readiness_and_openapi(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = (await client.get("/readyz")).json()
    assert ready["status"] == "ready" and ready["database"] and ready["listener"]
    schema = (await client.get("/schema/openapi.json")).json()
    assert {"/feeds/{topic}", "/feeds/{topic}/events", "/healthz", "/readyz"} <= set(
        schema["paths"]
    )
    assert {"get", "post"} <= set(schema["paths"]["/feeds/{topic}"])


async def test_live_delivery_never_needs_the_hubs_recovery(
    client: httpx.AsyncClient, service: Service
) -> None:
    # The hub recovers from a failed read by re-checking every head after a pause, so a
    # bug in its read path still delivers everything, only late: the log tells.
    topic = new_topic()
    timed = (await metrics(client)).get("changefeed_delivery_latency_seconds_count", 0.0)
    async with subscribe(client, topic) as stream:
        for n in range(1, 21):
            assert (await publish(client, topic, {"data": n})).status_code == 202
            assert json.loads((await stream.next()).data) == n
    # Each event read by the fan-out is timed once (the framed page carries publish times).
    now = (await metrics(client))["changefeed_delivery_latency_seconds_count"]
    assert now - timed >= 20
    log = service.log()
    assert "hub.refresh_failed" not in log
    assert "Traceback" not in log
