"""Row-level grants: a token's ``{"topic": …, "where": …}`` entry grants only the events
whose data contains ``where``, on every read (streams one topic or several, patterns,
pages, exports), ANDed with the request's own ``where``, ORed across entries; consumers,
which do not filter yet, are refused. Each way out is tried."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.support import SECRET, Service, bearer, new_topic, token

NDJSON = {"Accept": "application/x-ndjson"}


@pytest.fixture(scope="module")
def service(module_database: str) -> Iterator[Service]:
    env = {"CHANGEFEED_AUTH": "jwt", "CHANGEFEED_JWT_SECRET": SECRET}
    with Service(module_database, env=env) as svc:
        yield svc


@pytest.fixture(scope="module")
def topic(service: Service) -> str:
    name = new_topic("tenants")
    writer = bearer(token("writer", publish=["*"]))
    events = [
        {"type": "order", "data": {"tenant": t, "n": n, "new": {"region": r}}}
        for n, (t, r) in enumerate(
            [("acme", "eu"), ("globex", "eu"), ("acme", "us"), ("initech", "us")] * 5
        )
    ]
    response = httpx.post(f"{service.base_url}/feeds/{name}", json=events, headers=writer)
    assert response.status_code == 202, response.text
    return name


def _tenants(events: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(e["data"]["tenant"], e["data"]["new"]["region"]) for e in events]  # type: ignore[index]


async def _page(client: httpx.AsyncClient, path: str, headers: dict[str, str], **params: str):  # type: ignore[no-untyped-def]
    for _ in range(50):  # the events may not be numbered yet
        response = await client.get(path, params={"after": "0", **params}, headers=headers)
        if response.status_code != 200 or response.json()["head"] >= 20:
            return response
        await asyncio.sleep(0.1)  # pacing: the sequencer numbers them within milliseconds
    raise AssertionError("the events were not numbered")


async def _stream(
    client: httpx.AsyncClient, path: str, headers: dict[str, str], **params: str
) -> list[dict[str, object]]:
    """A stream's first 10 events' data (acme has 10 in the topic)."""
    found: list[dict[str, object]] = []
    async with aconnect_sse(
        client, "GET", path, params={"after": "0", **params}, headers=headers
    ) as source:
        assert source.response.status_code == 200, await source.response.aread()
        async with asyncio.timeout(20):
            async for event in source.aiter_sse():
                if event.data and event.event not in ("reset", "closed"):
                    body = json.loads(event.data)
                    found.append({"data": body if "tenant" in body else body["data"]})
                    if len(found) == 10:
                        break
    return found


async def test_a_filtered_grant_holds_on_every_read(client: httpx.AsyncClient, topic: str) -> None:
    acme = bearer(token("acme-app", subscribe=[{"topic": "tenants*", "where": {"tenant": "acme"}}]))
    only = [("acme", "eu"), ("acme", "us")] * 5
    # No `where`, a contradicting one, a narrower one: never more than acme's events.
    page = (await _page(client, f"/feeds/{topic}/events", acme)).json()
    assert _tenants(page["events"]) == only
    page = (
        await _page(client, f"/feeds/{topic}/events", acme, where='{"tenant": "globex"}')
    ).json()
    assert page["events"] == []
    page = (
        await _page(client, f"/feeds/{topic}/events", acme, where='{"new": {"region": "us"}}')
    ).json()
    assert _tenants(page["events"]) == [("acme", "us")] * 5
    assert "where=" in page["next"] and "acme" not in page["next"]  # the request's own only
    exported = await client.get(f"/feeds/{topic}/events", headers={**acme, **NDJSON})
    lines = [json.loads(line) for line in exported.text.splitlines()]
    assert _tenants(lines) == only
    # Streams: the topic, a pattern, several topics.
    assert _tenants(await _stream(client, f"/feeds/{topic}", acme)) == only
    streamed = await _stream(client, "/feeds/tenants*", acme)
    assert {t for t, _ in _tenants(streamed)} == {"acme"}
    streamed = await _stream(client, "/feeds", acme, topic=topic)
    assert {t for t, _ in _tenants(streamed)} == {"acme"}
    # Consumers do not filter yet: refused rather than read everything.
    response = await client.put(
        f"/consumers/{new_topic('c')}", json={"topics": [topic]}, headers=acme
    )
    assert response.status_code == 403, response.text
    assert "filtered grants" in response.json()["detail"]


async def test_grants_or_together_and_a_plain_grant_is_not_narrowed(
    client: httpx.AsyncClient, topic: str
) -> None:
    two = bearer(
        token(
            "two",
            subscribe=[
                {"topic": topic, "where": {"tenant": "acme", "new": {"region": "eu"}}},
                {"topic": topic, "where": {"tenant": "initech"}},
            ],
        )
    )
    page = (await _page(client, f"/feeds/{topic}/events", two)).json()
    assert _tenants(page["events"]) == [("acme", "eu"), ("initech", "us")] * 5
    both = bearer(token("both", subscribe=[topic, {"topic": topic, "where": {"tenant": "x"}}]))
    page = (await _page(client, f"/feeds/{topic}/events", both)).json()
    assert len(page["events"]) == 20
    # Topics whose grants filter differently cannot share one stream.
    mixed = bearer(token("mixed", subscribe=["other", {"topic": topic, "where": {"tenant": "x"}}]))
    response = await client.get("/feeds", params={"topic": [topic, "other"]}, headers=mixed)
    assert response.status_code == 403, response.text


async def test_a_malformed_grant_grants_nothing(client: httpx.AsyncClient, topic: str) -> None:
    for entry in (
        {"topic": topic, "where": ["acme"]},
        {"topic": topic, "where": {"tenant": "acme"}, "extra": 1},
        {"topic": topic},
        {"where": {"tenant": "acme"}},
    ):
        bad = bearer(token("bad", subscribe=[entry]))
        response = await client.get(f"/feeds/{topic}/events", headers=bad)
        assert response.status_code == 403, (entry, response.text)
