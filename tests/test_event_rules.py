"""One rule for an event, wherever it comes from: over HTTP, from SQL, from a captured row.

Data at most 64 levels deep, no number of 1e4300 or more, at most the limit as stored
(what subscribers receive, however small the request); types and ids without control
characters or line separators. Bad input is a 400 or a clear SQL error, never a 500 or a
stall, and a producer cannot lift the limit.
"""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from changefeed.core.topics import EVENT_ID, PATTERN, TOPIC, TYPE
from changefeed.ops import migrate
from tests.support import changefeed, create_database, new_topic

PROBLEM = "application/problem+json"


def nested(depth: int) -> str:
    """JSON data ``depth`` containers deep."""
    return "[" * depth + "]" * depth


# (data as JSON text, whether it is allowed, what the refusal says)
DATA = [
    (nested(64), True, ""),
    (nested(65), False, "nested more than 64 levels"),
    ('{"a": ' * 64 + "1" + "}" * 64, True, ""),
    ('{"a": ' * 65 + "1" + "}" * 65, False, "nested more than 64 levels"),
    ("1e4299", True, ""),  # 4300 digits as stored
    ("[1e4300]", False, "1e4300 or more"),
    ("-1.5e4300", False, "1e4300 or more"),
    ("[1e131071, 1e131071]", False, "1e4300 or more"),
    # Small to send, large as stored: exponents are written out in full.
    ("[" + ", ".join(["1e4000"] * 20) + "]", False, "bytes as stored"),
    ("[" + ", ".join(["1e-16000"] * 5) + "]", False, "bytes as stored"),
    # 70 KB that would be 43 MB as stored: refused after counting the first few numbers.
    ("[" + ", ".join(["1e4299"] * 10_000) + "]", False, "is over"),
    # A zero keeps the scale it was written with: 8 bytes written, 16,385 stored.
    ('{"n": 0, "z": 0.0, "neg": -0, "e": 0e5, "small": 0e-3}', True, ""),
    ("[" + ", ".join(["0e-16383"] * 5) + "]", False, "is over"),
    ('"' + "x" * 65534 + '"', True, ""),
    ('"' + "x" * 65535 + '"', False, "65537 bytes as stored"),
]


@pytest.mark.parametrize(("data", "allowed", "says"), DATA, ids=lambda v: str(v)[:24])
async def test_sql_publish_follows_the_rule(
    db: asyncpg.Connection, data: str, allowed: bool, says: str
) -> None:
    statement = "SELECT changefeed.publish($1, 'x', $2::jsonb)"
    async with db.transaction():
        await db.execute("SET LOCAL statement_timeout = '10s'")  # a stall fails, not hangs
        if allowed:
            await db.execute(statement, new_topic(), data)
            return
        with pytest.raises(asyncpg.PostgresError, match=says) as refused:
            await db.execute(statement, new_topic(), data)
    assert refused.value.sqlstate in ("22023", "54000")


@pytest.mark.parametrize(("data", "allowed", "says"), DATA, ids=lambda v: str(v)[:24])
async def test_http_publish_follows_the_rule(
    client: httpx.AsyncClient, data: str, allowed: bool, says: str
) -> None:
    body = b'{"data": ' + data.encode() + b"}"
    response = await client.post(
        f"/feeds/{new_topic()}", content=body, headers={"content-type": "application/json"}
    )
    if allowed:
        assert response.status_code == 202, response.text
        return
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert says in response.json()["detail"]


