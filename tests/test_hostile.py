"""Hostile input: fuzzing driven by the OpenAPI schema (schemathesis) and by hypothesis,
slow clients, and oversized bodies. No 500s, no hangs, and a replica keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Iterator

import asyncpg
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from changefeed.core.auth import covers
from changefeed.core.topics import InvalidInput, Selector, glob_match, parse_resume
from tests.support import Service, new_topic

pytestmark = pytest.mark.slow

# Streams never end, so schemathesis (which reads whole responses) skips them; the stream
# fuzzer below opens them and reads only the status.
STREAMS = r"^/feeds/(\{topic\})?$"


@pytest.fixture(scope="module")
def service(module_database: str) -> Iterator[Service]:
    with Service(
        module_database,
        env={
            "CHANGEFEED_HEADER_TIMEOUT_SECONDS": "1",
            "CHANGEFEED_BODY_TIMEOUT_SECONDS": "1",
            "CHANGEFEED_MAX_BODY_BYTES": "65536",
        },
    ) as svc:
        yield svc


def test_the_api_never_fails_on_generated_input(service: Service) -> None:
    # Driven by hand rather than by schemathesis' pytest plugin, which this pytest breaks.
    api = schemathesis.openapi.from_url(f"{service.base_url}/schema/openapi.json")
    checked = []
    for found in api.get_all_operations():
        operation = found.ok()
        if operation.method.upper() == "GET" and re.match(STREAMS, operation.path):
            continue

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=service.base_url, timeout=10)
            assert response.status_code < 500, (case.method, case.path, response.text[:500])
            if response.status_code >= 400:
                kind = response.headers["content-type"]
                kind = kind[0] if isinstance(kind, list) else kind
                assert kind.startswith("application/problem+json"), (case.path, kind)

        check()
        checked.append(f"{operation.method.upper()} {operation.path}")
    assert len(checked) >= 8, checked


_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(topic=_text, after=st.one_of(st.none(), _text), last_event_id=st.one_of(st.none(), _text))
def test_opening_streams_with_any_input_answers_at_once(
    service: Service, topic: str, after: str | None, last_event_id: str | None
) -> None:
    params = {"after": after} if after is not None else None
    headers: dict[str, bytes] = {}
    if last_event_id is not None:
        # Any bytes a header may carry (no control characters: HTTP has no way to send them).
        raw = bytes(b for b in last_event_id.encode() if b >= 0x20 and b != 0x7F).strip()
        if raw:  # (a value of only spaces is no header on the wire either)
            headers["Last-Event-ID"] = raw
    with (
        httpx.Client(base_url=service.base_url, timeout=10) as http,
        http.stream("GET", "/feeds/" + _quote(topic), params=params, headers=headers) as response,
    ):
        assert response.status_code in (200, 400, 404, 405, 409, 410), response.status_code


def _quote(topic: str) -> str:
    from urllib.parse import quote

    return quote(topic, safe="")


@given(value=_text)
def test_resume_points_parse_or_are_refused_cleanly(value: str) -> None:
    try:
        seq, digest = parse_resume(value, "after")
    except InvalidInput as exc:
        assert "after" in str(exc)
        return
    assert 0 <= seq < 10**18
    assert digest is None or re.fullmatch(r"[0-9a-f]{8}", digest)
    assert value.strip().startswith(str(seq)) or value.strip().lstrip("0").startswith(str(seq))


_topic = st.from_regex(r"[A-Za-z0-9._:-]{1,20}", fullmatch=True)
_pattern = st.lists(st.one_of(_topic, st.just("*")), min_size=1, max_size=4).map("".join)


@given(grant=_pattern, pattern=_pattern, topic=_topic)
def test_a_covered_pattern_only_matches_granted_topics(
    grant: str, pattern: str, topic: str
) -> None:
    # If a grant covers a requested pattern, every topic the pattern matches is granted.
    try:
        selector = Selector([pattern])
    except InvalidInput:
        return
    if covers((grant,), pattern) and selector.matches(topic):
        assert covers((grant,), topic), (grant, pattern, topic)


async def _raw(service: Service) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = int(service.base_url.rsplit(":", 1)[1])
    return await asyncio.open_connection("127.0.0.1", port)


async def test_slow_clients_are_cut_off_and_others_still_served(service: Service) -> None:
    async def trickle_head() -> bytes:
        reader, writer = await _raw(service)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        with contextlib.suppress(ConnectionError):
            for i in range(40):  # 10 s of trickling unless the server ends it
                writer.write(b"X-%d: y\r\n" % i)
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.25):
                        answer = await reader.read(4096)
                        if answer or reader.at_eof():
                            return answer
        return b""

    async def trickle_body() -> bytes:
        reader, writer = await _raw(service)
        writer.write(
            b"POST /feeds/slow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n[{"data": '
        )
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read(4096)

    started = time.monotonic()
    attackers = [asyncio.create_task(trickle_head()) for _ in range(30)]
    attackers += [asyncio.create_task(trickle_body()) for _ in range(10)]
    async with httpx.AsyncClient(base_url=service.base_url, timeout=5) as http:
        assert (await http.get("/healthz")).status_code == 200  # served meanwhile
    answers = await asyncio.gather(*attackers)
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), {a[:40] for a in answers}
    assert b"urn:changefeed:problem:request-timeout" in answers[0]
    assert time.monotonic() - started < 8  # cut off at about a second, not at the end


async def test_an_oversized_body_is_refused_before_it_is_sent(service: Service) -> None:
    reader, writer = await _raw(service)
    writer.write(
        b"POST /feeds/big HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000000\r\n\r\n"
    )
    await writer.drain()
    async with asyncio.timeout(5):  # long before 100 MB could be sent, or the body timeout
        answer = await reader.read(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    writer.close()


@given(
    pattern=st.text(alphabet="ab.*", max_size=12),
    name=st.text(alphabet="ab.*", max_size=12),
)
def test_glob_matching_means_what_a_regular_expression_would(pattern: str, name: str) -> None:
    reference = "".join(".*" if c == "*" else re.escape(c) for c in pattern)
    assert glob_match(pattern, name) == bool(re.fullmatch(reference, name, re.DOTALL))


async def test_a_pattern_cannot_freeze_the_replica(service: Service) -> None:
    """A topic pattern made a backtracking regular expression, evaluated on the event loop:
    `orders.**…*Z` against `orders.eu.paid.2026-12` took seconds, doubling with each `*`.
    With 60 of them, only matching without backtracking lets the event arrive at all."""
    prefix = new_topic("redos")
    params = {"topic": [f"{prefix}.{'*' * 60}Z", f"{prefix}.e*"]}
    async with (
        httpx.AsyncClient(base_url=service.base_url, timeout=10) as http,
        http.stream("GET", "/feeds", params=params) as response,
    ):
        assert response.status_code == 200
        lines = response.aiter_lines()
        assert (await anext(lines)).startswith("retry:")
        published = await http.post(f"/feeds/{prefix}.eu.paid.2026-12", json={"data": 1})
        assert published.status_code == 202
        async with asyncio.timeout(10):
            async for line in lines:
                if line.startswith("data:"):
                    assert '"seq": 1' in line
                    break
        assert (await http.get("/healthz")).status_code == 200


async def test_patterns_in_sql_are_matched_without_backtracking(db: asyncpg.Connection) -> None:
    """The same patterns in PostgreSQL (retention policies, consumers, multi-topic pages)
    are LIKE patterns, whose matcher gives up on a `%` once the text is used up."""
    prefix = new_topic("like")
    pattern = f"{prefix}." + "*a" * 80 + "*b"
    topic = f"{prefix}." + "a" * (199 - len(prefix))
    await db.execute("SELECT changefeed.publish($1, 'x', '1')", topic)
    await db.execute("SELECT changefeed.sequence()")
    await db.execute(
        "INSERT INTO changefeed.retention (pattern, max_count) VALUES ($1, 1)", pattern
    )
    async with db.transaction():
        await db.execute("SET LOCAL statement_timeout = '5s'")
        assert (
            await db.fetchval(
                "SELECT count(*) FROM changefeed.topics t "
                "CROSS JOIN LATERAL changefeed.retention_for(t.topic) r WHERE r.pattern = $1",
                pattern,
            )
            == 0
        )
        await db.fetch("SELECT * FROM changefeed.trim()")


async def test_other_sites_cannot_write_without_authentication(service: Service) -> None:
    """A development server on 127.0.0.1 is reachable from any page its user opens."""
    topic = new_topic("csrf")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as http:
        for headers, status in [
            ({"origin": "https://evil.example", "content-type": "text/plain"}, 403),
            ({"content-type": "text/plain"}, 415),
            ({"content-type": "application/x-www-form-urlencoded"}, 415),
            ({}, 415),
            ({"origin": "https://evil.example", "content-type": "application/json"}, 403),
            ({"content-type": "application/json; charset=utf-8"}, 202),
        ]:
            response = await http.post(f"/feeds/{topic}", content=b'{"data": 1}', headers=headers)
            assert response.status_code == status, (headers, response.text)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)
_raw_number = st.from_regex(
    r"-?(0|[1-9][0-9]{0,6})(\.[0-9]{1,6})?([eE][-+]?[0-9]{1,6})?", fullmatch=True
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    data=st.one_of(
        _json.map(lambda v: json.dumps(v).encode()),
        _raw_number.map(str.encode),
        st.integers(min_value=1, max_value=200).map(lambda d: b"[" * d + b"]" * d),
        st.integers(min_value=4200, max_value=4400).map(lambda n: b"-" + b"9" * n),
        st.binary(max_size=64),
    ),
    type_=st.one_of(st.none(), _text),
    id_=st.one_of(st.none(), _text),
)
def test_publishing_any_body_is_stored_or_refused_with_a_400(
    service: Service, data: bytes, type_: str | None, id_: str | None
) -> None:
    fields = [b'"data": ' + data]
    if type_ is not None:
        fields.append(b'"type": ' + json.dumps(type_).encode())
    if id_ is not None:
        fields.append(b'"id": ' + json.dumps(id_).encode())
    body = b"{" + b", ".join(fields) + b"}"
    with httpx.Client(base_url=service.base_url, timeout=30) as http:
        response = http.post(
            "/feeds/fuzzed", content=body, headers={"content-type": "application/json"}
        )
    assert response.status_code in (202, 400), (body[:200], response.text[:300])


async def test_other_sites_cannot_lease_or_reach_the_service_by_another_name(
    service: Service,
) -> None:
    """Without authentication, an <img> on any page could lease a consumer's batch (a GET),
    and DNS rebinding (a name of the attacker's that resolves to 127.0.0.1) would make the
    attacker's page same-origin with a development server."""
    name = new_topic("c")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as http:
        assert (await http.put(f"/consumers/{name}", json={"topics": ["x"]})).is_success
        url = f"/consumers/{name}/events"
        for site, status in [("cross-site", 403), ("same-site", 403), ("same-origin", 200)]:
            response = await http.get(url, headers={"sec-fetch-site": site})
            assert response.status_code == status, site
        port = service.base_url.rsplit(":", 1)[1]
        for host, status in [
            (f"rebind.attacker.example:{port}", 421),
            ("attacker.example", 421),
            (f"localhost:{port}", 200),
            (f"127.0.0.1:{port}", 200),
            (f"[::1]:{port}", 200),
        ]:
            response = await http.get("/healthz", headers={"host": host})
            assert response.status_code == status, host
        refused = await http.post(
            "/feeds/x", json={"data": 1}, headers={"host": "rebind.attacker.example"}
        )
        assert refused.status_code == 421
        assert refused.json()["type"] == "urn:changefeed:problem:misdirected-request"
