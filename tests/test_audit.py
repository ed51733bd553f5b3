"""The hash chain: the sequencer chains every event; verify finds a changed or removed row."""

from __future__ import annotations

import hashlib
import json
import subprocess

import asyncpg
import httpx

from tests.support import changefeed, new_topic, wait_for


def _verify(url: str, *topics: str) -> subprocess.CompletedProcess[str]:
    return changefeed("verify", *topics, env={"CHANGEFEED_DATABASE_URL": url}, timeout=60)


async def _stored(db: asyncpg.Connection, topic: str, count: int) -> None:
    async def done() -> bool:
        n = await db.fetchval("SELECT count(*) FROM changefeed.events WHERE topic = $1", topic)
        return bool(n == count)

    await wait_for(done, timeout=30)


async def test_chain_links_each_event_to_the_previous(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    topic = new_topic()
    await client.post(f"/feeds/{topic}", json=[{"data": {"n": 1}}, {"type": "t", "data": [2]}])
    await client.post(f"/feeds/{topic}", json={"data": "three", "id": "x"})
    await _stored(db, topic, 3)
    page = (await client.get(f"/feeds/{topic}/events")).json()["events"]
    # Recompute outside PostgreSQL from the documented canonical form: the JSON array
    # [topic, seq, type, data, time, id] as jsonb prints it.
    previous = b""
    for event in page:
        stamp = await db.fetchval(
            "SELECT time FROM changefeed.events WHERE topic = $1 AND seq = $2", topic, event["seq"]
        )
        content = await db.fetchval(
            "SELECT changefeed.event_content($1, $2, $3, $4::jsonb, $5, $6)",
            topic,
            event["seq"],
            event["type"],
            json.dumps(event["data"]),
            stamp,
            event["id"],
        )
        expected = hashlib.sha256(previous + content).hexdigest()
        assert event["hash"] == expected
        previous = bytes.fromhex(expected)


async def test_verify_finds_an_edited_row_and_a_removed_one(
    client: httpx.AsyncClient, db: asyncpg.Connection, module_database: str
) -> None:
    edited, removed = new_topic(), new_topic()
    for topic in (edited, removed):
        await client.post(f"/feeds/{topic}", json=[{"data": i} for i in range(5)])
        await _stored(db, topic, 5)
    intact = _verify(module_database, edited, removed)
    assert intact.returncode == 0 and "intact" in intact.stdout

    await db.execute(
        "UPDATE changefeed.events SET data = '42' WHERE topic = $1 AND seq = 3", edited
    )
    await db.execute("DELETE FROM changefeed.events WHERE topic = $1 AND seq = 5", removed)
    result = _verify(module_database, edited, removed)
    assert result.returncode == 1
    assert f"{edited}: broken at seq 3" in result.stdout
    assert f"{removed}: broken at seq 5" in result.stdout
    # Naming no topic checks them all.
    assert _verify(module_database).returncode == 1