async def test_a_tiny_request_cannot_make_an_enormous_event(client: httpx.AsyncClient) -> None:
    async def publish(body: bytes) -> str:
        response = await client.post(
            f"/feeds/{new_topic()}", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, response.text
        detail: str = response.json()["detail"]
        return detail

    # The request of about 900 bytes, which stored a 13 MB event.
    body = b'{"data": [' + b",".join([b"1e131071"] * 100) + b"]}"
    assert len(body) < 1000
    assert "1e4300 or more" in await publish(body)
    # Numbers just under that: 43 MB as stored, from 70 KB. The outsized numbers are
    # measured one by one, and the count stops just past the limit ("over"), instead of
    # PostgreSQL printing the whole value to find its size.
    body = b'{"data": [' + b",".join([b"1e4299"] * 10_000) + b"]}"
    detail = await publish(body)
    assert "is over" in detail and "bytes as stored" in detail
    assert int(detail.split("is over ")[1].split(" ")[0]) < 80_000
    # Zeros with a scale: 630 KB that would be 1.1 GB as stored (PostgreSQL ran out of
    # memory printing it before zeros were counted).
    body = b'{"data": [' + b",".join([b"0e-16383"] * 70_000) + b"]}"
    detail = await publish(body)
    assert "is over" in detail and int(detail.split("is over ")[1].split(" ")[0]) < 90_000


async def test_what_is_stored_counts_not_what_is_sent(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    topic = new_topic()
    # 100 KB on the wire, a few bytes as stored: accepted.
    padded = b'{"data": [1' + b" " * 100_000 + b"]}"
    response = await client.post(
        f"/feeds/{topic}", content=padded, headers={"content-type": "application/json"}
    )
    assert response.status_code == 202, response.text

    async def stored() -> list[str]:
        return [
            r[0]
            for r in await db.fetch(
                "SELECT data::text FROM changefeed.inbox WHERE topic = $1 UNION ALL "
                "SELECT data::text FROM changefeed.events WHERE topic = $1",
                topic,
            )
        ]

    assert await stored() == ["[1]"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"data": "\xff\xfe"}',  # not UTF-8
        b'{"data": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",  # deeper than the parser goes
        '{"type": "a\u0085b"}'.encode(),  # NEL: a C1 control character
        '{"type": "a\u2028b"}'.encode(),  # line and paragraph separators
        '{"type": "a\u2029b"}'.encode(),
        '{"data": 1, "id": "a\u2028id: 9"}'.encode(),
        b'{"type": "a\\u0085b"}',  # the same, escaped
        b'{"type": "\\ud800"}',  # a lone surrogate
    ],
    ids=["not-utf8", "deep", "nel", "ls", "ps", "id-ls", "nel-escaped", "surrogate"],
)
async def test_odd_bodies_are_400(
    client: httpx.AsyncClient, db: asyncpg.Connection, body: bytes
) -> None:
    topic = new_topic()
    response = await client.post(
        f"/feeds/{topic}", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert await db.fetchval("SELECT count(*) FROM changefeed.inbox WHERE topic = $1", topic) == 0


@pytest.mark.parametrize("bound", ["since", "until"])
@pytest.mark.parametrize(
    "value", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "99999-01-01"]
)
async def test_an_export_with_an_impossible_time_is_400(
    client: httpx.AsyncClient, bound: str, value: str
) -> None:
    response = await client.get(
        f"/feeds/{new_topic()}/events",
        params={bound: value},
        headers={"accept": "application/x-ndjson"},
    )
    assert response.status_code == 400, response.text
    assert bound in response.json()["detail"]


_odd = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8", exclude_categories=["Cs"]),
        st.sampled_from("\x00\x01\x1f\x7f\x80\x85\x9f\xa0\u2027\u2028\u2029\u202a\ufeff"),
    ),
    max_size=210,
)


