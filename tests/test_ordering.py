"""The guarantee under interleaved, held-open and rolled-back writer transactions."""

from __future__ import annotations

import json

import asyncpg
import httpx

from tests.support import new_topic, publish, seq, subscribe


async def test_held_open_transaction_is_delivered_once_after_its_commit(
    client: httpx.AsyncClient, module_database: str
) -> None:
    topic = new_topic()
    writer_a = await asyncpg.connect(module_database)
    writer_c = await asyncpg.connect(module_database)
    try:
        async with subscribe(client, topic, after=0) as stream:
            # A publishes inside a transaction it keeps open.
            tx_a = writer_a.transaction()
            await tx_a.start()
            await writer_a.execute(
                "SELECT changefeed.publish($1, 'a', '{\"w\": \"A\"}'::jsonb)", topic
            )
            # C publishes and will roll back.
            tx_c = writer_c.transaction()
            await tx_c.start()
            await writer_c.execute(
                "SELECT changefeed.publish($1, 'c', '{\"w\": \"C\"}'::jsonb)", topic
            )
            # B publishes and commits; the subscriber gets B while A is still open.
            assert (
                await publish(client, topic, {"type": "b", "data": {"w": "B"}})
            ).status_code == 202
            first = await stream.next()
            assert (seq(first), first.event, json.loads(first.data)) == ("1", "b", {"w": "B"})

            await tx_c.rollback()
            await tx_a.commit()
            second = await stream.next()
            assert (seq(second), second.event, json.loads(second.data)) == ("2", "a", {"w": "A"})

            # Nothing else: A exactly once, C never.
            assert (
                await publish(client, topic, {"type": "d", "data": {"w": "D"}})
            ).status_code == 202
            third = await stream.next()
            assert (seq(third), third.event) == ("3", "d")
            await stream.expect_nothing(within=0.3)
    finally:
        await writer_a.close()
        await writer_c.close()

    # A late subscriber replaying from the start sees the same log.
    async with subscribe(client, topic, after=0) as replay:
        events = await replay.take(3)
        assert [(seq(e), e.event) for e in events] == [("1", "b"), ("2", "a"), ("3", "d")]


async def test_sql_publish_exists_only_if_its_transaction_commits(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    topic = new_topic()
    async with db.transaction():
        await db.execute("SELECT changefeed.publish($1, 'kept', '1'::jsonb)", topic)
    tx = db.transaction()
    await tx.start()
    await db.execute("SELECT changefeed.publish($1, 'dropped', '2'::jsonb)", topic)
    await tx.rollback()
    await db.execute("SELECT changefeed.publish($1, 'kept', '3'::jsonb)", topic)

    async with subscribe(client, topic, after=0) as stream:
        events = await stream.take(2)
        assert [(seq(e), e.data) for e in events] == [("1", "1"), ("2", "3")]
        await stream.expect_nothing(within=0.3)


async def test_a_batch_is_stored_together_and_in_order(client: httpx.AsyncClient) -> None:
    topic = new_topic()
    batch = [{"type": "n", "data": i} for i in range(50)]
    async with subscribe(client, topic) as stream:
        assert (await publish(client, topic, batch)).status_code == 202
        events = await stream.take(50)
    assert [int(seq(e)) for e in events] == list(range(1, 51))
    assert [json.loads(e.data) for e in events] == list(range(50))
