"""Filtered streams (``where``): a stream delivers exactly the events whose data contains
the filter (PostgreSQL's ``@>`` as the oracle), catching up and live, resumed at random
points with the last id it was sent, id-only frames included; a sparse stream's resume point
moves past what it left out."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator

import asyncpg
import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.support import Service, metrics, new_topic, wait_for

SEED = random.randrange(1 << 30)

FILTERS = [
    {"tenant": "t1"},
    {"new": {"tenant_id": 2}},
    {"tags": ["x1"], "n": 1.0},
    {"tenant": "rare"},
    {},
]


@pytest.fixture(scope="module")
def service(module_database: str) -> Iterator[Service]:
    # Keep-alives (which carry a sparse stream's resume point) every half second.
    with Service(module_database, env={"CHANGEFEED_KEEPALIVE_SECONDS": "0.5"}) as svc:
        yield svc


def _event(i: int) -> dict[str, object]:
    return {
        "type": "order",
        "data": {
            "tenant": "rare" if i % 97 == 5 else f"t{i % 3}",
            "n": i % 4,
            "tags": [f"x{i % 2}", i % 3],
            "new": {"tenant_id": i % 3},
        },
    }


async def _publish(client: httpx.AsyncClient, topic: str, first: int, count: int) -> None:
    for start in range(first, first + count, 50):
        batch = [_event(i) for i in range(start, min(first + count, start + 50))]
        response = await client.post(f"/feeds/{topic}", json=batch)
        assert response.status_code == 202, response.text


async def _expected(db: asyncpg.Connection, topic: str, where: object, after: int) -> list[int]:
    rows = await db.fetch(
        "SELECT seq FROM changefeed.events WHERE topic = $1 AND seq > $2 "
        "AND data @> $3::jsonb ORDER BY seq",
        topic,
        after,
        json.dumps(where),
    )
    return [r["seq"] for r in rows]


async def _read(
    client: httpx.AsyncClient,
    topic: str,
    where: object,
    resume: str,
    *,
    until_seq: int,
    stop_after: int | None = None,
) -> tuple[list[int], str]:
    """Events of a filtered stream resumed after ``resume``, until the stream's position
    (the last id it sent, events or not) reaches ``until_seq``, or ``stop_after`` events;
    and the last id it sent."""
    seqs: list[int] = []
    last = resume
    async with aconnect_sse(
        client,
        "GET",
        f"/feeds/{topic}",
        params={"where": json.dumps(where)},
        headers={"Last-Event-ID": resume},
    ) as source:
        source.response.raise_for_status()
        async with asyncio.timeout(30):
            async for event in source.aiter_sse():
                assert event.event != "reset", event.data
                if event.id:
                    last = event.id
                if event.data:
                    seqs.append(int(event.id.split(".")[0]))
                    if stop_after is not None and len(seqs) >= stop_after:
                        break
                if int(last.split(".")[0]) >= until_seq:
                    break
    return seqs, last


async def test_filtered_streams_hold_exactly_the_matching_events(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    rng = random.Random(SEED)
    topic = new_topic("fs")
    await _publish(client, topic, 1, 300)  # history, for catching up
    total = 600

    async def later() -> None:
        await asyncio.sleep(0.2)  # pacing only: some while the streams are live
        await _publish(client, topic, 301, total - 300)

    publishing = asyncio.create_task(later())
    results = []
    for where in FILTERS:
        start = rng.choice([0, rng.randrange(1, 300)])
        got: list[int] = []
        resume = str(start)
        # Read in pieces, each resumed with the last id sent (events or id-only frames).
        for _ in range(200):
            seqs, resume = await _read(
                client, topic, where, resume, until_seq=total, stop_after=rng.randint(1, 40)
            )
            got += seqs
            if int(resume.split(".")[0]) >= total:
                break
        results.append((where, start, got))
    await publishing
    for where, start, got in results:
        assert got == await _expected(db, topic, where, start), (SEED, where, start)


async def test_a_sparse_streams_resume_point_moves_past_what_it_left_out(
    client: httpx.AsyncClient,
) -> None:
    """Nothing matches, yet the stream's id moves on (an id-only frame with a keep-alive,
    and after a catch-up read): a reconnect starts at the head, not at the start."""
    topic = new_topic("sparse")
    await _publish(client, topic, 1, 120)
    where = {"tenant": "nobody"}
    seqs, last = await _read(client, topic, where, "0", until_seq=120)
    assert seqs == [] and last.startswith("120.")
    # Live: the next events are passed over too, and the id follows.
    reading = asyncio.create_task(_read(client, topic, where, last, until_seq=150))
    await _publish(client, topic, 121, 30)
    seqs, last = await reading
    assert seqs == [] and last.startswith("150.")


async def test_a_bad_filter_is_refused_before_the_stream_opens(
    client: httpx.AsyncClient,
) -> None:
    for url in (f"/feeds/{new_topic()}", "/feeds/orders.*", "/feeds"):
        response = await client.get(url, params={"where": '{"a": ', "topic": "x"})
        assert response.status_code == 400, response.text
        assert "where" in response.json()["detail"]


async def test_a_read_is_offered_only_to_the_filters_that_take_its_events(
    client: httpx.AsyncClient,
) -> None:
    """The fast path: thirty subscribers with a tenant each; ten events for one tenant
    reach its subscriber, and no other is handed anything (a batch per read to every
    filtered subscriber was the first version: 30 offers a read)."""
    topic = new_topic("fast")
    await _publish(client, topic, 1, 1)
    before = await metrics(client)
    streams = []
    for n in range(30):
        streams.append(
            asyncio.create_task(
                _read(client, topic, {"tenant": f"x{n}"}, "1", until_seq=11, stop_after=10)
            )
        )
    await wait_for(lambda: _open(client, 30), timeout=10)
    for n in range(10):
        response = await client.post(f"/feeds/{topic}", json={"data": {"tenant": "x0", "n": n}})
        assert response.status_code == 202
    first, *others = await asyncio.gather(*streams)
    assert first[0] == list(range(2, 12))
    assert all(seqs == [] for seqs, _ in others)
    after = await metrics(client)
    offers = after["changefeed_filtered_offers_total"] - before["changefeed_filtered_offers_total"]
    assert 1 <= offers <= 10, offers


async def _open(client: httpx.AsyncClient, streams: int) -> bool:
    return (await metrics(client))["changefeed_open_streams"] >= streams
