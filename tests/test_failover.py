"""The sequencer role fails over: SIGKILL the replica holding it and another takes over."""

from __future__ import annotations

import httpx
import pytest

from tests.support import Service, create_database, metrics, new_topic, subscribe, wait_for

pytestmark = pytest.mark.slow


async def _leads(service: Service) -> bool:
    async with httpx.AsyncClient(base_url=service.base_url, timeout=5) as client:
        return (await metrics(client))["changefeed_is_sequencer"] == 1


async def test_sequencer_fails_over_when_its_holder_is_killed(
    admin_url: str, template: str
) -> None:
    url = await create_database(admin_url, template)
    env = {"CHANGEFEED_ELECTION_SECONDS": "0.5"}
    replicas = [Service(url, env=env).start() for _ in range(2)]
    try:

        async def one_leader() -> Service | None:
            leaders = [r for r in replicas if await _leads(r)]
            return leaders[0] if len(leaders) == 1 else None

        leader = await wait_for(one_leader, timeout=10)
        survivor = next(r for r in replicas if r is not leader)
        leader.kill()

        async def survivor_leads() -> bool:
            return await _leads(survivor)

        # PostgreSQL ends the killed session at once (the socket closes), releasing the lock.
        assert await wait_for(survivor_leads, timeout=10)
        async with httpx.AsyncClient(base_url=survivor.base_url, timeout=10) as client:
            topic = new_topic()
            async with subscribe(client, topic) as stream:
                await client.post(f"/feeds/{topic}", json={"data": "after failover"})
                assert (await stream.next()).data == '"after failover"'
    finally:
        for replica in replicas:
            if replica.process is not None and replica.process.poll() is None:
                replica.stop()
