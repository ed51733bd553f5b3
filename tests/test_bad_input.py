"""Bad input gets a 4xx with a JSON problem body and changes nothing."""

from __future__ import annotations

import asyncio
import re

import asyncpg
import httpx
import pytest

from tests.support import Service, new_topic, publish, subscribe, wait_for

PROBLEM = "application/problem+json"
JSON = "application/json"


def _assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status
    assert body["detail"]
    return body  # type: ignore[no-any-return]


async def _inbox_and_events(db: asyncpg.Connection, topic: str) -> tuple[int, int]:
    inbox = await db.fetchval("SELECT count(*) FROM changefeed.inbox WHERE topic = $1", topic)
    stored = await db.fetchval("SELECT count(*) FROM changefeed.events WHERE topic = $1", topic)
    return inbox, stored


@pytest.mark.parametrize(
    ("header", "query"),
    [
        ("abc", None),
        ("-1", None),
        ("1.5", None),
        (None, "abc"),
        (None, "-3"),
        (None, "99999999999999999999999"),
    ],
)
async def test_bad_starting_point(
    client: httpx.AsyncClient, header: str | None, query: str | None
) -> None:
    headers = {"Last-Event-ID": header} if header is not None else {}
    params = {"after": query} if query is not None else {}
    response = await client.get(f"/feeds/{new_topic()}", headers=headers, params=params)
    body = _assert_problem(response, 400)
    assert "seq" in str(body["detail"])


async def test_seq_beyond_head(client: httpx.AsyncClient) -> None:
    topic = new_topic()
    async with subscribe(client, topic) as stream:
        await publish(client, topic, [{"data": 1}, {"data": 2}])
        await stream.take(2)
    body = _assert_problem(await client.get(f"/feeds/{topic}", params={"after": "3"}), 409)
    assert body["head"] == 2
    _assert_problem(await client.get(f"/feeds/{topic}", headers={"Last-Event-ID": "7"}), 409)
    _assert_problem(await client.get(f"/feeds/{topic}/events", params={"after": "3"}), 409)
    # A topic that never had events has head 0.
    _assert_problem(await client.get(f"/feeds/{new_topic()}", params={"after": "1"}), 409)


@pytest.mark.parametrize("topic", ["has space", "a" * 201, "semi;colon", "ünïcode", "pi|pe"])
async def test_bad_topic(client: httpx.AsyncClient, db: asyncpg.Connection, topic: str) -> None:
    for response in (
        await client.get(f"/feeds/{topic}"),
        await client.get(f"/feeds/{topic}/events"),
        await client.post(f"/feeds/{topic}", json={"data": 1}),
    ):
        _assert_problem(response, 400)
    assert await db.fetchval("SELECT count(*) FROM changefeed.inbox") == 0


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[]",
        b'{"type": 5}',
        b'{"type": ""}',
        b'{"type": "a\\nb"}',
        b'{"id": ""}',
        b'{"data": 1, "unknown": true}',
        b'"just a string"',
        b'[{"data": 1}, {"type": null}]',
        b'{"data": "\\u0000"}',
    ],
)
async def test_bad_body(client: httpx.AsyncClient, db: asyncpg.Connection, body: bytes) -> None:
    topic = new_topic()
    response = await client.post(
        f"/feeds/{topic}", content=body, headers={"content-type": "application/json"}
    )
    _assert_problem(response, 400)
    assert await _inbox_and_events(db, topic) == (0, 0)


