"""PostgreSQL stops and comes back: clear 503s while it is down, readiness follows it, and
publishing and delivery resume without restarting the service, nothing lost."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from changefeed.ops.cluster import Cluster
from tests.support import Service, create_database, new_topic, seq, subscribe, wait_for

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_database_down_and_back(
    cluster: Cluster | None, admin_url: str, template: str, mode: str
) -> None:
    if cluster is None:
        pytest.skip("needs the suite's own PostgreSQL cluster to stop it")
    url = await create_database(admin_url, template)
    service = Service(url, env={"CHANGEFEED_RECHECK_SECONDS": "1"}).start()
    topic = new_topic()
    try:
        async with (
            httpx.AsyncClient(base_url=service.base_url, timeout=10) as client,
            subscribe(client, topic) as stream,
        ):
            assert (await client.post(f"/feeds/{topic}", json={"data": 1})).status_code == 202
            assert seq(await stream.next()) == "1"

            await asyncio.to_thread(cluster.stop, mode)
            try:
                refused = await client.post(f"/feeds/{topic}", json={"data": "lost"})
                assert refused.status_code == 503
                assert refused.headers["content-type"].startswith("application/problem+json")
                assert refused.headers["retry-after"]

                async def unready() -> bool:
                    return (await client.get("/readyz")).status_code == 503

                assert await wait_for(unready, timeout=15)
                assert (await client.get("/healthz")).status_code == 200
            finally:
                await asyncio.to_thread(cluster.start)

            async def ready() -> bool:
                return (await client.get("/readyz")).status_code == 200

            assert await wait_for(ready, timeout=30)

            async def publish_ok() -> bool:
                response = await client.post(f"/feeds/{topic}", json={"id": "b", "data": 2})
                return response.status_code == 202

            assert await wait_for(publish_ok, timeout=30)
            # The open stream either goes on, or has ended cleanly for a resume.
            try:
                event = await stream.next(timeout=15)
                assert (seq(event), event.data) == ("2", "2")
            except EOFError:
                async with subscribe(client, topic, last_event_id="1") as resumed:
                    event = await resumed.next(timeout=15)
                    assert (seq(event), event.data) == ("2", "2")
    finally:
        if not cluster.is_running():
            cluster.start()
        assert service.stop() == 0
