"""The README's client examples, run as written (pointed at a test service instead of
127.0.0.1:8000): Python, Node with the npm package installed as the README says, pages in
real Chromium with the JS client and with a native EventSource, and curl."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.support import REPO, Service, apply_changes, needs_chromium, private_tempdir, wait_for
from tests.test_js_client import NODE, needs_node

README = (REPO / "README.md").read_text()
EVENTS = [
    {"type": "order.created", "data": {"n": 1}},
    {"type": "order.refunded", "data": {"n": 2}},  # a type no example registers for
]


def example(name: str, service: Service) -> str:
    """The code block after ``<!-- readme-test: name -->``, for ``service``."""
    found = re.search(rf"<!-- readme-test: {name} -->\n```\w*\n(.*?)```", README, re.S)
    assert found, f"no example {name} in the README"
    return found.group(1).replace("http://127.0.0.1:8000", service.base_url)


@pytest.fixture
def service(database: str) -> Iterator[Service]:
    with Service(database) as svc:
        httpx.post(f"{svc.base_url}/feeds/orders", json=EVENTS).raise_for_status()
        yield svc


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = private_tempdir("changefeed-readme-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _first_lines(command: list[str], cwd: Path, n: int) -> list[str]:
    """The first ``n`` lines a command that follows a feed prints (then it is stopped)."""
    process = await asyncio.create_subprocess_exec(
        *command, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(30):
            while len(lines) < n:
                line = await process.stdout.readline()
                assert line, (await process.stderr.read()).decode()
                lines.append(line.decode().rstrip("\n"))
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
    return lines


async def test_python_example(service: Service, workdir: Path) -> None:
    (workdir / "follow.py").write_text(example("python", service))
    lines = await _first_lines([sys.executable, "follow.py"], workdir, 2)
    assert lines == ["1 order.created {'n': 1}", "2 order.refunded {'n': 2}"]
    # Stopped, then run again: it resumes from its checkpoint (the last event whose loop
    # body completed, so the second event's again if it was stopped inside the body).
    async with httpx.AsyncClient() as http:
        published = await http.post(f"{service.base_url}/feeds/orders", json={"data": {"n": 3}})
        published.raise_for_status()
    saved = (workdir / "orders.pos").read_text()
    again = await _first_lines(
        [sys.executable, "follow.py"], workdir, 2 if saved.startswith("1.") else 1
    )
    assert again[-1] == "3 message {'n': 3}" and "1 order.created {'n': 1}" not in again


@needs_node
async def test_node_example(service: Service, workdir: Path) -> None:
    installed = await asyncio.create_subprocess_exec(
        "npm", "install", "--no-audit", "--no-fund", str(REPO / "clients" / "js"), cwd=workdir
    )
    assert await installed.wait() == 0
    (workdir / "follow.mjs").write_text(example("node", service))
    assert NODE is not None
    lines = await _first_lines([NODE, "follow.mjs"], workdir, 2)
    assert lines == ['1 order.created {"n":1}', '2 order.refunded {"n":2}']


async def test_curl_example(service: Service, workdir: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    first = example("curl", service).splitlines()[0].split("#")[0].strip()
    url = re.search(r"'(localhost:8000[^']*)'", first)
    assert url is not None and first.startswith("curl -N")
    address = url.group(1).replace("localhost:8000", service.base_url)
    lines = await _first_lines([curl, "-sN", address], workdir, 9)
    assert lines[:3] == ["retry: 3000", "id: 0", ""]
    assert re.fullmatch(r"id: 2\.[0-9a-f]{8}", lines[7]) and lines[8] == "event: order.refunded"


async def _page_console(browser: Any, service: Service, html: str, n: int) -> list[str]:
    """Opens ``html`` as a page of the service's origin; the first ``n`` console lines."""
    page = await browser.new_page()
    logged: list[str] = []
    enough = asyncio.Event()

    def log(message: Any) -> None:
        logged.append(message.text)
        if len(logged) >= n:
            enough.set()

    page.on("console", log)
    url = f"{service.base_url}/readme-example.html"
    await page.route(url, lambda route: route.fulfill(body=html, content_type="text/html"))
    await page.route(
        f"{service.base_url}/my-app/changefeed-token",
        lambda route: route.fulfill(body="unused: this service checks no tokens"),
    )
    await page.goto(url)
    async with asyncio.timeout(30):
        await enough.wait()
    return logged[:n]


@needs_chromium
async def test_javascript_page_example(browser: Any, service: Service) -> None:
    logged = await _page_console(browser, service, example("js-page", service), 2)
    assert [line.split(" ", 1)[1] for line in logged] == [
        "1 orders order.created {n: 1}",
        "2 orders order.refunded {n: 2}",
    ]