async def test_event_over_size_limit(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    topic = new_topic()
    big = "x" * (64 * 1024)
    body = _assert_problem(await publish(client, topic, [{"data": 1}, {"data": big}]), 400)
    assert "limit" in str(body["detail"])
    assert await _inbox_and_events(db, topic) == (0, 0)
    # Just under the limit is fine: the limit counts the data's JSON bytes.
    assert (await publish(client, topic, {"data": "x" * (64 * 1024 - 2)})).status_code == 202


async def test_batch_over_limit(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    topic = new_topic()
    body = _assert_problem(await publish(client, topic, [{"data": i} for i in range(1001)]), 400)
    assert "1000" in str(body["detail"])
    assert await _inbox_and_events(db, topic) == (0, 0)


async def test_body_over_size_limit(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"/feeds/{new_topic()}",
        content=b"[" + b"1," * (5 * 1024 * 1024) + b"1]",
        headers={"content-type": "application/json"},
    )
    _assert_problem(response, 413)


@pytest.mark.parametrize("limit", ["0", "1001", "x", "-1"])
async def test_bad_replay_limit(client: httpx.AsyncClient, limit: str) -> None:
    _assert_problem(await client.get(f"/feeds/{new_topic()}/events", params={"limit": limit}), 400)


async def test_unknown_route_is_a_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/nope")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith(PROBLEM)


async def test_sql_publish_rejects_bad_input(db: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.InvalidParameterValueError, match="invalid topic"):
        await db.execute("SELECT changefeed.publish('bad topic', 't', '1'::jsonb)")
    with pytest.raises(asyncpg.InvalidParameterValueError, match="invalid type"):
        await db.execute("SELECT changefeed.publish('ok', E'a\\nb', '1'::jsonb)")
    with pytest.raises(asyncpg.ProgramLimitExceededError, match="over the limit of 65536"):
        await db.execute("SELECT changefeed.publish('ok', 't', to_jsonb(repeat('x', 65535)))")
    assert await db.fetchval("SELECT count(*) FROM changefeed.inbox") == 0


# The inbox's checks (and publish()'s) against the rules they implement: a topic is 1 to 200
# of [A-Za-z0-9._:-], a type 1 to 200 characters (not bytes) without control characters
# or line separators (test_event_rules.py compares the type rule with the HTTP layer's).
_TOPIC_RULE = re.compile(r"[A-Za-z0-9._:-]{1,200}")
_TYPE_RULE = re.compile("[^\x00-\x1f\x7f-\x9f\u2028\u2029]{1,200}")


@pytest.mark.parametrize(
    ("topic", "type_"),
    [
        ("t" * 200, "é" * 200),
        ("t" * 201, "ok"),
        ("", "ok"),
        ("a b", "ok"),
        ("ok", "é" * 201),
        ("ok", ""),
        ("ok", "a\tb"),
        ("ok", "a\x7fb"),
        ("ok", "a\x85b"),
        ("ok", "a\u2028b"),
        ("A-z.0_9:x", "any text, even ü and {braces}"),
    ],
)
async def test_inbox_checks_follow_the_rules(
    db: asyncpg.Connection, topic: str, type_: str
) -> None:
    allowed = bool(_TOPIC_RULE.fullmatch(topic) and _TYPE_RULE.fullmatch(type_))
    for statement in (
        "INSERT INTO changefeed.inbox (topic, type, data) VALUES ($1, $2, '1')",
        "SELECT changefeed.publish($1, $2, '1'::jsonb)",
    ):
        try:
            await db.execute(statement, topic, type_)
        except (asyncpg.CheckViolationError, asyncpg.InvalidParameterValueError):
            stored = False
        else:
            stored = True
        assert stored == allowed, (statement, topic, type_)


async def test_oversized_headers_get_431(service: Service) -> None:
    async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as client:
        response = await client.get("/healthz", headers={"X-Big": "a" * (64 * 1024)})
        assert response.status_code == 431
        assert response.headers["content-type"].startswith(PROBLEM)
        many = {f"X-H{i}": "v" * 20 for i in range(2000)}
        assert (await client.get("/healthz", headers=many)).status_code == 431
        # Ordinary requests on the same server are unaffected.
        assert (await client.get("/healthz", headers={"X-Small": "a" * 1000})).status_code == 200


async def test_patterns_are_for_subscribing_only(client: httpx.AsyncClient) -> None:
    _assert_problem(await client.post("/feeds/orders.*", json={"data": 1}), 400)
    _assert_problem(await client.get("/feeds/orders.*/events"), 400)
    _assert_problem(await client.get("/feeds/bad pattern*"), 400)
    _assert_problem(await client.get("/feeds"), 400)  # no topic named
    _assert_problem(await client.get("/feeds", params={"topic": ["ok", "not ok"]}), 400)


async def test_a_bad_publish_among_concurrent_ones_fails_alone(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Concurrent publishes are committed together (group commit): one that PostgreSQL
    refuses must get its 400 while every other one is stored."""
    topic = new_topic()
    good = [client.post(f"/feeds/{topic}", json={"data": {"n": n}}) for n in range(40)]
    bad = client.post(
        f"/feeds/{topic}", content=b'{"data": "\\u0000"}', headers={"content-type": JSON}
    )
    *answers, refused = await asyncio.gather(*good, bad)
    assert [a.status_code for a in answers] == [202] * 40
    assert refused.status_code == 400

    async def stored() -> bool:
        count = await db.fetchval("SELECT count(*) FROM changefeed.events WHERE topic = $1", topic)
        return bool(count == 40)

    await wait_for(stored, timeout=30)
