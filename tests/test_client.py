"""The Python client and the CLI's client commands, against a real service."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest

from changefeed.client import (
    Client,
    ClientError,
    FileCheckpoint,
    MemoryCheckpoint,
    StreamReset,
    TableCheckpoint,
)
from tests.support import SECRET, Service, changefeed, new_topic, publish, subscribe, token


async def _published(client: httpx.AsyncClient, topic: str, n: int) -> None:
    async with subscribe(client, topic) as stream:
        await publish(client, topic, [{"type": "n", "data": {"n": i}} for i in range(1, n + 1)])
        await stream.take(n)


async def test_feed_resumes_from_a_file_checkpoint(
    service: Service, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    topic = new_topic()
    await _published(client, topic, 10)
    path = tmp_path / "position"
    checkpoint = FileCheckpoint(path)
    seen: list[int] = []
    ids: list[str] = []
    async with Client(service.base_url) as cf:
        async for event in cf.feed(topic, checkpoint=checkpoint, after=0):
            seen.append(event.data["n"])
            ids.append(event.last_event_id)
            if len(seen) == 4:
                break
        # Event 3 is saved, with its hash (4 was handed out but its loop body did not finish).
        assert await checkpoint.load() == ids[2] and ids[2].startswith("3.")
        async for event in cf.feed(topic, checkpoint=FileCheckpoint(path)):
            seen.append(event.data["n"])
            ids.append(event.last_event_id)
            if event.seq == 10:
                break
    assert seen == [1, 2, 3, 4, *range(4, 11)]  # at least once: 4 again, nothing lost
    assert path.read_text().strip() == ids[-2] and ids[-2].startswith("9.")


@pytest.mark.slow
async def test_feed_follows_a_pattern_and_reconnects_across_a_restart(
    module_database: str,
) -> None:
    service = Service(module_database, env={"CHANGEFEED_RETRY_MILLISECONDS": "100"}).start()
    prefix = new_topic("p")
    got: list[tuple[str, int]] = []
    try:
        async with Client(service.base_url) as cf:
            follower = cf.feed(f"{prefix}.*", after=0)
            await cf.publish(f"{prefix}.a", {"n": 1})
            await cf.publish(f"{prefix}.b", {"n": 2}, type="other", id="x")
            for _ in range(2):
                event = await asyncio.wait_for(anext(follower), 10)
                got.append((event.topic, event.data["n"]))
            assert service.stop() == 0
            service.start()
            await cf.publish(f"{prefix}.a", {"n": 3})
            event = await asyncio.wait_for(anext(follower), 30)
            got.append((event.topic, event.data["n"]))
            await follower.aclose()
    finally:
        service.stop()
    assert got == [(f"{prefix}.a", 1), (f"{prefix}.b", 2), (f"{prefix}.a", 3)]


async def test_client_errors_are_raised_not_retried(service: Service) -> None:
    async with Client(service.base_url) as cf:
        try:
            async for _ in cf.feed(new_topic(), after=5):
                pass
        except ClientError as exc:
            assert "409" in str(exc)
        else:
            raise AssertionError("a start beyond the head must raise")


async def test_consume_shares_a_consumer_between_workers(
    service: Service, client: httpx.AsyncClient
) -> None:
    prefix = new_topic("w")
    name = f"c{uuid.uuid4().hex[:8]}"
    await client.put(f"/consumers/{name}", json={"topics": [f"{prefix}.*"]})
    for i in range(30):
        await publish(client, f"{prefix}.{i % 3}", {"data": i})
    handled: list[int] = []

    async def worker() -> None:
        async with Client(service.base_url) as cf:
            async for event in cf.consume(name, batch=5, wait=1):
                handled.append(event.data)
                if len(set(handled)) == 30:
                    return

    done, pending = await asyncio.wait(
        [asyncio.create_task(worker()) for _ in range(2)],
        timeout=30,
        return_when=asyncio.FIRST_COMPLETED,
    )
    for task in pending:
        task.cancel()
    assert done and sorted(set(handled)) == list(range(30))


async def test_exactly_once_effects_with_a_table_checkpoint(
    service: Service, client: httpx.AsyncClient, module_database: str
) -> None:
    """The recipe from the client's docs: effects and position in one transaction."""
    topic = new_topic()
    await _published(client, topic, 8)
    app = await asyncpg.connect(module_database)
    await app.execute(TableCheckpoint.DDL)
    await app.execute("CREATE TABLE IF NOT EXISTS effects (topic text, n int, UNIQUE (topic, n))")
    checkpoint = TableCheckpoint(app, f"effects:{topic}")

    async def run(crash_at: int | None) -> None:
        async with Client(service.base_url) as cf:
            async for event in cf.feed(topic, checkpoint=_ReadOnly(checkpoint), after=0):
                async with app.transaction():
                    await app.execute("INSERT INTO effects VALUES ($1, $2)", topic, event.data["n"])
                    if event.data["n"] == crash_at:
                        raise _Crash  # dies after the effect, before the commit
                    await checkpoint.save_in(app, event.last_event_id)
                if event.seq == 8:
                    return

    with contextlib.suppress(_Crash):
        await run(crash_at=5)
    await run(crash_at=None)
    effects = await app.fetch("SELECT n FROM effects WHERE topic = $1 ORDER BY n", topic)
    assert [r["n"] for r in effects] == list(range(1, 9))
    await app.close()


