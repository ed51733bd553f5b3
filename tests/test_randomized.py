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
from dataclasses import dataclass, field

import asyncpg
import httpx

from tests.support import new_topic, seq, subscribe, wait_for

SEED = int(os.environ.get("CHANGEFEED_TEST_SEED", random.randrange(1 << 30)))
ROUNDS = int(os.environ.get("CHANGEFEED_TEST_ROUNDS", "25"))


@dataclass
class Writes:
    ok: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)  # rolled back or refused
    unknown: set[str] = field(default_factory=set)  # the connection died during commit


@dataclass
class Reader:
    name: str
    received: list[tuple[int, str]] = field(default_factory=list)
    sessions: int = 0
    last_id: str | None = None  # as the stream sent it: <seq>.<hash8>


async def _http_writer(
    client: httpx.AsyncClient, topic: str, w: int, writes: Writes, rng: random.Random
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


async def _sql_writer(url: str, topic: str, w: int, writes: Writes, rng: random.Random) -> None:
    conn = await asyncpg.connect(url)
    try:
        for i in range(ROUNDS):
            keys = [f"s{w}-{i}-{j}" for j in range(rng.randint(1, 3))]
            tx = conn.transaction()
            await tx.start()
            for k in keys:
                await conn.execute(
                    "SELECT changefeed.publish($1, 'sql', $2::jsonb)", topic, json.dumps({"k": k})
                )
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


async def _long_writer(url: str, topic: str, writes: Writes, hold: float) -> None:
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


async def _reader(
    client: httpx.AsyncClient,
    topic: str,
    reader: Reader,
    done: asyncio.Event,
    final_head: list[int],
    rng: random.Random,
) -> None:
    while True:
        last = reader.received[-1][0] if reader.received else None
        if done.is_set() and last == final_head[0]:
            return
        reader.sessions += 1
        # First session: the whole topic; then resume with the browser's header.
        options = {"after": 0} if last is None else {"last_event_id": reader.last_id}
        budget = rng.randint(1, 40)
        async with subscribe(client, topic, **options) as stream:  # type: ignore[arg-type]
            while budget > 0:
                try:
                    event = await stream.next(timeout=0.5)
                except TimeoutError:
                    if done.is_set():
                        break
                    continue
                assert event.event != "reset", event.data
                reader.received.append((int(seq(event)), json.loads(event.data)["k"]))
                reader.last_id = event.id
                budget -= 1


async def test_randomized_writers_and_resuming_readers(
    client: httpx.AsyncClient, module_database: str
) -> None:
    rng = random.Random(SEED)
    print(f"seed={SEED} rounds={ROUNDS}")
    topic = new_topic("random")
    writes = Writes()
    readers = [Reader(f"r{i}") for i in range(6)]
    done = asyncio.Event()
    final_head = [0]

    async with asyncio.timeout(120):
        reading = [
            asyncio.create_task(
                _reader(client, topic, r, done, final_head, random.Random(rng.random()))
            )
            for r in readers
        ]
        seeds = [random.Random(rng.random()) for _ in range(6)]
        await asyncio.gather(
            _long_writer(module_database, topic, writes, hold=1.5),
            *(_http_writer(client, topic, w, writes, seeds[w]) for w in range(3)),
            *(_sql_writer(module_database, topic, w, writes, seeds[3 + w]) for w in range(3)),
        )

        # Every acknowledged event is in the inbox or the log; wait until it is all sequenced.
        conn = await asyncpg.connect(module_database)
        try:

            async def sequenced() -> bool:
                pending = await conn.fetchval(
                    "SELECT count(*) FROM changefeed.inbox WHERE topic = $1", topic
                )
                return bool(pending == 0)

            await wait_for(sequenced, timeout=30)
            log = [
                (r["seq"], json.loads(r["data"])["k"])
                for r in await conn.fetch(
                    "SELECT seq, data::text FROM changefeed.events WHERE topic = $1 ORDER BY seq",
                    topic,
                )
            ]
        finally:
            await conn.close()
        final_head[0] = log[-1][0]
        done.set()
        await asyncio.gather(*reading)

    seqs = [seq for seq, _ in log]
    keys = [k for _, k in log]
    assert seqs == list(range(1, len(log) + 1)), "the log has gaps"
    assert len(set(keys)) == len(keys), "an event was stored twice"
    assert writes.ok <= set(keys), f"lost writes: {sorted(writes.ok - set(keys))[:10]}"
    assert not (writes.failed & set(keys)), (
        f"aborted writes read: {sorted(writes.failed & set(keys))}"
    )
    assert set(keys) <= writes.ok | writes.unknown, "an event nobody wrote"
    for reader in readers:
        assert reader.received == log, f"{reader.name} disagrees with the log"
    sessions = sum(r.sessions for r in readers)
    print(
        f"events={len(log)} acknowledged={len(writes.ok)} rolled_back={len(writes.failed)} "
        f"reader_sessions={sessions} anomalies=0"
    )
