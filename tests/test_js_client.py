"""The JavaScript client (clients/js): in real Chromium, importing /client.js from the
service; in Node, by Node's own test runner against real services (this runs those tests
with a fresh database); its parser against eventsource-parser; its TypeScript types."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from typing import Any

import asyncpg
import httpx
import pytest

from tests.support import REPO, SECRET, Service, bearer, needs_chromium, new_topic, token

CLIENT = REPO / "clients" / "js"
NODE = shutil.which("node")
# CI installs Node and the client's dev dependencies (.ci/run); elsewhere, skipped without.
needs_node = pytest.mark.skipif(
    (NODE is None or not (CLIENT / "node_modules").is_dir()) and not os.environ.get("CI"),
    reason="needs node, and `npm ci` in clients/js",
)
JWT = {
    "CHANGEFEED_AUTH": "jwt",
    "CHANGEFEED_JWT_SECRET": SECRET,
    "CHANGEFEED_JWT_LEEWAY_SECONDS": "0",
    "CHANGEFEED_RETRY_MILLISECONDS": "300",
}


def _node_test(*files: str, env: dict[str, str] | None = None) -> str:
    assert NODE is not None, "CI must install node"
    ran = subprocess.run(
        [NODE, "--test", "--test-reporter=spec", "--test-timeout=120000", *files],
        cwd=CLIENT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert ran.returncode == 0, ran.stdout[-20_000:] + ran.stderr[-5000:]
    return ran.stdout


@needs_node
def test_parser_and_edges() -> None:
    """The parser against eventsource-parser; close, return, abort, hostile frames and a
    silent peer against a small server of the test's own."""
    out = _node_test("test/parser.test.mjs", "test/edges.test.mjs")
    assert "fail 0" in out and "skipped 0" in out, out


@needs_node
@pytest.mark.slow
def test_client_in_node_against_the_service(database: str) -> None:
    env = {"CHANGEFEED_JS_TEST_DATABASE_URL": database, "CHANGEFEED_JS_TEST_PYTHON": sys.executable}
    out = _node_test("test/feed.test.mjs", env=env)
    # Every test ran: none was skipped for want of the service.
    assert "skipped 0" in out and "fail 0" in out, out


@needs_node
def test_typescript_types_describe_the_client() -> None:
    ran = subprocess.run(
        [str(CLIENT / "node_modules" / ".bin" / "tsc"), "-p", "."],
        cwd=CLIENT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr


async def test_every_replica_serves_the_client(service: Service) -> None:
    async with httpx.AsyncClient(base_url=service.base_url) as http:
        served = await http.get("/client.js")
        again = await http.get("/client.js", headers={"If-None-Match": served.headers["etag"]})
    assert served.status_code == 200
    assert served.headers["content-type"] == "text/javascript; charset=utf-8"
    assert served.content == (CLIENT / "client.js").read_bytes()
    assert again.status_code == 304 and again.content == b""


# The page's side: follow the feed with a token from Python, and keep what arrives.
FOLLOW = """async ([url]) => {
  const { feed } = await import("/client.js");
  window.got = { seen: [], error: null };
  const events = feed(url, { after: "0", token: () => window.freshToken() });
  (async () => {
    try {
      for await (const e of events) {
        const size = typeof e.data === "string" ? e.data.length : e.data.n;
        window.got.seen.push([e.seq, e.type, size, e.id === events.lastEventId]);
      }
    } catch (error) {
      window.got.error = String(error);
    }
  })();
}"""


@needs_chromium
@pytest.mark.slow
async def test_client_in_chromium_through_a_restart_and_expiring_tokens(
    browser: Any, database: str
) -> None:
    """A page imports /client.js and follows a topic with 2 s tokens from a provider,
    through a service restart, events of a type it never saw and a 60 KB event: every event
    once, in order."""
    topic = new_topic("page")
    asked = 0

    def fresh() -> str:
        nonlocal asked
        asked += 1
        return token("page", subscribe=[topic], expires_in=2)

    writer = bearer(token("writer", publish=[topic]))
    expected: list[list[Any]] = []

    async def publish(http: httpx.AsyncClient, n: int, type: str, data: Any) -> None:
        event = {"type": type, "data": data}
        response = await http.post(f"/feeds/{topic}", json=event, headers=writer)
        assert response.status_code == 202, response.text
        size = len(data) if isinstance(data, str) else data["n"]
        expected.append([n, type, size, True])

    async def seen(page: Any, n: int) -> list[list[Any]]:
        await page.wait_for_function(
            "n => window.got.seen.length >= n || window.got.error", arg=n, timeout=30_000
        )
        got = await page.evaluate("window.got")
        assert got["error"] is None, got["error"]
        return got["seen"]  # type: ignore[no-any-return]

    service = Service(database, env=JWT).start()
    db = await asyncpg.connect(database)
    try:
        page = await browser.new_page()
        await page.expose_function("freshToken", fresh)
        await page.goto(service.base_url + "/client.js")  # the service's origin
        await page.evaluate(FOLLOW, [f"/feeds/{topic}"])
        async with httpx.AsyncClient(base_url=service.base_url) as http:
            for n in range(1, 6):
                await publish(http, n, "order.created", {"n": n})
            await seen(page, 5)
        assert service.stop() == 0
        # While it is down, from SQL: one of a type the page has never seen.
        for n, type in ((6, "order.created"), (7, "order.refunded, a type never seen"), (8, "x")):
            await db.execute(
                "SELECT changefeed.publish($1, $2, $3::jsonb)", topic, type, json.dumps({"n": n})
            )
            expected.append([n, type, n, True])
        service.start()
        async with httpx.AsyncClient(base_url=service.base_url) as http:
            await publish(http, 9, "big", "é" * 30_000)  # 60 KB as stored
            for n in range(10, 36):
                await publish(http, n, "order.paid", {"n": n})
                await asyncio.sleep(0.15)  # pacing: the run spans two token lifetimes
            assert await seen(page, 35) == expected
    finally:
        await db.close()
        service.stop()
    # Three connections at least (start, restart, expiry); fresh tokens, not a loop.
    assert 3 <= asked <= 20, asked
