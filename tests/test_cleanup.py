"""Streams release everything they hold when their clients go away."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import httpx

from tests.support import Service, metrics, new_topic, publish, subscribe, wait_for


async def _connections(admin: asyncpg.Connection, database: str) -> int:
    count: int = await admin.fetchval(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = $1 AND application_name LIKE 'changefeed%'",
        database,
    )
    return count


async def test_two_hundred_subscribers_leave_nothing_behind(
    service: Service, module_database: str
) -> None:
    database = module_database.rsplit("/", 1)[1]
    admin = await asyncpg.connect(module_database)
    limits = httpx.Limits(max_connections=300, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30, limits=limits) as client:
        before = await metrics(client)
        connections_before = await _connections(admin, database)
        topics = [new_topic() for _ in range(5)]
        for topic in topics:
            await publish(client, topic, [{"data": i} for i in range(20)])

        async def one(i: int) -> None:
            topic = topics[i % len(topics)]
            after = random.choice([None, 0, 5])
            async with subscribe(client, topic, after=after) as stream:
                if after is not None and random.random() < 0.5:
                    await stream.next()

        # Half of them all at once, then the rest while events flow.
        await asyncio.gather(*(one(i) for i in range(100)))
        flowing = asyncio.gather(*(one(i) for i in range(100, 200)))
        for topic in topics:
            await publish(client, topic, {"data": "more"})
        await flowing

        async def settled() -> dict[str, float] | None:
            now = await metrics(client)
            keys = ("changefeed_open_streams", "changefeed_subscriptions", "changefeed_topic_feeds")
            if (
                all(now[k] == 0 for k in keys)
                and now["changefeed_asyncio_tasks"] <= before["changefeed_asyncio_tasks"]
            ):
                return now
            return None

        after = await wait_for(settled, timeout=10)
        assert after["changefeed_asyncio_tasks"] <= before["changefeed_asyncio_tasks"]

        # No connection held by the streams: the pool may have grown, but nothing is busy.
        busy = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
            "AND application_name = 'changefeed' AND state <> 'idle'",
            database,
        )
        assert busy == 0
        assert await _connections(admin, database) <= max(connections_before, 12)
    await admin.close()