class _Crash(Exception):
    pass


class _ReadOnly:
    """The feed loads the position from the table; the handler alone saves it (in its
    transaction), so the feed's own save after each event is skipped."""

    def __init__(self, inner: TableCheckpoint) -> None:
        self.inner = inner

    async def load(self) -> int | str | None:
        return await self.inner.load()

    async def save(self, position: str) -> None:
        pass


def _cli(service: Service, *args: str) -> subprocess.CompletedProcess[str]:
    return changefeed(*args, env={"CHANGEFEED_URL": service.base_url}, timeout=60)


@pytest.mark.slow
def test_cli_publish_tail_and_consumers(service: Service) -> None:
    topic = new_topic()
    assert _cli(service, "publish", topic, '{"n": 1}', "--type", "t", "--id", "a").returncode == 0
    assert _cli(service, "publish", topic, '{"n": 1}', "--id", "a").returncode == 0  # stored once
    assert _cli(service, "publish", topic, "[2]").returncode == 0
    bad = _cli(service, "publish", topic, "{not json")
    assert bad.returncode == 2 and "not JSON" in bad.stderr
    tail = _cli(service, "tail", topic, "--after", "0", "--count", "2")
    assert tail.returncode == 0, tail.stderr
    lines = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [(e["seq"], e["type"], e["data"]) for e in lines] == [
        (1, "t", {"n": 1}),
        (2, "message", [2]),
    ]

    name = f"c{uuid.uuid4().hex[:8]}"
    created = _cli(service, "consumers", "create", name, "--topic", topic)
    assert created.returncode == 0 and json.loads(created.stdout)["lag"] == 2
    listed = _cli(service, "consumers", "list", "--json")
    assert any(c["name"] == name for c in json.loads(listed.stdout)["consumers"])
    assert _cli(service, "consumers", "delete", name).returncode == 0
    missing = _cli(service, "consumers", "show", name)
    assert missing.returncode == 1 and "404" in missing.stderr
    unreachable = changefeed("publish", topic, "1", "--url", "http://127.0.0.1:1")
    assert unreachable.returncode == 3 and "cannot reach" in unreachable.stderr


async def test_feed_reads_through_tokens_that_expire_every_two_seconds(
    module_database: str,
) -> None:
    """Each stream ends with `event: closed` when its token expires; the feed reconnects
    with a fresh one from the provider and resumes, one topic and several alike."""
    env = {
        "CHANGEFEED_AUTH": "jwt",
        "CHANGEFEED_JWT_SECRET": SECRET,
        "CHANGEFEED_JWT_LEEWAY_SECONDS": "0",
    }
    prefix = new_topic("exp")
    asked = 0

    def fresh() -> str:
        nonlocal asked
        asked += 1
        return token("reader", subscribe=[f"{prefix}.*"], expires_in=2)

    async def follow(topics: str, n: int) -> list[int]:
        got: list[int] = []
        async with Client(service.base_url, token=fresh) as cf:
            async for event in cf.feed(topics, after=0):
                got.append(event.data)
                if len(got) == n:
                    return got
        raise AssertionError("the feed ended")

    with Service(module_database, env=env) as service:
        writer = token("writer", publish=[f"{prefix}.*"])
        async with (
            Client(service.base_url, token=writer) as publisher,
            asyncio.timeout(60),
        ):
            followers = [
                asyncio.create_task(follow(f"{prefix}.a", 40)),
                asyncio.create_task(follow(f"{prefix}.*", 40)),
            ]
            for n in range(1, 41):
                await publisher.publish(f"{prefix}.a", n)
                await asyncio.sleep(0.15)  # pacing: the run spans three token lifetimes
            one, several = await asyncio.gather(*followers)
    assert one == list(range(1, 41)) and several == list(range(1, 41))
    # Two followers through ~6 s of 2 s tokens: a few fresh tokens each, not a loop.
    assert 6 <= asked <= 40, asked


