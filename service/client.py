"""A Python client: follow a feed or a durable consumer, resuming where it left off.

    async with Client("http://127.0.0.1:8000") as client:
        async for event in client.feed("orders", checkpoint=FileCheckpoint("orders.pos")):
            handle(event)          # the checkpoint moves once this returns (at least once)

        async for event in client.consume("billing"):
            handle(event)          # acknowledged batch by batch, after handling

Both reconnect after any failure and resume from the last event handled, so a process that
crashes handles at most the events since its last checkpoint again. For exactly-once
*effects*, keep the checkpoint in your own database and write it in the same transaction
as the effects (see ``TableCheckpoint``).

A feed keeps the full id of the last event (``<seq>.<hash8>``), so that the server checks
on every reconnect that it still holds that event: after a database restore, or when
retention removed events before they were delivered, the server says so with a reset,
which the feed hands to ``on_reset`` or, without one, raises as ``StreamReset``; it never
skips or repeats silently. It reconnects after the server's ``retry:`` delay at most,
backing off (with jitter) only while connecting fails, and refreshes a token given as a
provider on every connect (a stream ends with ``event: closed`` when its token expires).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import httpx
from httpx_sse import aconnect_sse

from .backoff import Backoff

# The standard library's logging, not structlog: this module runs inside other people's
# programs, whose logging configuration decides where (and whether) these lines go. Left
# unconfigured, structlog would print them to the program's stdout.
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Event:
    """One event. ``id`` is the position to resume after: the seq for one topic, the
    global position for several; ``event_id`` is the id its publisher chose, if any;
    ``hash``: the first 8 hex digits of its chain hash, as its stream's id carried them."""

    id: int
    topic: str
    seq: int
    type: str
    data: Any
    event_id: str | None = None
    hash: str | None = None

    @property
    def last_event_id(self) -> str:
        """What to resume after this event with (``Last-Event-ID``, ``after``, a checkpoint):
        ``<id>.<hash>``, which the server verifies, or the bare position."""
        return f"{self.id}.{self.hash}" if self.hash else str(self.id)


class Checkpoint(Protocol):
    """Where a follower keeps the id of the last event it handled: ``Event.last_event_id``
    (a bare position from older versions still loads)."""

    async def load(self) -> int | str | None: ...

    async def save(self, position: str) -> None: ...


class MemoryCheckpoint:
    """Forgotten with the process: a restart starts from the live tail (or ``after``)."""

    def __init__(self) -> None:
        self.position: int | str | None = None

    async def load(self) -> int | str | None:
        return self.position

    async def save(self, position: int | str) -> None:
        self.position = position


