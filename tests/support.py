"""Test helpers: throwaway databases, real service processes, an SSE reader."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import jwt
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse

from changefeed.ops.cluster import Cluster, free_port

REPO = Path(__file__).resolve().parent.parent


# The HS256 secret of services started with CHANGEFEED_AUTH=jwt in tests.
# Real Chromium for browser tests. CI installs it (.ci/run); elsewhere those tests are
# skipped without it.
CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"), reason="Chromium is not installed"
)

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


def token(
    sub: str,
    *,
    subscribe: list[object] | None = None,
    publish: list[str] | None = None,
    consume: list[str] | None = None,
    expires_in: float = 300,
    key: object = SECRET,
    algorithm: str = "HS256",
    kid: str | None = None,
) -> str:
    grants: dict[str, list[object]] = {"subscribe": subscribe or [], "publish": publish or []}
    if consume is not None:
        grants["consume"] = list(consume)
    claims = {"sub": sub, "exp": int(time.time() + expires_in), "changefeed": grants}
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)  # type: ignore[arg-type]


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def url_with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def url_as(url: str, role: str) -> str:
    """The same database, connecting as ``role`` (the test cluster trusts local roles)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


def new_topic(prefix: str = "t") -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


def private_tempdir(prefix: str) -> Path:
    """A temp dir that PostgreSQL's unprivileged user can reach when tests run as root."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def temporary_cluster(prefix: str, *, within: str = "", **options: Any) -> Iterator[Cluster]:
    """A running PostgreSQL cluster of our own in a new temporary directory (in its
    subdirectory ``within``, if given), stopped and removed on exit."""
    directory = private_tempdir(prefix)
    cluster = Cluster(directory / within, **options)
    try:
        cluster.ensure()
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)


async def create_database(admin_url: str, template: str | None = None) -> str:
    """A new database on the test server; returns its URL."""
    name = f"cf_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_url)
    try:
        suffix = f" TEMPLATE {template}" if template else ""
        await conn.execute(f"CREATE DATABASE {name}{suffix}")
    finally:
        await conn.close()
    return url_with_database(admin_url, name)


@dataclass
class Service:
    """A real ``changefeed serve`` process on a free port."""

    database_url: str | None
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait: bool = True) -> Service:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHANGEFEED_")}
        # Authentication is chosen explicitly for a configured database; tests of it set jwt.
        env.update({"CHANGEFEED_LOG_FORMAT": "json", "CHANGEFEED_AUTH": "none", **self.env})
        if self.database_url:
            env["CHANGEFEED_DATABASE_URL"] = self.database_url
        self.log_path = Path(tempfile.mkstemp(prefix="changefeed-", suffix=".log")[1])
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "changefeed", "serve", "--port", str(self.port), *self.args],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"service not ready within {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status (the log is kept if it is not 0)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise
        if self.process.returncode == 0 and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
        return self.process.returncode

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kill(self) -> None:
        """SIGKILL: no graceful anything."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def rss_bytes(self) -> int:
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/statm").read_text().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-20000:] if self.log_path else ""


def seq(event: ServerSentEvent) -> str:
    """The position in an event's id ``<seq>.<hash8>`` (for several topics, the global
    position)."""
    return event.id.split(".", 1)[0]


async def publish(client: httpx.AsyncClient, topic: str, body: object) -> httpx.Response:
    return await client.post(f"/feeds/{topic}", json=body)


@contextlib.asynccontextmanager
async def subscribe(
    client: httpx.AsyncClient,
    topic: str,
    *,
    after: int | str | None = None,
    last_event_id: str | None = None,
    dispatch: str | None = None,
) -> AsyncIterator[SSE]:
    """An open SSE stream; the opening frame (``retry`` and the starting id) is already
    consumed on entry, and kept as ``opening``."""
    params = {"after": str(after)} if after is not None else {}
    if dispatch is not None:
        params["dispatch"] = dispatch
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    async with aconnect_sse(
        client, "GET", f"/feeds/{topic}", params=params, headers=headers
    ) as source:
        source.response.raise_for_status()
        sse = SSE(source.aiter_sse())
        try:
            sse.opening = await sse.next(timeout=10)
            assert sse.opening.retry is not None and sse.opening.data == "", sse.opening
            yield sse
        finally:
            await sse.close()


