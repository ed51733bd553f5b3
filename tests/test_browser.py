"""A real Chromium page with the plain EventSource API: it replays a topic, survives a
service restart by reconnecting with Last-Event-ID (to the same URL, whose ?after=0 the
header must beat), and ends with every event exactly once, in order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import httpx
import pytest

from changefeed.ops.cluster import free_port
from tests.support import (
    CHROMIUM,
    SECRET,
    Service,
    bearer,
    needs_chromium,
    new_topic,
    private_tempdir,
    token,
)

pytestmark = [pytest.mark.slow, needs_chromium]

PAGE = b"""<!doctype html>
<meta charset="utf-8">
<title>changefeed EventSource</title>
<script>
const params = new URLSearchParams(location.search);
// withCredentials: send cookies (the token) to the service, another origin of this site.
const feed = new EventSource(params.get("feed"), {withCredentials: params.has("credentials")});
const state = {opens: 0, errors: 0, seen: [], resets: []};
const report = () => fetch("/report", {method: "POST", body: JSON.stringify(state)});
feed.onopen = () => { state.opens++; report(); };
feed.onerror = () => { state.errors++; };
feed.addEventListener("reset", (e) => {
  state.resets.push(JSON.parse(e.data).reason);
  report();
});
feed.addEventListener("tick", (e) => {
  state.seen.push([e.lastEventId.split(".")[0], JSON.parse(e.data).n]);
  report();
});
</script>
"""


@contextlib.asynccontextmanager
async def _chromium(url: str) -> AsyncIterator[None]:
    """Headless Chromium on ``url`` in a fresh profile, with the flags this closed network
    needs; killed on exit."""
    assert CHROMIUM is not None, "CI must install chromium"
    profile = private_tempdir("changefeed-chromium-")
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-sync",
        "--disable-component-update",
        f"--user-data-dir={profile}",
        url,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        process.kill()
        await process.wait()
        shutil.rmtree(profile, ignore_errors=True)


class _PageServer:
    """Serves the page and collects the page's reports (snapshots of what it saw)."""

    def __init__(self, cookie: str | None = None) -> None:
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.latest: dict[str, Any] = {"opens": 0, "seen": [], "resets": []}
        self.changed = threading.Condition()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                if cookie is not None:
                    # Cookies are per host, not per port: the service's origin gets it too.
                    self.send_header("Set-Cookie", f"{cookie}; Path=/; SameSite=Lax")
                self.end_headers()
                self.wfile.write(PAGE)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.changed:
                    # Reports may arrive out of order: keep the one that saw the most.
                    if (len(body["seen"]), body["opens"]) >= (
                        len(server.latest["seen"]),
                        server.latest["opens"],
                    ):
                        server.latest = body
                    server.changed.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    async def wait(self, predicate: Any, timeout: float = 30) -> dict[str, Any]:
        def blocking() -> dict[str, Any]:
            with self.changed:
                if not self.changed.wait_for(lambda: predicate(self.latest), timeout):
                    raise TimeoutError(f"the page did not get there: {self.latest}")
                return self.latest

        return await asyncio.to_thread(blocking)

    def close(self) -> None:
        self.httpd.shutdown()


@contextlib.contextmanager
def _page_and_service(
    database: str, env: dict[str, str] | None = None, cookie: str | None = None
) -> Iterator[tuple[_PageServer, Service]]:
    """The page's server, and a service that lets the page's origin read its feeds."""
    page = _PageServer(cookie)
    try:
        with Service(database, env={"CHANGEFEED_CORS_ORIGINS": page.origin, **(env or {})}) as svc:
            yield page, svc
    finally:
        page.close()


async def test_eventsource_resumes_exactly_across_a_service_restart(
    module_database: str,
) -> None:
    topic = new_topic("browser")
    env = {"CHANGEFEED_RETRY_MILLISECONDS": "200"}
    with _page_and_service(module_database, env) as (page, service):
        async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as client:
            batch = [{"type": "tick", "data": {"n": n}} for n in (1, 2, 3)]
            assert (await client.post(f"/feeds/{topic}", json=batch)).status_code == 202

        feed = f"{service.base_url}/feeds/{topic}?after=0"
        async with _chromium(f"{page.origin}/?feed={feed}"):
            await page.wait(lambda s: len(s["seen"]) >= 3)

            # Restart the service; meanwhile an application publishes from SQL.
            assert service.stop() == 0
            db = await asyncpg.connect(module_database)
            try:
                for n in (4, 5, 6):
                    await db.execute(
                        "SELECT changefeed.publish($1, 'tick', $2::jsonb)",
                        topic,
                        json.dumps({"n": n}),
                    )
            finally:
                await db.close()
            service.start()

            final = await page.wait(lambda s: len(s["seen"]) >= 6 and s["opens"] >= 2)
        assert final["seen"] == [[str(n), n] for n in range(1, 7)]


