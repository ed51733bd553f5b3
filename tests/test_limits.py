"""Per-replica limits: at most CHANGEFEED_MAX_STREAMS open streams."""

from __future__ import annotations

import httpx

from tests.support import Service, new_topic, subscribe, wait_for


async def test_streams_beyond_the_limit_get_503_with_retry_after(module_database: str) -> None:
    service = Service(module_database, env={"CHANGEFEED_MAX_STREAMS": "2"}).start()
    try:
        async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as client:
            topic = new_topic()
            async with subscribe(client, topic), subscribe(client, new_topic()):
                refused = await client.get(f"/feeds/{topic}")
                assert refused.status_code == 503
                assert refused.headers["retry-after"].isdigit()
                assert refused.headers["content-type"].startswith("application/problem+json")
                assert "maximum of 2 streams" in refused.json()["detail"]

            async def admitted() -> bool:
                async with client.stream("GET", f"/feeds/{topic}") as response:
                    return response.status_code == 200

            assert await wait_for(admitted, timeout=10)
    finally:
        assert service.stop() == 0
