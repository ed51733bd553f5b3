"""Per-replica limits and graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
import time

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


async def test_sigterm_ends_streams_cleanly_and_exits_in_time(module_database: str) -> None:
    service = Service(module_database, env={"CHANGEFEED_SHUTDOWN_SECONDS": "5"}).start()
    topic = new_topic()
    async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as client:
        async with client.stream("GET", f"/feeds/{topic}", params={"after": "0"}) as response:
            chunks = response.aiter_raw()
            assert (await anext(chunks)).startswith(b"retry:")
            assert service.process is not None
            started = time.monotonic()
            service.process.send_signal(signal.SIGTERM)
            # The stream ends cleanly (a proper end of the chunked body, no error) at once,
            # so that an EventSource reconnects to another replica straight away.
            rest = [chunk async for chunk in chunks]
            assert b"".join(rest) == b""
        ended = time.monotonic() - started
    assert await asyncio.to_thread(service.process.wait, 10) == 0
    exited = time.monotonic() - started
    assert ended < 2, f"stream ended {ended:.1f}s after SIGTERM"
    assert exited < 5, f"process exited {exited:.1f}s after SIGTERM"