_name = st.one_of(
    _odd,
    st.text(alphabet="abcXYZ019._:-*/ é", max_size=205),
    st.from_regex(r"[A-Za-z0-9._:*-]{195,205}", fullmatch=True),
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=_name)
def test_names_types_and_ids_follow_one_rule(rules_database: str, value: str) -> None:
    """The HTTP layer's checks and the database's are one rule each, whatever the text:
    topics (and consumer names), patterns, types and ids."""

    async def check() -> None:
        conn = await asyncpg.connect(rules_database)
        try:
            for column, rule in (
                ("topic", TOPIC),
                ("pattern", PATTERN),
                ("type", TYPE),
                ("id", EVENT_ID),
            ):
                statement = {
                    "topic": "SELECT changefeed.valid_topic($1)",
                    "pattern": "SELECT changefeed.valid_pattern($1)",
                    "type": "SELECT changefeed.event_ok('t', $1, NULL, 'null')",
                    "id": "SELECT changefeed.event_ok('t', 'x', $1, 'null')",
                }[column]
                try:
                    answer = await conn.fetchval(statement, value)
                except (
                    asyncpg.InvalidParameterValueError,
                    asyncpg.CharacterNotInRepertoireError,
                    asyncpg.UntranslatableCharacterError,
                    ValueError,
                ):
                    stored = False
                else:
                    stored = answer is not False  # valid_*() answer; event_ok() raises
                assert stored == bool(rule.fullmatch(value)), (column, value)
        finally:
            await conn.close()

    asyncio.run(check())


@pytest.fixture(scope="module")
def rules_database(admin_url: str, template: str) -> str:
    return asyncio.run(create_database(admin_url, template))


async def test_captured_rows_follow_the_rule(db: asyncpg.Connection) -> None:
    await db.execute("CREATE TABLE docs (id int PRIMARY KEY, body jsonb, n numeric)")
    await db.fetchval("SELECT changefeed.capture('docs')")
    await db.execute("INSERT INTO docs VALUES (1, '{}', 1e4299)")  # 4300 digits: fine
    for row, says in [
        (f"(2, '{nested(64)}', 0)", "nested more than 64 levels"),
        ("(3, '[1e5000]', 0)", "1e4300 or more"),
        ("(4, '{}', -1e4300)", "1e4300 or more"),
        ("(5, ('[' || repeat('1e4000, ', 20) || '1]')::jsonb, 0)", "bytes as stored"),
    ]:
        with pytest.raises(asyncpg.PostgresError, match=says):
            await db.execute(f"INSERT INTO docs VALUES {row}")
    assert await db.fetchval("SELECT count(*) FROM docs") == 1  # the writers' statements failed


@pytest.mark.slow
async def test_the_limit_is_the_databases_set_by_migrate(admin_url: str) -> None:
    url = await create_database(admin_url)
    # A limit set the old way (a database default of the setting) carries over.
    name = url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"ALTER DATABASE {name} SET changefeed.max_event_bytes = 2048")
    finally:
        await admin.close()
    await asyncio.to_thread(migrate.upgrade, url, revision="0007")
    await asyncio.to_thread(migrate.upgrade, url)
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT changefeed.max_event_bytes()") == 2048
        # `changefeed migrate` applies CHANGEFEED_MAX_EVENT_BYTES when it is set...
        env = {"CHANGEFEED_DATABASE_URL": url, "CHANGEFEED_MAX_EVENT_BYTES": "100"}
        result = await asyncio.to_thread(changefeed, "migrate", env=env)
        assert result.returncode == 0, result.stderr
        assert await conn.fetchval("SELECT changefeed.max_event_bytes()") == 100
        with pytest.raises(asyncpg.ProgramLimitExceededError, match="over the limit of 100"):
            await conn.execute("SELECT changefeed.publish('t', 'x', to_jsonb(repeat('x', 99)))")
        await conn.execute("SELECT changefeed.publish('t', 'x', to_jsonb(repeat('x', 98)))")
        # ...and leaves the database's alone when it is not.
        result = await asyncio.to_thread(
            changefeed, "migrate", env={"CHANGEFEED_DATABASE_URL": url}
        )
        assert result.returncode == 0, result.stderr
        assert await conn.fetchval("SELECT changefeed.max_event_bytes()") == 100
        bad = await asyncio.to_thread(
            changefeed, "migrate", env={**env, "CHANGEFEED_MAX_EVENT_BYTES": "0"}
        )
        assert bad.returncode != 0
    finally:
        await conn.close()
