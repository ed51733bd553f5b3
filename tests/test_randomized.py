"""A randomized run: concurrent HTTP and SQL writers (delayed commits, rollbacks, one long
transaction) and subscribers that disconnect at random and resume with Last-Event-ID.

Afterwards every subscriber's sequence must equal the topic's log exactly (Jepsen's queue
anomalies: lost, duplicated, reordered, inconsistent or aborted reads), and every
acknowledged publish must be in the log once.
"""

from __future__ import annotations

import asyncio
import json
import os
import random

import asyncpg
import httpx
import pytest
from httpx_sse import ServerSentEvent

from tests.support import Ledger, Reader, new_topic, publish_keys, seq, sequenced_log

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("CHANGEFEED_TEST_SEED", random.randrange(1 << 30)))
ROUNDS = int(os.environ.get("CHANGEFEED_TEST_ROUNDS", "25"))


async def _http_writer(
    client: httpx.AsyncClient, topic: str, w: int, writes: Ledger, rng: random.Random
) -> None:
    for i in range(ROUNDS):
        keys = [f"h{w}-{i}-{j}" for j in range(rng.randint(1, 3))]
        body = [{"type": "http", "data": {"k": k}} for k in keys]
        try:
            response = await client.post(f"/feeds/{topic}", json=body)
        except httpx.HTTPError:
            writes.unknown.update(keys)
            continue
        (writes.ok if response.status_code == 202 else writes.failed).update(keys)
        await asyncio.sleep(rng.random() * 0.01)


async def _sql_writer(url: str, topic: str, w: int, writes: Ledger, rng: random.Random) -> None:
    conn = await asyncpg.connect(url)
    try:
        for i in range(ROUNDS):
            keys = [f"s{w}-{i}-{j}" for j in range(rng.randint(1, 3))]
            tx = conn.transaction()
            await tx.start()
            await publish_keys(conn, topic, keys)
            # Hold some transactions open while others commit around them.
            if rng.random() < 0.3:
                await asyncio.sleep(rng.random() * 0.2)
            if rng.random() < 0.2:
                await tx.rollback()
                writes.failed.update(keys)
            else:
                await tx.commit()
                writes.ok.update(keys)
    finally:
        await conn.close()


async def _long_writer(url: str, topic: str, writes: Ledger, hold: float) -> None:
    """One transaction open for the whole run: it delays only its own event."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute(
                "SELECT changefeed.publish($1, 'long', '{\"k\": \"long\"}'::jsonb)", topic
            )
            await asyncio.sleep(hold)
        writes.ok.add("long")
    finally:
        await conn.close()


def _key(event: ServerSentEvent) -> tuple[int, str]:
    return int(seq(event)), json.loads(event.data)["k"]


async def test_randomized_writers_and_resuming_readers(
    client: httpx.AsyncClient, module_database: str
) -> None:
    rng = random.Random(SEED)
    print(f"seed={SEED} rounds={ROUNDS}")
    topic = new_topic("random")
    writes = Ledger()
    readers = [Reader(f"r{i}", _key) for i in range(6)]
    done = asyncio.Event()
    final_head = [0]

    async with asyncio.timeout(120):
        reading = [
            asyncio.create_task(r.run(client, topic, done, final_head, random.Random(rng.random())))
            for r in readers
        ]
        seeds = [random.Random(rng.random()) for _ in range(6)]
        await asyncio.gather(
            _long_writer(module_database, topic, writes, hold=1.5),
            *(_http_writer(client, topic, w, writes, seeds[w]) for w in range(3)),
            *(_sql_writer(module_database, topic, w, writes, seeds[3 + w]) for w in range(3)),
        )

        # Every acknowledged event is in the inbox or the log; wait until it is all sequenced.
        log = await sequenced_log(module_database, topic, timeout=30)
        final_head[0] = log[-1][0]
        done.set()
        await asyncio.gather(*reading)

    anomalies = writes.anomalies(log, {r.name: r.received for r in readers})
    assert not anomalies, anomalies
    sessions = sum(r.sessions for r in readers)
    print(
        f"events={len(log)} acknowledged={len(writes.ok)} rolled_back={len(writes.failed)} "
        f"reader_sessions={sessions} anomalies=0"
    )
