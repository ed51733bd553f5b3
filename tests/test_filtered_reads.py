"""Filtered reads (``where``): replay pages and NDJSON exports return exactly the events
whose data contains the filter, PostgreSQL's ``@>`` being the oracle, from random starting
points, and a sparse filter's pages move on past what they scanned."""

from __future__ import annotations

import json
import random

import asyncpg
import httpx
import pytest

from tests.support import new_topic

NDJSON = {"Accept": "application/x-ndjson"}
SEED = random.randrange(1 << 30)


async def _fill(db: asyncpg.Connection, topic: str, count: int) -> None:
    """``count`` events with tenants and nested data, numbered (no service needed)."""
    await db.execute(
        """
        SELECT changefeed.publish($1, 'order', jsonb_build_object(
            'tenant', CASE WHEN i % 12000 = 7 THEN 'rare' ELSE 't' || (i % 3) END,
            'n', i % 4, 'tags', jsonb_build_array('x' || (i % 2), i % 3),
            'new', jsonb_build_object('tenant_id', i % 3, 'total', (i % 2)::numeric / 2)))
        FROM generate_series(1, $2) i
        """,
        topic,
        count,
    )
    while (await db.fetchrow("SELECT * FROM changefeed.sequence(10000)"))["consumed"]:
        pass


FILTERS = [
    {"tenant": "t1"},
    {"tenant": "rare"},
    {"new": {"tenant_id": 2, "total": 0.50}},
    {"n": 1.0, "tags": ["x1"]},
    {"tags": [2, "x0"]},
    {"tenant": "nobody"},
    {},
]


async def _expected(db: asyncpg.Connection, topic: str, where: dict, after: int) -> list[int]:  # type: ignore[type-arg]
    rows = await db.fetch(
        "SELECT seq FROM changefeed.events WHERE topic = $1 AND seq > $2 "
        "AND data @> $3::jsonb ORDER BY seq",
        topic,
        after,
        json.dumps(where),
    )
    return [r["seq"] for r in rows]


async def test_pages_and_exports_hold_exactly_the_matching_events(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    rng = random.Random(SEED)
    topic = new_topic("filtered")
    await _fill(db, topic, 25_000)
    for where in FILTERS:
        after = rng.choice([0, 0, rng.randrange(25_000)])
        expected = await _expected(db, topic, where, after)
        # Pages, following `next` (a sparse filter's pages are empty but move on).
        got: list[int] = []
        url = f"/feeds/{topic}/events"
        params: dict[str, str] | None = {
            "after": str(after),
            "where": json.dumps(where),
            "limit": str(rng.choice([37, 100, 1000])),
        }
        for _ in range(2000):  # bounded: 8,334 events in pages of 37 take 226
            response = await client.get(url, params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            got += [e["seq"] for e in page["events"]]
            assert all(json.dumps(where) == "{}" or e["data"] for e in page["events"])
            if page["next"].split("after=")[1].split("&")[0] == str(page["head"]):
                break
            url, params = page["next"], None
        assert got == expected, (SEED, where, after)
        # The export: one request, the same events.
        response = await client.get(
            f"/feeds/{topic}/events",
            params={"after": str(after), "where": json.dumps(where)},
            headers=NDJSON,
        )
        assert response.status_code == 200, response.text
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert [e["seq"] for e in lines] == expected, (SEED, where, after)


async def test_a_sparse_filters_page_moves_on_without_events(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    topic = new_topic("sparse")
    await _fill(db, topic, 25_000)
    response = await client.get(
        f"/feeds/{topic}/events", params={"after": "7", "where": '{"tenant": "rare"}'}
    )
    page = response.json()
    assert page["events"] == [] and page["head"] == 25_000
    # It scanned 10,000 seqs: the next page starts there, with the same filter.
    assert page["next"].startswith(f"/feeds/{topic}/events?after=10007&where=")
    following = (await client.get(page["next"])).json()
    assert [e["seq"] for e in following["events"]] == [12007]


@pytest.mark.parametrize(
    "where, problem",
    [
        ("tenant=acme", "expected a JSON object"),
        ("[1]", "must be a JSON object"),
        ('{"a": "\\u0000"}', "NUL character"),
        ('{"a": 1e99999}', "no event can hold"),
        ('{"a": ' * 17 + "1" + "}" * 17, "deeper than 16"),
    ],
)
async def test_a_bad_filter_is_a_400_problem(
    client: httpx.AsyncClient, where: str, problem: str
) -> None:
    for headers in ({}, NDJSON):
        response = await client.get(
            f"/feeds/{new_topic()}/events", params={"where": where}, headers=headers
        )
        assert response.status_code == 400, response.text
        assert problem in response.json()["detail"]