class FileCheckpoint:
    """The last event id in a file, replaced atomically (write, fsync, rename)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    async def load(self) -> str | None:
        try:
            return self.path.read_text().strip() or None
        except FileNotFoundError:
            return None

    async def save(self, position: int | str) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        with temporary.open("w") as handle:
            handle.write(f"{position}\n")
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(self.path)


class TableCheckpoint:
    """The position in a table of the consumer's own PostgreSQL database (asyncpg).

    The exactly-once-effects recipe: handle each event in a transaction of your database and
    call ``save_in(conn, event.last_event_id)`` in that same transaction. The effects and
    the position then commit together or not at all, so a crash can never apply an event
    twice. Create the table with ``TableCheckpoint.DDL`` (again after upgrading: it adds
    the ``last_id`` column to a table created by an older version).
    """

    DDL = (
        "CREATE TABLE IF NOT EXISTS changefeed_checkpoints "
        "(name text PRIMARY KEY, position bigint NOT NULL, last_id text); "
        "ALTER TABLE changefeed_checkpoints ADD COLUMN IF NOT EXISTS last_id text"
    )

    def __init__(self, connection: Any, name: str) -> None:
        self.connection = connection
        self.name = name

    async def load(self) -> int | str | None:
        row = await self.connection.fetchrow(
            "SELECT position, last_id FROM changefeed_checkpoints WHERE name = $1", self.name
        )
        if row is None:
            return None
        last: int | str = row["last_id"] or row["position"]
        return last

    async def save(self, position: int | str) -> None:
        await self.save_in(self.connection, position)

    async def save_in(self, connection: Any, position: int | str) -> None:
        """Record ``position`` (an event's ``last_event_id``, or a bare position) through
        ``connection``, inside the caller's transaction."""
        last_id = str(position)
        await connection.execute(
            "INSERT INTO changefeed_checkpoints (name, position, last_id) VALUES ($1, $2, $3) "
            "ON CONFLICT (name) DO UPDATE SET position = excluded.position, "
            "last_id = excluded.last_id",
            self.name,
            int(last_id.split(".", 1)[0]),
            last_id,
        )


class ClientError(Exception):
    """The server refused a request for a reason retrying will not fix (a 4xx), or sent
    what cannot be handled."""


class StreamReset(Exception):
    """The stream does not continue where the feed asked (``frame["reason"]``: ``mismatch``
    or ``behind`` after a restore, ``retention`` when events were removed before delivery).
    The checkpoint already holds where it continues (``frame["after"]``): following the
    feed again goes on from there."""

    def __init__(self, frame: dict[str, Any]) -> None:
        super().__init__(frame.get("detail", "the stream was reset"))
        self.frame = frame


# A bearer token, or what returns one (called before every request, so that it may refresh).
Token = str | Callable[[], str | Awaitable[str]]


class _BearerAuth(httpx.Auth):
    """The token on every request; from a provider, asked again once after a 401 (the token
    may have expired in between)."""

    def __init__(self, token: Token) -> None:
        self._token = token

    async def _value(self) -> str:
        value = self._token() if callable(self._token) else self._token
        return await value if inspect.isawaitable(value) else value

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        request.headers["Authorization"] = f"Bearer {await self._value()}"
        response = yield request
        if response.status_code == 401 and callable(self._token):
            request.headers["Authorization"] = f"Bearer {await self._value()}"
            yield request

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, Any, None]:
        raise RuntimeError("changefeed.Client is asynchronous")


class IncompleteExport(Exception):
    """An export's response ended before its end: what was received is not all."""