async def test_an_expired_static_token_raises_instead_of_looping(module_database: str) -> None:
    env = {
        "CHANGEFEED_AUTH": "jwt",
        "CHANGEFEED_JWT_SECRET": SECRET,
        "CHANGEFEED_JWT_LEEWAY_SECONDS": "0",
    }
    topic = new_topic()
    with Service(module_database, env=env) as service:
        async with Client(
            service.base_url, token=token("r", subscribe=[topic], expires_in=2)
        ) as cf:
            with pytest.raises(ClientError, match="401"):
                async with asyncio.timeout(20):
                    async for _ in cf.feed(topic, after=0):
                        pass


async def test_a_reset_is_raised_or_handed_to_on_reset(
    service: Service, client: httpx.AsyncClient
) -> None:
    topic = new_topic()
    await _published(client, topic, 3)
    checkpoint = MemoryCheckpoint()
    await checkpoint.save("2.00000000")  # an id of another history (as after a restore)
    async with Client(service.base_url) as cf:
        with pytest.raises(StreamReset) as raised:
            async for _ in cf.feed(topic, checkpoint=checkpoint):
                pass
        assert raised.value.frame["reason"] == "mismatch"
        # The checkpoint holds where the stream continues: following again goes on there.
        assert await checkpoint.load() == "0"
        frames: list[dict[str, object]] = []
        await checkpoint.save("2.00000000")
        seen = []
        async for event in cf.feed(topic, checkpoint=checkpoint, on_reset=frames.append):
            seen.append(event.data["n"])
            if len(seen) == 3:
                break
    assert [f["reason"] for f in frames] == ["mismatch"] and seen == [1, 2, 3]


@pytest.mark.slow
async def test_feed_reconnects_within_the_servers_retry_after_a_restart(
    module_database: str,
) -> None:
    """Not after a backoff grown while the replica was down (it took 9.4 s)."""
    with Service(module_database, env={"CHANGEFEED_RETRY_MILLISECONDS": "500"}) as service:
        topic = new_topic()
        async with Client(service.base_url) as cf:
            follower = cf.feed(topic, after=0)
            await cf.publish(topic, 1)
            assert (await asyncio.wait_for(anext(follower), 10)).data == 1
            assert service.stop() == 0
            # Down long enough for an unbounded backoff to grow past several seconds.
            await asyncio.sleep(6)
            service.start()
            ready = time.monotonic()
            await cf.publish(topic, 2)
            assert (await asyncio.wait_for(anext(follower), 10)).data == 2
            waited = time.monotonic() - ready
            await follower.aclose()
    # The retry is 0.5 s, then a connect, a publish and a delivery; a backoff grown while
    # the replica was down (up to 15 s, with jitter) would usually exceed this.
    assert waited < 1.5, waited


def test_events_decode_exactly_and_an_unreadable_one_is_an_error() -> None:
    from decimal import Decimal

    from changefeed.client import _event

    big = "1" * 5000
    event = _event("7.0a1b2c3d", "t", f'{{"n": {big}, "f": 1e5000, "x": 1.5}}', "orders")
    assert event.data == {"n": Decimal(big), "f": Decimal("1e5000"), "x": 1.5}
    assert (event.seq, event.last_event_id) == (7, "7.0a1b2c3d")
    with pytest.raises(ClientError, match="cannot be read"):
        _event("8.0a1b2c3d", "t", "{not json", "orders")
