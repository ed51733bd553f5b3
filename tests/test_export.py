"""Export as NDJSON (HTTP and CLI) and import into another deployment, idempotently."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.support import (
    Service,
    changefeed,
    create_database,
    new_topic,
    wait_for,
)

NDJSON = {"Accept": "application/x-ndjson"}


async def _sequenced(url: str, topic: str, count: int) -> None:
    conn = await asyncpg.connect(url)
    try:

        async def stored() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM changefeed.events WHERE topic = $1", topic
            )
            return bool(n == count)

        await wait_for(stored, timeout=30)
    finally:
        await conn.close()


async def test_ndjson_export_of_a_range(
    service: Service, client: httpx.AsyncClient, module_database: str
) -> None:
    topic = new_topic()
    for start in (1, 751):  # two batches: at most 1000 events per request
        batch = [{"data": {"n": i}} for i in range(start, start + 750)]
        assert (await client.post(f"/feeds/{topic}", json=batch)).status_code == 202
    await _sequenced(module_database, topic, 1500)
    await client.post(f"/feeds/{topic}", json={"type": "late", "data": "last", "id": "L"})
    await _sequenced(module_database, topic, 1501)

    response = await client.get(f"/feeds/{topic}/events", headers=NDJSON)
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["seq"] for line in lines] == list(range(1, 1502))  # across several pages
    assert lines[-1] == {**lines[-1], "topic": topic, "type": "late", "data": "last", "id": "L"}
    assert set(lines[0]) == {"topic", "seq", "type", "data", "time", "id", "hash"}

    ranged = await client.get(
        f"/feeds/{topic}/events", params={"after": "10", "before": "15"}, headers=NDJSON
    )
    assert [json.loads(x)["seq"] for x in ranged.text.splitlines()] == [11, 12, 13, 14]
    last_time = lines[-1]["time"]
    since = await client.get(f"/feeds/{topic}/events", params={"since": last_time}, headers=NDJSON)
    assert [json.loads(x)["id"] for x in since.text.splitlines()] == ["L"]
    until = await client.get(f"/feeds/{topic}/events", params={"until": last_time}, headers=NDJSON)
    assert len(until.text.splitlines()) == 1500
    bad = await client.get(f"/feeds/{topic}/events", params={"since": "yesterday"}, headers=NDJSON)
    assert bad.status_code == 400


def _cli(url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return changefeed(*args, env={"CHANGEFEED_URL": url}, stdin=stdin)


@pytest.mark.slow
async def test_cli_export_then_import_elsewhere_twice(
    service: Service,
    client: httpx.AsyncClient,
    module_database: str,
    admin_url: str,
    template: str,
    tmp_path: Path,
) -> None:
    topic = new_topic()
    events = [{"type": "t", "data": {"n": i}} for i in range(300)]
    events[5]["id"] = "mine"
    await client.post(f"/feeds/{topic}", json=events)
    await _sequenced(module_database, topic, 300)
    path = tmp_path / "export.ndjson"
    exported = _cli(service.base_url, "export", topic, "--output", str(path))
    assert exported.returncode == 0, exported.stderr
    assert len(path.read_text().splitlines()) == 300

    other = Service(await create_database(admin_url, template)).start()
    try:
        for _ in range(2):  # the second import stores nothing new
            result = _cli(other.base_url, "import", str(path))
            assert result.returncode == 0, result.stderr
        assert other.database_url is not None
        await _sequenced(other.database_url, topic, 300)
        copied = _cli(other.base_url, "export", topic)
        lines = [json.loads(x) for x in copied.stdout.splitlines()]
        assert [(x["seq"], x["type"], x["data"]) for x in lines] == [
            (i + 1, "t", {"n": i}) for i in range(300)
        ]
        assert lines[5]["id"] == "mine" and lines[0]["id"] == f"{topic}:1"
        garbage = _cli(other.base_url, "import", stdin='{"not": "an export line"}\n')
        assert garbage.returncode == 2
    finally:
        other.stop()


async def test_pages_and_exports_cover_the_same_range(
    service: Service, client: httpx.AsyncClient, module_database: str
) -> None:
    """One definition of a range: a page honours `before`, `since` and `until` as an export
    does (they were silently ignored by pages), and its `next` keeps them."""
    topic = new_topic()
    for n in range(10):
        assert (await client.post(f"/feeds/{topic}", json={"data": n})).status_code == 202
    await _sequenced(module_database, topic, 10)
    times = [e["time"] for e in (await client.get(f"/feeds/{topic}/events")).json()["events"]]
    for params in [
        {"after": "2", "before": "7"},
        {"since": times[3]},
        {"until": times[5]},
        {"after": "1", "before": "9", "since": times[2], "until": times[8]},
    ]:
        exported = await client.get(f"/feeds/{topic}/events", params=params, headers=NDJSON)
        expected = [json.loads(line)["seq"] for line in exported.text.splitlines()]
        paged: list[int] = []
        url: str | None = f"/feeds/{topic}/events"
        query: dict[str, str] | None = {**params, "limit": "2"}
        while url:
            page = (await client.get(url, params=query)).json()
            paged += [e["seq"] for e in page["events"]]
            url, query = (page["next"], None) if page["events"] else (None, None)
        assert paged == expected and expected, params
