"""The demo page at /, in a real headless Chromium driven by Playwright: publish from the
form, see the events live, stop and restart the server, and see the events published while
it was down, in order, exactly once, with the page saying where it resumed."""

from __future__ import annotations

import json

import asyncpg
import pytest

from tests.support import Service, needs_chromium, new_topic

pytestmark = needs_chromium


@pytest.mark.slow
async def test_publish_watch_restart_and_resume(browser: object, database: str) -> None:
    service = Service(database, env={"CHANGEFEED_RETRY_MILLISECONDS": "200"}).start()
    db = await asyncpg.connect(database)
    topic = new_topic("demo")
    try:
        page = await browser.new_page()  # type: ignore[attr-defined]
        loaded = await page.goto(service.base_url + "/")
        assert loaded.headers["content-type"] == "text/html; charset=utf-8"
        await page.fill("#topic", topic)
        await page.click("#watch")
        await page.wait_for_function(
            "t => document.getElementById('status').textContent === 'Live on ' + t", arg=topic
        )
        for n in (1, 2, 3):
            await page.fill("#data", json.dumps({"n": n}))
            await page.click("#publish")
            await page.wait_for_function(
                "n => document.querySelectorAll('#events tr').length === n", arg=n
            )

        assert service.stop() == 0
        await page.wait_for_function(
            "() => document.getElementById('status').textContent.startsWith('disconnected')"
        )
        # Published while the server is down, from SQL; one of a type the page never saw
        # (a native EventSource receives it only because the page asks for dispatch=message).
        for n, type in ((4, "message"), (5, "order.refunded"), (6, "message")):
            await db.execute(
                "SELECT changefeed.publish($1, $2, $3::jsonb)", topic, type, json.dumps({"n": n})
            )
        service.start()
        await page.wait_for_function(
            "() => document.querySelectorAll('#events tr').length >= 6", timeout=30_000
        )
        status = await page.text_content("#status")
        assert status == "reconnected, resumed after seq 3"
        rows = await page.eval_on_selector_all(
            "#events tr",
            "rows => rows.map(r => [...r.cells].slice(0, 3).map(c => c.textContent))",
        )
        assert rows == [
            [
                str(n),
                "order.refunded" if n == 5 else "message",
                json.dumps({"n": n}, separators=(",", ":")),
            ]
            for n in range(1, 7)
        ]
        assert await page.text_content("#notes") == ""  # no duplicate, no reset
    finally:
        await db.close()
        service.stop()


@pytest.mark.slow
async def test_the_page_can_filter(browser: object, database: str) -> None:
    service = Service(database).start()
    topic = new_topic("demo")
    try:
        page = await browser.new_page()  # type: ignore[attr-defined]
        await page.goto(service.base_url + "/")
        await page.fill("#topic", topic)
        await page.fill("#where", '{"n": 2}')
        await page.click("#watch")
        await page.wait_for_function(
            "t => document.getElementById('status').textContent === 'Live on ' + t", arg=topic
        )
        for n in (1, 2, 3, 2):
            await page.evaluate("() => { document.getElementById('published').textContent = '' }")
            await page.fill("#data", json.dumps({"n": n}))
            await page.click("#publish")
            await page.wait_for_function(
                "() => document.getElementById('published').textContent === 'accepted'"
            )
        await page.wait_for_function("() => document.querySelectorAll('#events tr').length >= 2")
        rows = await page.eval_on_selector_all(
            "#events tr", "rows => rows.map(r => r.cells[0].textContent)"
        )
        assert rows == ["2", "4"]
    finally:
        service.stop()
