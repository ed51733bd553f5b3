"""Where a stream starts: Last-Event-ID, ?after, the live tail; and the stream's framing."""

from __future__ import annotations

import asyncio
import json

import httpx

from tests.support import Service, new_topic, publish, seq, subscribe


async def _topic_with(client: httpx.AsyncClient, n: int) -> str:
    topic = new_topic()
    async with subscribe(client, topic) as stream:
        response = await publish(client, topic, [{"data": i} for i in range(1, n + 1)])
        assert response.status_code == 202
        await stream.take(n)  # all sequenced
    return topic


async def test_after_zero_replays_everything(client: httpx.AsyncClient) -> None:
    topic = await _topic_with(client, 5)
    async with subscribe(client, topic, after=0) as stream:
        assert [seq(e) for e in await stream.take(5)] == ["1", "2", "3", "4", "5"]


async def test_after_n_resumes_after_n(client: httpx.AsyncClient) -> None:
    topic = await _topic_with(client, 5)
    async with subscribe(client, topic, after=3) as stream:
        assert [seq(e) for e in await stream.take(2)] == ["4", "5"]
        await stream.expect_nothing(within=0.3)


async def test_last_event_id_header_beats_query(client: httpx.AsyncClient) -> None:
    topic = await _topic_with(client, 5)
    async with subscribe(client, topic, after=1, last_event_id="4") as stream:
        assert seq(await stream.next()) == "5"
        await stream.expect_nothing(within=0.3)


async def test_live_tail_by_default(client: httpx.AsyncClient) -> None:
    topic = await _topic_with(client, 3)
    async with subscribe(client, topic) as stream:
        await stream.expect_nothing(within=0.3)
        assert (await publish(client, topic, {"type": "late", "data": 4})).status_code == 202
        event = await stream.next()
        assert (seq(event), event.event, event.data) == ("4", "late", "4")


async def test_resume_at_head_waits_for_new_events(client: httpx.AsyncClient) -> None:
    topic = await _topic_with(client, 2)
    async with subscribe(client, topic, last_event_id="2") as stream:
        await publish(client, topic, {"data": 3})
        assert seq(await stream.next()) == "3"


async def test_stream_headers_and_retry_first(service: Service) -> None:
    topic = new_topic()
    async with (
        httpx.AsyncClient(base_url=service.base_url, timeout=10) as http,
        http.stream("GET", f"/feeds/{topic}") as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        first = await anext(response.aiter_raw())
        assert first.startswith(b"retry: ")


async def test_opening_frame_and_keepalive_comments(module_database: str) -> None:
    """The opening frame gives a resume point (``id: 0`` on an empty topic); keep-alives
    are comment lines without a blank line after them, so that they dispatch nothing."""
    service = Service(module_database, env={"CHANGEFEED_KEEPALIVE_SECONDS": "0.2"}).start()
    try:
        async with (
            httpx.AsyncClient(base_url=service.base_url, timeout=10) as http,
            http.stream("GET", f"/feeds/{new_topic()}") as response,
        ):
            seen = b""
            async with asyncio.timeout(10):
                async for chunk in response.aiter_raw():
                    seen += chunk
                    if seen.count(b": keepalive\n") >= 2:
                        break
        assert seen == b"retry: 3000\nid: 0\n\n" + b": keepalive\n" * seen.count(b": keepalive")
    finally:
        assert service.stop() == 0


async def test_event_data_is_one_line_json(client: httpx.AsyncClient) -> None:
    topic = new_topic()
    data = {"text": "line one\nline two\r\n", "nested": [1, {"a": None}], "u": "é✓"}
    async with subscribe(client, topic) as stream:
        await publish(client, topic, {"type": "multi", "data": data})
        event = await stream.next()
    import json

    assert json.loads(event.data) == data


async def test_ids_carry_a_hash_and_a_wrong_one_gets_an_explicit_reset(
    client: httpx.AsyncClient,
) -> None:
    topic = await _topic_with(client, 3)
    async with subscribe(client, topic, after=0) as stream:
        first, second, third = await stream.take(3)
    assert first.id.startswith("1.") and len(first.id) == 2 + 8
    # The true id: resumes exactly.
    async with subscribe(client, topic, last_event_id=second.id) as stream:
        assert (await stream.next()).id == third.id
    # An id this topic never issued at that seq (a restore, a recreated topic, tampering):
    # the stream says so first, then replays the topic from its start.
    async with subscribe(client, topic, last_event_id="2.00000000") as stream:
        reset = await stream.next()
        assert reset.event == "reset"
        body = json.loads(reset.data)
        assert (body["reason"], body["requested"], body["after"]) == ("mismatch", "2.00000000", 0)
        assert [e.id for e in await stream.take(3)] == [first.id, second.id, third.id]
    # Beyond the head with a hash: the database went back in time; also said, not hidden.
    async with subscribe(client, topic, after="9.0123abcd") as stream:
        reset = await stream.next()
        assert reset.event == "reset" and json.loads(reset.data)["reason"] == "behind"
        assert seq(await stream.next()) == "1"


async def test_the_opening_id_resumes_a_stream_cut_before_its_first_event(
    client: httpx.AsyncClient,
) -> None:
    """A live-tail subscriber disconnected before any event resumes from where it started,
    not from a later live tail: nothing published meanwhile is lost."""
    topic = await _topic_with(client, 3)
    async with subscribe(client, topic) as stream:
        opening = stream.opening
    assert opening is not None and opening.id.startswith("3.") and len(opening.id) == 10
    await publish(client, topic, [{"data": 4}, {"data": 5}])
    async with subscribe(client, topic, last_event_id=opening.id) as stream:
        assert stream.opening is not None and stream.opening.id == opening.id
        assert [json.loads(e.data) for e in await stream.take(2)] == [4, 5]
    # A plain seq gets its hash in the opening id: a verified resume point from then on.
    async with subscribe(client, topic, after=3) as stream:
        assert stream.opening is not None and stream.opening.id == opening.id
    # An empty topic starts after 0.
    async with subscribe(client, new_topic()) as stream:
        assert stream.opening is not None and stream.opening.id == "0"


async def test_dispatch_message_puts_every_event_in_message_frames(
    client: httpx.AsyncClient,
) -> None:
    """For EventSource.onmessage: no `event:` line, the type in the data; the same ids."""
    topic = new_topic()
    await publish(client, topic, [{"type": 'odd "type" \u00e9', "data": {"a": 1}}, {"data": 2}])
    async with subscribe(client, topic, after=0) as typed:
        expected = await typed.take(2)
    async with subscribe(client, topic, after=0, dispatch="message") as stream:
        first, second = await stream.take(2)
        # Live events through the fan-out, as well as from the table.
        await publish(client, topic, {"type": "late", "data": [3]})
        third = await stream.next()
    assert [e.event for e in (first, second, third)] == ["message"] * 3
    assert [first.id, second.id] == [e.id for e in expected]
    assert json.loads(first.data) == {
        "topic": topic,
        "seq": 1,
        "type": 'odd "type" \u00e9',
        "data": {"a": 1},
    }
    assert json.loads(second.data)["type"] == "message"
    assert json.loads(third.data) == {"topic": topic, "seq": 3, "type": "late", "data": [3]}
    bad = await client.get(f"/feeds/{topic}", params={"dispatch": "all"})
    assert bad.status_code == 400 and "dispatch" in bad.json()["detail"]
