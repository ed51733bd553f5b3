"""The shipped nginx config, run by Debian's nginx in front of a replica: every kind of
long response gets the long-response location, metrics stay private, and the access log
holds no tokens.

To tell the locations apart in seconds, the harness gives ordinary API calls a read
timeout of 2 s and long responses 30 s (the shipped config: 60 s and 1 h).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator

import httpx
import pytest

from tests.support import Nginx, Service, new_topic

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("nginx") is None and not os.environ.get("CI"), reason="nginx is not installed"
    ),
]


@pytest.fixture(scope="module")
def proxy(service: Service) -> Iterator[Nginx]:
    nginx = Nginx([service.port], read_timeouts=("2s", "30s")).start()
    try:
        yield nginx
    finally:
        nginx.stop()


async def test_long_responses_outlast_the_api_timeout(proxy: Nginx) -> None:
    topic = new_topic("proxied")
    async with httpx.AsyncClient(base_url=proxy.base_url, timeout=30) as http:
        # A consumer long poll that waits 4 s for events: through the API location nginx
        # would give up after 2 s (504).
        name = new_topic("c")
        assert (await http.put(f"/consumers/{name}", json={"topics": [topic]})).is_success
        poll = await http.get(f"/consumers/{name}/events", params={"wait": "4"})
        assert poll.status_code == 200, poll.text
        assert poll.json()["events"] == []
        # A multi-topic stream, silent for longer than the API timeout (the service's
        # keep-alive comes every 15 s), then an event.
        async with http.stream("GET", "/feeds", params={"topic": [topic, "other"]}) as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith("retry:")

            async def publish_when_idle() -> httpx.Response:
                await asyncio.sleep(3)  # the stream's silence is what is under test
                return await http.post(f"/feeds/{topic}", json={"data": 7})

            publishing = asyncio.create_task(publish_when_idle())
            received = []
            async with asyncio.timeout(15):
                async for line in lines:  # ends early if nginx cuts the stream
                    if line.startswith("data:"):
                        received.append(line)
                        break
            assert (await publishing).status_code == 202
            assert len(received) == 1 and '"data": 7' in received[0]
        # An NDJSON export and a replay page come through whole.
        export = await http.get(
            f"/feeds/{topic}/events", headers={"accept": "application/x-ndjson"}
        )
        assert export.status_code == 200 and len(export.text.splitlines()) == 1
        assert len((await http.get(f"/feeds/{topic}/events")).json()["events"]) == 1


async def test_metrics_stay_private_and_tokens_stay_out_of_the_log(
    proxy: Nginx, service: Service
) -> None:
    async with httpx.AsyncClient(base_url=proxy.base_url, timeout=10) as http:
        for path in ("/metrics", "/metrics/", "/metrics//", "/metrics%2F"):
            assert (await http.get(path)).status_code == 403, path
        secret = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.c2lnbmF0dXJlLXNlY3JldA"
        topic = new_topic("logged")
        response = await http.get(f"/feeds/{topic}/events", params={"access_token": secret})
        assert response.status_code == 200
    # Directly, the replica still serves them to the operator's Prometheus.
    async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as http:
        assert (await http.get("/metrics")).status_code == 200
    log = proxy.access_log.read_text()
    assert f"GET /feeds/{topic}/events HTTP/1.1" in log
    assert secret not in log and "access_token" not in log
