"""A database connection that dies silently (no FIN, no RST) is noticed within seconds."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from changefeed.ops.cluster import SUPERUSER, Cluster
from tests.support import (
    BlackholeProxy,
    Service,
    create_database,
    metrics,
    new_topic,
    seq,
    subscribe,
    url_with_database,
    wait_for,
)

pytestmark = pytest.mark.slow


async def test_listener_notices_a_silently_dead_connection(
    cluster: Cluster | None, admin_url: str, template: str
) -> None:
    if cluster is None:
        import pytest

        pytest.skip("needs the suite's own PostgreSQL cluster")
    url = await create_database(admin_url, template)
    proxy = await BlackholeProxy(cluster.port).start()
    database = url.rsplit("/", 1)[1]
    via_proxy = url_with_database(f"postgresql://{SUPERUSER}@127.0.0.1:{proxy.port}/x", database)
    # Each frozen pooled connection costs one query timeout before it is dropped: keep both
    # small so that the whole recovery fits the test's bounds.
    env = {
        "CHANGEFEED_RECHECK_SECONDS": "1",
        "CHANGEFEED_QUERY_TIMEOUT_SECONDS": "3",
        "CHANGEFEED_POOL_MAX_SIZE": "4",
    }
    service = Service(via_proxy, env=env)
    await asyncio.to_thread(service.start)
    try:
        async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as client:
            before = (await metrics(client))["changefeed_listener_connects_total"]
            proxy.freeze_existing()  # the listener, the sequencer and the pool go silent

            async def reconnected() -> bool:
                now = await metrics(client)
                return now["changefeed_listener_connects_total"] > before

            # Probe every 5 s with a 5 s answer timeout: noticed well within 20 s.
            assert await wait_for(reconnected, timeout=20)

            async def ready() -> bool:
                return (await client.get("/readyz")).status_code == 200

            assert await wait_for(ready, timeout=40)
            topic = new_topic()
            async with subscribe(client, topic) as stream:

                async def published() -> bool:
                    response = await client.post(f"/feeds/{topic}", json={"id": "x", "data": 1})
                    return response.status_code == 202

                assert await wait_for(published, timeout=60)
                assert seq(await stream.next(timeout=60)) == "1"
    except BaseException:
        print(service.log())  # pytest shows it with the failure; stop() removes the file
        raise
    finally:
        service.stop()
        await proxy.close()
