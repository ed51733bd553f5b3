"""A subscriber that stops reading cannot grow the replica's memory, nor slow the others;
when it reads again it gets everything, in order (it falls back to paging the table)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.support import Service, metrics, new_topic, subscribe

pytestmark = pytest.mark.slow

EVENTS = 100_000
PAYLOAD = "x" * 400  # ~47 MB of frames: far more than the socket buffers between the ends
BATCH = 1000


async def test_slow_consumer_falls_back_to_the_table(module_database: str) -> None:
    service = Service(
        module_database, env={"CHANGEFEED_SUBSCRIBER_BUFFER_BYTES": str(256 * 1024)}
    ).start()
    topic = new_topic("slow")
    try:
        async with (
            httpx.AsyncClient(base_url=service.base_url, timeout=60) as slow_client,
            httpx.AsyncClient(base_url=service.base_url, timeout=60) as client,
            slow_client.stream("GET", f"/feeds/{topic}") as slow,
            subscribe(client, topic) as fast,
        ):
            raw = slow.aiter_raw()
            assert (await anext(raw)).startswith(b"retry:")  # registered; now stop reading

            rss_before = service.rss_bytes()
            sent_at: dict[int, float] = {}

            async def publish_all() -> None:
                for start in range(0, EVENTS, BATCH):
                    batch = [{"data": {"i": i, "p": PAYLOAD}} for i in range(start, start + BATCH)]
                    response = await client.post(f"/feeds/{topic}", json=batch)
                    assert response.status_code == 202
                    sent_at[start + BATCH - 1] = time.monotonic()

            publishing = asyncio.create_task(publish_all())
            # The fast subscriber keeps up while the slow one reads nothing.
            lags: list[float] = []
            for expected in range(EVENTS):
                i = json.loads((await fast.next(timeout=30)).data)["i"]
                assert i == expected
                if i in sent_at:
                    lags.append(time.monotonic() - sent_at[i])
            await publishing
            rss_peak = service.rss_bytes()

            assert (await metrics(client))["changefeed_slow_consumer_fallbacks_total"] >= 1

            # The slow one reads again: every event, in order, each once.
            buffer = b""
            seqs: list[int] = []
            async with asyncio.timeout(60):
                async for chunk in raw:
                    buffer += chunk
                    *frames, buffer = buffer.split(b"\n\n")
                    for frame in frames:
                        if frame.startswith(b"id: "):
                            seqs.append(int(frame.split(b"\n", 1)[0][4:].split(b".")[0]))
                    if seqs and seqs[-1] == EVENTS:
                        break
            assert seqs == list(range(1, EVENTS + 1))
        lags.sort()
        median, worst = lags[len(lags) // 2] * 1000, lags[-1] * 1000
        print(
            f"fast subscriber, batch publish-to-receipt: median {median:.0f} ms, "
            f"max {worst:.0f} ms; replica rss {rss_before >> 20} -> {rss_peak >> 20} MiB"
        )
        # Bounded: the slow stream's backlog (~47 MB) is not held in the replica.
        assert rss_peak - rss_before < 20 * 1024 * 1024
    finally:
        assert service.stop() == 0
