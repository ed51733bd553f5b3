"""The publish fast path (web/fastpath.py) and the Litestar handler answer alike.

Requests the fast path takes (plain JSON with a Content-Length) and requests it hands over
(CORS, chunked bodies, repeated headers, refusals after the body was read) are sent side
by side; both kinds store their events once, in order, and refusals read the same.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest

from tests.support import Service, metrics, new_topic, subscribe, wait_for

ORIGIN = "https://app.example"
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def service(module_database: str) -> Iterator[Service]:
    with Service(module_database, env={"CHANGEFEED_CORS_ORIGINS": ORIGIN}) as svc:
        yield svc


async def _chunked(body: bytes) -> AsyncIterator[bytes]:
    yield body  # no Content-Length: httpx sends it chunked


async def test_both_paths_store_each_event_once_in_order(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    topic = new_topic()
    url = f"/feeds/{topic}"
    answers = [
        await client.post(url, json={"data": 1}),  # fast
        await client.post(url, json={"data": 2}, headers={"origin": ORIGIN}),  # CORS
        await client.post(url, content=_chunked(b'{"data": 3}'), headers=JSON),  # chunked
        await client.post(url, json={"data": 4}, headers=[("x-a", "1"), ("x-a", "2")]),
        await client.post(url, json=[{"data": 5}, {"data": 6, "type": "t", "id": "six"}]),
    ]
    assert [a.status_code for a in answers] == [202] * 5
    assert [a.json() for a in answers] == [{"accepted": n} for n in (1, 1, 1, 1, 2)]
    assert all(a.headers["content-type"].startswith("application/json") for a in answers)
    # The CORS answer came through the middleware that adds its headers.
    assert answers[1].headers["access-control-allow-origin"] == ORIGIN

    async def sequenced() -> bool:
        head = await db.fetchval("SELECT head FROM changefeed.topics WHERE topic = $1", topic)
        return head == 6

    assert await wait_for(sequenced)
    page = (await client.get(f"/feeds/{topic}/events", params={"after": 0})).json()
    assert [e["data"] for e in page["events"]] == [1, 2, 3, 4, 5, 6]
    assert page["events"][5]["type"] == "t" and page["events"][5]["id"] == "six"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        # Refused by the parser after the body was read: the framework gets the body again
        # (an empty body would read "malformed JSON" instead).
        (b'{"type": 5}', "invalid event"),
        (b'{"data": 1, "extra": 2}', "invalid event"),
        # Refused by PostgreSQL after every other check passed: nothing stored, 400 (worded
        # by the fast path with the app's function).
        (b'{"data": "\\u0000"}', "unsupported Unicode escape sequence"),
    ],
)
async def test_refusals_after_the_body_was_read_read_alike(
    client: httpx.AsyncClient, db: asyncpg.Connection, body: bytes, detail: str
) -> None:
    topic = new_topic()
    refused = await client.post(
        f"/feeds/{topic}", content=body, headers={"content-type": "application/json"}
    )
    assert refused.status_code == 400, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    problem = refused.json()
    assert problem["type"] == "urn:changefeed:problem:invalid-input"
    assert detail in problem["detail"]
    stored = await db.fetchval("SELECT count(*) FROM changefeed.inbox WHERE topic = $1", topic)
    assert stored == 0


async def test_other_routes_under_feeds_are_untouched(client: httpx.AsyncClient) -> None:
    topic = new_topic()
    # A POST to a deeper path is not a publish: the framework answers it (405 or 404).
    deeper = await client.post(f"/feeds/{topic}/events", json={"data": 1})
    assert deeper.status_code in (404, 405)
    assert deeper.headers["content-type"].startswith("application/problem+json")
    bad_topic = await client.post("/feeds/bad%20topic", json={"data": 1})
    assert bad_topic.status_code == 400
    assert bad_topic.json()["type"] == "urn:changefeed:problem:invalid-input"


async def test_the_fast_paths_are_taken(client: httpx.AsyncClient) -> None:
    """Both rest on internals of uvicorn and Litestar (web/uvicorn_direct.py,
    web/fastpath.py): if an upgrade stops them from being taken, this fails rather than the
    service slowing down unnoticed."""
    topic = new_topic()
    before = await metrics(client)
    assert (await client.post(f"/feeds/{topic}", json={"data": 1})).status_code == 202
    # A chunked body is not for the fast path: counted once, for the plain one.
    chunked = await client.post(f"/feeds/{topic}", content=_chunked(b'{"data": 2}'), headers=JSON)
    assert chunked.status_code == 202
    after = await metrics(client)
    assert after["changefeed_fast_publishes_total"] - before["changefeed_fast_publishes_total"] == 1

    async with subscribe(client, topic) as stream:
        # Parked at the live tail: the next batch is written to its connection directly.
        assert (await client.post(f"/feeds/{topic}", json={"data": 3})).status_code == 202
        assert (await stream.next()).data == "3"
    written = await metrics(client)
    assert written["changefeed_direct_writes_total"] > after["changefeed_direct_writes_total"]