class Client:
    """An HTTP client of one changefeed deployment."""

    def __init__(
        self, base_url: str, *, token: Token | None = None, http: httpx.AsyncClient | None = None
    ) -> None:
        """``token``: a bearer token sent with every request (when the service checks them),
        or a function (sync or async) returning one, called before every request and once
        more after a 401: streams end when their token expires, and reconnect with a fresh
        one."""
        auth = _BearerAuth(token) if token else None
        self._http = http or httpx.AsyncClient(
            base_url=base_url, timeout=httpx.Timeout(30), auth=auth
        )
        self._owned = http is None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owned:
            await self._http.aclose()

    async def publish(
        self, topic: str, data: Any, *, type: str = "message", id: str | None = None
    ) -> None:
        """Publish one event; with an ``id``, retrying is safe."""
        event: dict[str, Any] = {"type": type, "data": data}
        if id is not None:
            event["id"] = id
        response = await self._http.post(f"/feeds/{topic}", json=event)
        _raise_for(response)

    async def publish_many(self, topic: str, events: Sequence[dict[str, Any]]) -> int:
        """Publish a batch, stored atomically (all or none): each event a dict with
        ``data`` and optionally ``type`` and ``id``. Returns how many were accepted."""
        response = await self._http.post(f"/feeds/{topic}", json=list(events))
        _raise_for(response)
        accepted: int = response.json()["accepted"]
        return accepted

    async def topics(self) -> list[dict[str, Any]]:
        """The topics this caller may read: name, head (the last seq) and first_seq (the
        first seq still held)."""
        response = await self._http.get("/topics")
        _raise_for(response)
        found: list[dict[str, Any]] = response.json()["topics"]
        return found

    async def page(self, topic: str, *, after: int = 0, limit: int = 100) -> dict[str, Any]:
        """One page of a topic's history: ``events`` after ``after``, the topic's ``head``,
        and where the next page starts."""
        response = await self._http.get(
            f"/feeds/{topic}/events", params={"after": str(after), "limit": str(limit)}
        )
        _raise_for(response)
        found: dict[str, Any] = response.json()
        return found

    async def export(
        self,
        topic: str,
        *,
        after: int = 0,
        before: int | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> AsyncIterator[bytes]:
        """A topic's events in a range, as NDJSON chunks (one JSON object per line). An
        export cut short raises IncompleteExport: it is never silently short."""
        params: dict[str, str] = {"after": str(after)}
        for name, value in (("before", before), ("since", since), ("until", until)):
            if value is not None:
                params[name] = str(value)
        try:
            async with self._http.stream(
                "GET",
                f"/feeds/{topic}/events",
                params=params,
                headers={"Accept": "application/x-ndjson"},
                timeout=httpx.Timeout(30, read=300),
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _raise_for(response)
                async for chunk in response.aiter_bytes():
                    yield chunk
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            # The response ended without its final chunk.
            raise IncompleteExport(str(exc) or type(exc).__name__) from exc

    async def define_consumer(
        self,
        name: str,
        topics: Sequence[str],
        *,
        visibility_timeout: float = 30.0,
        start: str = "earliest",
    ) -> dict[str, Any]:
        """Create or update a durable consumer; its description."""
        body = {"topics": list(topics), "visibility_timeout": visibility_timeout, "start": start}
        response = await self._http.put(f"/consumers/{name}", json=body)
        _raise_for(response)
        described: dict[str, Any] = response.json()
        return described

    async def consumers(self) -> list[dict[str, Any]]:
        """The consumers this caller may use, with their lag."""
        response = await self._http.get("/consumers")
        _raise_for(response)
        found: list[dict[str, Any]] = response.json()["consumers"]
        return found

    async def consumer(self, name: str) -> dict[str, Any]:
        """A consumer's description: its lag and per-topic cursors."""
        response = await self._http.get(f"/consumers/{name}")
        _raise_for(response)
        described: dict[str, Any] = response.json()
        return described

    async def delete_consumer(self, name: str) -> None:
        response = await self._http.delete(f"/consumers/{name}")
        _raise_for(response)

    async def feed(
        self,
        topics: str | Sequence[str],
        *,
        checkpoint: Checkpoint | None = None,
        after: int | str | None = None,
        on_reset: Callable[[dict[str, Any]], object] | None = None,
    ) -> AsyncIterator[Event]:
        """Follow a topic, a pattern (``orders.*``) or several topics, forever.

        Starts after the checkpoint's event, else after ``after`` (0: from the first event;
        an ``Event.last_event_id`` to be verified), else at the live tail. An event is
        saved as handled when the loop body that received it is done (at the next
        iteration), so events are handled at least once. A reset (see ``StreamReset``) is
        passed to ``on_reset`` (sync or async) and the feed goes on; without ``on_reset``
        it is raised. Refusals retrying cannot fix (400, 401 with a fresh token, 403, 404,
        409) raise ``ClientError``; anything else is retried.
        """
        store = checkpoint or MemoryCheckpoint()
        saved = await store.load()
        last = str(saved) if saved is not None else None if after is None else str(after)
        single = topics if isinstance(topics, str) and "*" not in topics else None
        if single is not None:
            url, params = f"/feeds/{single}", {}
        else:
            names = [topics] if isinstance(topics, str) else list(topics)
            url, params = "/feeds", {"topic": names}
        # Waits between connections: short after a stream that delivered, growing while
        # connecting fails or streams end without events, up to the server's `retry:`
        # delay (so a replica that restarted is back in use within it), or as long as a
        # refusal's Retry-After says.
        backoff = Backoff(first=0.1, ceiling=3.0)
        while True:
            headers = {"Last-Event-ID": last} if last is not None else {}
            wait: float | None = None
            try:
                async with aconnect_sse(
                    self._http,
                    "GET",
                    url,
                    params=params,
                    headers=headers,
                    timeout=httpx.Timeout(30, read=90),
                ) as source:
                    if source.response.status_code >= 400:
                        await source.response.aread()
                        wait = _retry_after(source.response)
                        _raise_for(source.response)
                    async for sse in source.aiter_sse():
                        if sse.retry is not None:
                            backoff.ceiling = max(0.1, sse.retry / 1000)
                        if not sse.data:
                            # The opening frame (or a blank line): its id is where this
                            # stream starts, a resume point before any event.
                            if last is None and sse.id:
                                last = sse.id
                                await store.save(last)
                            continue
                        if sse.event == "reset":
                            frame = json.loads(sse.data)
                            last = str(frame["after"])
                            await store.save(last)
                            if on_reset is None:
                                raise StreamReset(frame)
                            handled = on_reset(frame)
                            if inspect.isawaitable(handled):
                                await handled
                            continue
                        if sse.event == "closed":
                            # The server ends the stream on purpose (its token expired):
                            # reconnect at once, with a fresh token.
                            backoff.reset()
                            break
                        event = _event(sse.id, sse.event, sse.data, single)
                        yield event
                        last = event.last_event_id
                        await store.save(last)
                        backoff.reset()
            except (ClientError, StreamReset):
                raise
            except (httpx.HTTPError, httpx.StreamError) as exc:
                log.info("feed reconnecting: %s", str(exc) or type(exc).__name__)
            await asyncio.sleep(wait if wait is not None else backoff.next())

    async def consume(
        self, consumer: str, *, batch: int = 100, wait: int = 20
    ) -> AsyncIterator[Event]:
        """Handle a durable consumer's events; share the work by running several.

        Each batch is acknowledged once every event of it has been handled (when the next
        one is asked for); a worker that dies leaves its batch to be handed out again after
        the consumer's visibility timeout.
        """
        backoff = Backoff(first=0.2, ceiling=15.0)
        while True:
            try:
                response = await self._http.get(
                    f"/consumers/{consumer}/events",
                    params={"limit": str(batch), "wait": str(wait)},
                    timeout=httpx.Timeout(30, read=wait + 30),
                )
                _raise_for(response)
                body = response.json()
                backoff.reset()
                for item in body["events"]:
                    yield Event(
                        id=item["position"],
                        topic=item["topic"],
                        seq=item["seq"],
                        type=item["type"],
                        data=item["data"],
                        event_id=item["id"],
                    )
                if body["lease"] is not None:
                    ack = await self._http.post(
                        f"/consumers/{consumer}/ack", json={"lease": body["lease"]}
                    )
                    if ack.status_code == 409:
                        # Handled too slowly: the batch went to another worker meanwhile.
                        log.warning("consumer %s: lease lost (handled too slowly)", consumer)
                    else:
                        _raise_for(ack)
                continue
            except ClientError:
                raise
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                log.info("consume retrying: %s", str(exc) or type(exc).__name__)
            await backoff.wait()


def _event(sse_id: str, sse_type: str, data: str, topic: str | None) -> Event:
    position, _, hash8 = sse_id.partition(".")
    try:
        body = _decode(data)
        if topic is not None:
            seq = int(position)
            return Event(id=seq, topic=topic, seq=seq, type=sse_type, data=body, hash=hash8 or None)
        return Event(
            id=int(position),
            topic=body["topic"],
            seq=body["seq"],
            type=sse_type,
            data=body["data"],
            hash=hash8 or None,
        )
    except (ValueError, KeyError, TypeError) as exc:
        # Retrying would receive it again: say so rather than reconnect forever.
        raise ClientError(f"event {sse_id!r} cannot be read: {exc}") from exc


def _decode(data: str) -> Any:
    """JSON as PostgreSQL stores it, every number exactly: integers Python would refuse
    (over 4300 digits) and floats it would round to infinity become Decimals."""
    return json.loads(data, parse_int=_integer, parse_float=_float)


def _integer(text: str) -> int | Decimal:
    try:
        return int(text)
    except ValueError:
        return Decimal(text)


def _float(text: str) -> float | Decimal:
    value = float(text)
    return value if math.isfinite(value) else Decimal(text)


def _retry_after(response: httpx.Response) -> float | None:
    """A 429's or 503's ``Retry-After`` in seconds (bounded), if it has one."""
    value = response.headers.get("retry-after", "")
    if response.status_code in (429, 503) and value.isdigit():
        return min(float(value), 300.0)
    return None


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise ClientError(f"{response.status_code}: {detail}")
    response.raise_for_status()
