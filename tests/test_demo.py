"""The demo page at /, in a real headless Chromium driven by Playwright: publish from the
form, see the events live, stop and restart the server, and see the events published while
it was down, in order, exactly once, with the page saying where it resumed."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.support import Service, new_topic

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
playwright = pytest.importorskip("playwright.async_api")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"), reason="Chromium is not installed"
)


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    assert CHROMIUM is not None, "CI must install chromium"
    async with playwright.async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


@pytest.mark.slow
async def test_publish_watch_restart_and_resume(browser: object, database: str) -> None:
    service = Service(database, env={"CHANGEFEED_RETRY_MILLISECONDS": "200"}).start()
    db = await asyncpg.connect(database)
    topic = new_topic("demo")
    try:
        page = await browser.new_page()  # type: ignore[attr-defined]
        await page.goto(service.base_url + "/")
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
        for n in (4, 5, 6):  # published while the server is down, from SQL
            await db.execute(
                "SELECT changefeed.publish($1, 'message', $2::jsonb)", topic, json.dumps({"n": n})
            )
        service.start()
        await page.wait_for_function(
            "() => document.querySelectorAll('#events tr').length >= 6", timeout=30_000
        )
        status = await page.text_content("#status")
        assert status == "reconnected, resumed after seq 3"
        rows = await page.eval_on_selector_all(
            "#events tr", "rows => rows.map(r => [r.cells[0].textContent, r.cells[2].textContent])"
        )
        assert rows == [[str(n), json.dumps({"n": n})] for n in range(1, 7)]
        assert await page.text_content("#notes") == ""  # no duplicate, no reset
    finally:
        await db.close()
        service.stop()