@needs_chromium
async def test_eventsource_page_example(browser: Any, service: Service) -> None:
    logged = await _page_console(browser, service, example("eventsource", service), 2)
    assert logged == [
        "orders 1 order.created {n: 1}",
        "orders 2 order.refunded {n: 2}",
    ]


def _shell_lines(block: str) -> list[str]:
    """The commands of a shell block (continued lines joined)."""
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


async def _shell(
    line: str, cwd: Path, env: dict[str, str], seconds: float
) -> tuple[int | None, str, str]:
    """Runs one README command line in bash; one that follows for ever is stopped after
    ``seconds`` (exit status None), keeping what it printed."""
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        line,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stdout is not None and process.stderr is not None
    reading = asyncio.gather(process.stdout.read(), process.stderr.read())
    code: int | None
    try:
        async with asyncio.timeout(seconds):
            code = await process.wait()
    except TimeoutError:
        os.killpg(process.pid, signal.SIGTERM)
        await process.wait()
        code = None
    out, err = await reading
    return code, out.decode(), err.decode()


def _environment(service: Service, database: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHANGEFEED_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update({"CHANGEFEED_URL": service.base_url, "CHANGEFEED_DATABASE_URL": database})
    return env


@pytest.fixture
def empty_service(database: str) -> Iterator[Service]:
    with Service(database) as svc:
        yield svc


async def test_run_it_example(empty_service: Service, database: str, workdir: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    address = empty_service.base_url.removeprefix("http://127.0.0.1:")
    subscribe, publish = _shell_lines(example("run-it", empty_service))
    env = _environment(empty_service, database)
    code, out, err = await _shell(
        publish.replace("localhost:8000", f"localhost:{address}"), workdir, env, 30
    )
    assert code == 0 and "accepted" in out, err
    code, out, _ = await _shell(
        subscribe.replace("localhost:8000", f"localhost:{address}"), workdir, env, 3
    )
    assert code is None  # it follows
    assert re.search(r'id: 1\.[0-9a-f]{8}\nevent: order.created\ndata: \{"n": 1\}', out), out


async def test_command_line_example(empty_service: Service, database: str, workdir: Path) -> None:
    env = _environment(empty_service, database)
    said = {}
    for line in _shell_lines(example("cli", empty_service)):
        command = line.split("#")[0].strip()
        follows = " tail " in f" {command} "
        code, out, err = await _shell(command, workdir, env, 5 if follows else 60)
        assert code == (None if follows else 0), (line, err)
        assert err == "", (line, err)  # quiet: no log lines
        said[command.split()[1]] = out
    tailed = [json.loads(line) for line in said["tail"].splitlines()]
    assert [(e["seq"], e["type"], e["data"]) for e in tailed] == [(1, "order.created", {"n": 1})]
    assert "orders" in said["topics"] and json.loads(said["consumers"])["name"] == "billing"
    assert len((workdir / "orders.ndjson").read_text().splitlines()) == 1
    assert said["verify"].strip() == "1 topics intact"
    assert said["status"].startswith("changefeed ") and "ready" in said["status"]


async def test_change_data_capture_example(
    empty_service: Service, database: str, workdir: Path
) -> None:
    """Capture a table that holds rows, consume it from seq 1, and rebuild it exactly."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    env = _environment(empty_service, database)
    said = []
    for line in _shell_lines(example("cdc", empty_service)):
        code, out, err = await _shell(line.split("#")[0].strip(), workdir, env, 60)
        assert code == 0, (line, err)
        said.append(out)
    _, _, captured, _, page, again, listed = said
    assert captured.strip() == "1000 rows published as read events on orders"
    events = json.loads(page)["events"]
    assert [(e["seq"], e["type"]) for e in events] == [(1, "read"), (2, "read")]
    assert events[0]["data"] == {
        "table": "public.orders",
        "op": "read",
        "key": {"id": 1},
        "new": {"id": 1, "tenant_id": 1, "total": 10},
    }
    assert again.strip() == "333 rows published as read events"
    assert "public.orders -> orders (key id)\n  backfill done: 333 rows" in listed
    db = await asyncpg.connect(database)
    try:

        async def sequenced() -> bool:
            return await db.fetchval("SELECT count(*) FROM changefeed.inbox") == 0

        await wait_for(sequenced, timeout=30)
        await db.execute("CREATE TABLE public.rebuilt (LIKE public.orders)")
        assert await apply_changes(db, "orders", "public.rebuilt") == 1000 + 1 + 333
        differ = await db.fetchval(
            "SELECT count(*) FROM ((TABLE public.orders EXCEPT TABLE public.rebuilt) "
            "UNION ALL (TABLE public.rebuilt EXCEPT TABLE public.orders)) d"
        )
        assert differ == 0
    finally:
        await db.close()