class SSE:
    """Reads events off a stream with a bound on every wait.

    A reader task moves events into a queue, so that a timed-out wait does not cancel
    (and so end) the underlying iterator.
    """

    _END = object()

    def __init__(self, events: AsyncIterator[ServerSentEvent]) -> None:
        self.opening: ServerSentEvent | None = None
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._task = asyncio.create_task(self._pump(events))

    async def _pump(self, events: AsyncIterator[ServerSentEvent]) -> None:
        try:
            first = True
            async for event in events:
                # httpx-sse reports keep-alive comments after an id as empty events;
                # the SSE spec dispatches nothing for them. Only the first (retry) frame
                # is kept among data-less events.
                if event.data or first:
                    await self._queue.put(event)
                first = False
        except httpx.HTTPError as exc:
            await self._queue.put(exc)
        finally:
            await self._queue.put(self._END)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def next(self, timeout: float = 10.0) -> ServerSentEvent:
        async with asyncio.timeout(timeout):
            item = await self._queue.get()
        if item is self._END:
            self._queue.put_nowait(self._END)
            raise EOFError("the stream ended")
        if isinstance(item, Exception):
            raise item
        assert isinstance(item, ServerSentEvent)
        return item

    async def take(self, n: int, timeout: float = 10.0) -> list[ServerSentEvent]:
        async with asyncio.timeout(timeout):
            return [await self.next(timeout) for _ in range(n)]

    async def expect_nothing(self, within: float) -> None:
        """Assert that no event arrives within ``within`` seconds."""
        try:
            event = await self.next(timeout=within)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected event {event}")


async def metrics(client: httpx.AsyncClient) -> dict[str, float]:
    """The service's Prometheus samples by name (labels ignored, summed)."""
    from prometheus_client.parser import text_string_to_metric_families

    response = await client.get("/metrics")
    response.raise_for_status()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


