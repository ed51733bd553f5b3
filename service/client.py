"""A Python client: follow a feed or a durable consumer, resuming where it left off.

    async with Client("http://127.0.0.1:8000") as client:
        async for event in client.feed("orders", checkpoint=FileCheckpoint("orders.pos")):
            handle(event)          # the checkpoint moves once this returns (at least once)

        async for event in client.consume("billing"):
            handle(event)          # acknowledged batch by batch, after handling

Both reconnect with exponential backoff (with jitter) after any failure and resume from
the last position handled, so a process that crashes handles at most the events since its
last checkpoint again. For exactly-once *effects*, keep the checkpoint in your own database
and write it in the same transaction as the effects (see ``TableCheckpoint``).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from httpx_sse import aconnect_sse

from . import logs
from .backoff import Backoff

log = logs.get(__name__)


@dataclass(frozen=True, slots=True)
class Event:
    """One event. ``id`` is the position to resume after: the seq for one topic, the
    global position for several; ``event_id`` is the id its publisher chose, if any."""

    id: int
    topic: str
    seq: int
    type: str
    data: Any
    event_id: str | None = None


class Checkpoint(Protocol):
    """Where a follower keeps the position it has handled."""

    async def load(self) -> int | None: ...

    async def save(self, position: int) -> None: ...


class MemoryCheckpoint:
    """Forgotten with the process: a restart starts from the live tail (or ``after``)."""

    def __init__(self) -> None:
        self.position: int | None = None

    async def load(self) -> int | None:
        return self.position

    async def save(self, position: int) -> None:
        self.position = position


class FileCheckpoint:
    """The position in a file, replaced atomically (write, fsync, rename)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    async def load(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except FileNotFoundError:
            return None

    async def save(self, position: int) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        with temporary.open("w") as handle:
            handle.write(f"{position}\n")
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(self.path)


class TableCheckpoint:
    """The position in a table of the consumer's own PostgreSQL database (asyncpg).

    The exactly-once-effects recipe: handle each event in a transaction of your database and
    call ``save_in(conn, event.id)`` in that same transaction. The effects and the position
    then commit together or not at all, so a crash can never apply an event twice. Create
    the table once with ``TableCheckpoint.DDL``.
    """

    DDL = (
        "CREATE TABLE IF NOT EXISTS changefeed_checkpoints "
        "(name text PRIMARY KEY, position bigint NOT NULL)"
    )

    def __init__(self, connection: Any, name: str) -> None:
        self.connection = connection
        self.name = name

    async def load(self) -> int | None:
        value: int | None = await self.connection.fetchval(
            "SELECT position FROM changefeed_checkpoints WHERE name = $1", self.name
        )
        return value

    async def save(self, position: int) -> None:
        await self.save_in(self.connection, position)

    async def save_in(self, connection: Any, position: int) -> None:
        """Record ``position`` through ``connection``, inside the caller's transaction."""
        await connection.execute(
            "INSERT INTO changefeed_checkpoints (name, position) VALUES ($1, $2) "
            "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            self.name,
            position,
        )


class ClientError(Exception):
    """The server refused a request for a reason retrying will not fix (a 4xx)."""


class IncompleteExport(Exception):
    """An export's response ended before its end: what was received is not all."""


class Client:
    """An HTTP client of one changefeed deployment."""

    def __init__(
        self, base_url: str, *, token: str | None = None, http: httpx.AsyncClient | None = None
    ) -> None:
        """``token``: a bearer token, sent with every request (when the service checks them)."""
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self._http = http or httpx.AsyncClient(
            base_url=base_url, timeout=httpx.Timeout(30), headers=headers
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
        after: int | None = None,
    ) -> AsyncIterator[Event]:
        """Follow a topic, a pattern (``orders.*``) or several topics, forever.

        Starts after the checkpoint's position, else after ``after`` (0: from the first
        event), else at the live tail. An event's position is saved when the loop body that
        received it is done (at the next iteration), so events are handled at least once.
        """
        store = checkpoint or MemoryCheckpoint()
        last = await store.load()
        if last is None:
            last = after
        single = topics if isinstance(topics, str) and "*" not in topics else None
        if single is not None:
            url, params = f"/feeds/{single}", {}
        else:
            names = [topics] if isinstance(topics, str) else list(topics)
            url, params = "/feeds", {"topic": names}
        backoff = Backoff(first=0.2, ceiling=15.0)
        while True:
            headers = {"Last-Event-ID": str(last)} if last is not None else {}
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
                        _raise_for(source.response)
                    backoff.reset()
                    async for sse in source.aiter_sse():
                        if not sse.data:
                            continue  # the retry frame, or a keep-alive httpx-sse reports
                        if sse.event == "reset":
                            # The stream does not continue where we asked: the server no
                            # longer holds the history we followed (a restore, a recreated
                            # topic) and replays from the start, or retention removed events
                            # we had not seen. It says where it continues; say so.
                            data = json.loads(sse.data)
                            last = int(data.get("after", 0))
                            await store.save(last)
                            yield Event(id=0, topic=single or "", seq=0, type="reset", data=data)
                            continue
                        event = _event(sse.id, sse.event, sse.data, single)
                        yield event
                        last = event.id
                        await store.save(last)
            except ClientError:
                raise
            except (httpx.HTTPError, httpx.StreamError, ValueError) as exc:
                log.info("client.feed_reconnecting", error=str(exc) or type(exc).__name__)
            await backoff.wait()

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
                        log.warning("client.lease_lost", consumer=consumer)
                    else:
                        _raise_for(ack)
                continue
            except ClientError:
                raise
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                log.info("client.consume_retrying", error=str(exc) or type(exc).__name__)
            await backoff.wait()


def _event(sse_id: str, sse_type: str, data: str, topic: str | None) -> Event:
    body = json.loads(data)
    if topic is not None:
        seq = int(sse_id.split(".", 1)[0])  # <seq>.<hash8>
        return Event(id=seq, topic=topic, seq=seq, type=sse_type, data=body)
    return Event(
        id=int(sse_id), topic=body["topic"], seq=body["seq"], type=sse_type, data=body["data"]
    )


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