async def test_eventsource_page_reads_a_reset_frame(module_database: str) -> None:
    """A resume point the topic cannot vouch for: the page is told, then gets the topic."""
    topic = new_topic("browser")
    with _page_and_service(module_database) as (page, service):
        async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as client:
            batch = [{"type": "tick", "data": {"n": n}} for n in (1, 2, 3)]
            assert (await client.post(f"/feeds/{topic}", json=batch)).status_code == 202
        # An id of another history at seq 2 (as after a database restore).
        feed = f"{service.base_url}/feeds/{topic}?after=2.00000000"
        async with _chromium(f"{page.origin}/?feed={feed}"):
            final = await page.wait(lambda s: len(s["seen"]) >= 3)
        assert final["resets"] == ["mismatch"]
        assert final["seen"] == [[str(n), n] for n in (1, 2, 3)]


async def test_eventsource_authenticates_with_a_cookie(module_database: str) -> None:
    """With tokens required, a page's EventSource (which cannot set headers) sends its
    token as a cookie to the service, another origin of the same site."""
    import jwt

    topic = new_topic("browser")
    secret = "a-browser-test-secret-long-enough-for-hs256"
    claims = {"sub": "page", "exp": int(time.time()) + 300, "changefeed": {"subscribe": [topic]}}
    cookie = f"changefeed_token={jwt.encode(claims, secret)}"
    env = {"CHANGEFEED_AUTH": "jwt", "CHANGEFEED_JWT_SECRET": secret}
    with _page_and_service(module_database, env, cookie) as (page, service):
        publisher = {
            "sub": "app",
            "exp": int(time.time()) + 300,
            "changefeed": {"publish": [topic]},
        }
        headers = {"Authorization": f"Bearer {jwt.encode(publisher, secret)}"}
        async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as client:
            batch = [{"type": "tick", "data": {"n": n}} for n in (1, 2, 3)]
            sent = await client.post(f"/feeds/{topic}", json=batch, headers=headers)
            assert sent.status_code == 202
            # Without the cookie the same stream is refused.
            assert (await client.get(f"/feeds/{topic}/events")).status_code == 401
        feed = f"{service.base_url}/feeds/{topic}?after=0"
        async with _chromium(f"{page.origin}/?credentials=1&feed={feed}"):
            final = await page.wait(lambda s: len(s["seen"]) >= 3)
        assert final["seen"] == [[str(n), n] for n in (1, 2, 3)]


# A page on the service's origin following a topic with a native EventSource and a cookie
# token that expires every 2 s, as the README says: on `closed`, set a fresh cookie and
# open a new EventSource after the last id (dispatch=message: one handler for every type).
EXPIRING_PAGE = """<!doctype html>
<script>
const topic = TOPIC;
window.got = { seen: [], closed: 0, opens: 0 };
let lastId = "0";
async function follow() {
  document.cookie = `changefeed_token=${await window.freshToken()}; path=/; SameSite=Strict`;
  const source = new EventSource(`/feeds/${topic}?dispatch=message&after=${lastId}`);
  source.onopen = () => window.got.opens++;
  source.onmessage = (e) => {
    const event = JSON.parse(e.data);
    lastId = e.lastEventId;
    window.got.seen.push([event.seq, event.type, event.data.n]);
  };
  source.addEventListener("closed", () => {
    window.got.closed++;
    source.close();
    follow();
  });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) setTimeout(follow, 500);
  };
}
follow();
</script>"""


async def test_eventsource_follows_through_expiring_cookies_and_a_restart(
    browser: Any, database: str
) -> None:
    topic = new_topic("browser")
    env = {
        "CHANGEFEED_AUTH": "jwt",
        "CHANGEFEED_JWT_SECRET": SECRET,
        "CHANGEFEED_JWT_LEEWAY_SECONDS": "0",
        "CHANGEFEED_RETRY_MILLISECONDS": "300",
    }
    writer = bearer(token("app", publish=[topic]))
    types = ["order.created", "order.paid", "never.registered.anywhere"]
    service = Service(database, env=env).start()
    try:
        page = await browser.new_page()
        await page.expose_function(
            "freshToken", lambda: token("page", subscribe=[topic], expires_in=2)
        )
        url = f"{service.base_url}/page.html"
        html = EXPIRING_PAGE.replace("TOPIC", json.dumps(topic))
        await page.route(url, lambda route: route.fulfill(body=html, content_type="text/html"))
        await page.goto(url)
        async with httpx.AsyncClient(base_url=service.base_url, headers=writer) as http:

            async def publish(n: int) -> None:
                event = {"type": types[n % 3], "data": {"n": n}}
                assert (await http.post(f"/feeds/{topic}", json=event)).status_code == 202

            for n in range(1, 11):
                await publish(n)
            await page.wait_for_function("() => window.got.seen.length >= 10", timeout=30_000)
            assert service.stop() == 0
            service.start()
            for n in range(11, 41):
                await publish(n)
                await asyncio.sleep(0.15)  # pacing: the run spans two token lifetimes
            await page.wait_for_function("() => window.got.seen.length >= 40", timeout=30_000)
        got = await page.evaluate("window.got")
    finally:
        service.stop()
    assert got["seen"] == [[n, types[n % 3], n] for n in range(1, 41)]
    assert got["closed"] >= 2 and got["opens"] >= 3, got