async def apply_changes(db: asyncpg.Connection, topic: str, target: str) -> int:
    """Apply the topic's events, in seq order, to ``target``."""
    rows = await db.fetch(
        "SELECT type, data::text FROM changefeed.events WHERE topic = $1 ORDER BY seq", topic
    )
    for row in rows:
        change = json.loads(row["data"])
        if row["type"] == "truncate":
            await db.execute(f"DELETE FROM {target}")
            continue
        key = " AND ".join(
            f"{column} = (($1::jsonb) ->> '{column}')::int" for column in change["key"]
        )
        # read and update are upserts of new at key
        if row["type"] in ("read", "update", "delete"):
            await db.execute(f"DELETE FROM {target} WHERE {key}", json.dumps(change["key"]))
        if row["type"] in ("read", "insert", "update"):
            await db.execute(
                f"INSERT INTO {target} "
                f"SELECT * FROM jsonb_populate_record(NULL::{target}, $1::jsonb)",
                json.dumps(change["new"]),
            )
    return len(rows)


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll an async predicate until it returns a truthy value (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s (last: {value!r})")
        await asyncio.sleep(interval)


NGINX_CONF = REPO / "deploy" / "nginx" / "changefeed.conf"


class Nginx:
    """Debian's nginx running the shipped config, in front of the given replica ports.

    ``read_timeouts``: (for API calls, for long responses) in place of the shipped 60 s and
    1 h, so that a test can tell in seconds which kind a location is.
    """

    def __init__(
        self, upstream_ports: list[int], read_timeouts: tuple[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.upstream_ports = upstream_ports
        self.read_timeouts = read_timeouts
        self.prefix = private_tempdir("changefeed-nginx-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.prefix / "access.log"

    def config(self) -> str:
        """The shipped server config with test addresses, wrapped in a minimal main config."""
        import re

        site = NGINX_CONF.read_text()
        site, count = re.subn(
            r"(?m)^    access_log /var/log/nginx/access.log changefeed;",
            f"    access_log {self.access_log} changefeed;",
            site,
        )
        assert count == 1, "the shipped config's access_log line was not found"
        if self.read_timeouts is not None:
            api, long = self.read_timeouts
            site, count = re.subn(
                r"(?m)^    proxy_read_timeout 60s;", f"    proxy_read_timeout {api};", site
            )
            assert count == 1, "the shipped config's API read timeout was not found"
            site, count = re.subn(
                r"(?m)^        proxy_read_timeout 1h;", f"        proxy_read_timeout {long};", site
            )
            assert count == 1, "the shipped config's stream read timeout was not found"
        servers = "".join(
            f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=2s;\n"
            for port in self.upstream_ports
        )
        site, count = re.subn(r"(?m)^    server changefeed-\d+:8000[^\n]*\n", "", site)
        assert count >= 1, "the shipped config's upstream servers were not found"
        site = site.replace("upstream changefeed {\n", "upstream changefeed {\n" + servers, 1)
        site, count = re.subn(r"(?m)^    listen 80;", f"    listen 127.0.0.1:{self.port};", site)
        assert count == 1, "the shipped config's listen line was not found"
        temp = self.prefix / "tmp"
        temp.mkdir(exist_ok=True)
        temp.chmod(0o777)
        return (
            "daemon off;\nworker_processes 1;\n"
            f"pid {self.prefix}/nginx.pid;\nerror_log {self.prefix}/error.log warn;\n"
            "events { worker_connections 4096; }\n"
            "http {\n"
            f"  access_log off;\n  client_body_temp_path {temp}/body;\n"
            f"  proxy_temp_path {temp}/proxy;\n  fastcgi_temp_path {temp}/fastcgi;\n"
            f"  uwsgi_temp_path {temp}/uwsgi;\n  scgi_temp_path {temp}/scgi;\n"
            f"{site}\n}}\n"
        )

    def start(self) -> Nginx:
        conf = self.prefix / "nginx.conf"
        conf.write_text(self.config())
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.process = subprocess.Popen(
            [binary, "-p", str(self.prefix), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=(self.prefix / "stderr.log").open("wb"),
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError((self.prefix / "stderr.log").read_text())
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return self
            time.sleep(0.05)
        raise TimeoutError("nginx did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.prefix, ignore_errors=True)


class BlackholeProxy:
    """A TCP proxy to PostgreSQL whose current connections can be frozen: bytes stop
    flowing both ways but nothing is closed, as when a network path silently dies."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._frozen: set[asyncio.Event] = set()
        self._pipes: list[asyncio.Event] = []
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> BlackholeProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        flowing = asyncio.Event()
        flowing.set()
        self._pipes.append(flowing)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    await flowing.wait()  # frozen: hold the bytes, close nothing
                    dst.write(data)
                    await dst.drain()
            dst.close()  # one side ended: end the other too

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def freeze_existing(self) -> None:
        """Freeze every connection open now; new ones flow normally."""
        for flowing in self._pipes:
            flowing.clear()
        self._pipes = []

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


def changefeed(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the ``changefeed`` command with only the given CHANGEFEED_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHANGEFEED_")}
    return subprocess.run(
        [sys.executable, "-m", "changefeed", *args],
        cwd=REPO,
        env={**clean, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class Ledger:
    """What writers know of their writes, to check a topic's log against (Jepsen's queue
    anomalies): acknowledged, failed (rolled back or refused), or unknown (the connection
    died during the commit). Each write's data is ``{"k": key}``."""

    ok: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)
    http_retries: int = 0

    def anomalies(
        self, log: list[tuple[int, str]], received: dict[str, list[tuple[int, str]]]
    ) -> list[str]:
        """What is wrong with ``log`` (seq, key) and with what each reader ``received``."""
        keys = [k for _, k in log]
        found = []
        if [s for s, _ in log] != list(range(1, len(log) + 1)):
            found.append("the log has gaps")
        if len(set(keys)) != len(keys):
            found.append("an event is stored twice")
        if lost := self.ok - set(keys):
            found.append(f"lost acknowledged writes: {sorted(lost)[:10]}")
        if aborted := self.failed & set(keys):
            found.append(f"rolled-back writes read: {sorted(aborted)[:10]}")
        if stray := set(keys) - self.ok - self.unknown:
            found.append(f"events nobody wrote: {sorted(stray)[:10]}")
        found += [f"{name} disagrees with the log" for name, got in received.items() if got != log]
        return found


async def publish_keys(conn: asyncpg.Connection, topic: str, keys: list[str]) -> None:
    """Publish one event ``{"k": key}`` per key from SQL, in the connection's transaction."""
    for k in keys:
        await conn.execute(
            "SELECT changefeed.publish($1, 'sql', $2::jsonb)", topic, json.dumps({"k": k})
        )


async def sequenced_log(url: str, topic: str, timeout: float) -> list[tuple[int, str]]:
    """A topic's log as (seq, data.k), once nothing of it waits in the inbox."""
    conn = await asyncpg.connect(url)
    try:

        async def sequenced() -> bool:
            pending = await conn.fetchval(
                "SELECT count(*) FROM changefeed.inbox WHERE topic = $1", topic
            )
            return bool(pending == 0)

        await wait_for(sequenced, timeout=timeout)
        rows = await conn.fetch(
            "SELECT seq, data::text FROM changefeed.events WHERE topic = $1 ORDER BY seq", topic
        )
        return [(r["seq"], json.loads(r["data"])["k"]) for r in rows]
    finally:
        await conn.close()


@dataclass
class Reader:
    """A subscriber that reads a random number of events, disconnects and resumes with
    ``Last-Event-ID`` (the id as the stream sent it), as a browser's EventSource does,
    until ``done`` is set and it has reached ``final[0]``. ``key`` turns an event into
    (position, what identifies it); a reset frame fails the test."""

    name: str
    key: Callable[[ServerSentEvent], tuple[int, str]]
    received: list[tuple[int, str]] = field(default_factory=list)
    sessions: int = 0
    last_id: str | None = None

    async def run(
        self,
        client: httpx.AsyncClient,
        topic: str,
        done: asyncio.Event,
        final: list[int],
        rng: random.Random,
        most: int = 40,
    ) -> list[tuple[int, str]]:
        while True:
            last = self.received[-1][0] if self.received else None
            if done.is_set() and last == final[0]:
                return self.received
            self.sessions += 1
            # First session: the whole topic; then resume with the browser's header.
            options = {"after": 0} if last is None else {"last_event_id": self.last_id}
            budget = rng.randint(1, most)
            async with subscribe(client, topic, **options) as stream:  # type: ignore[arg-type]
                while budget > 0:
                    try:
                        event = await stream.next(timeout=0.5)
                    except TimeoutError:
                        if done.is_set():
                            break
                        continue
                    assert event.event != "reset", event.data
                    self.received.append(self.key(event))
                    self.last_id = event.id
                    budget -= 1
