"""HTTP handlers for ``/consumers``: durable, shared, at-least-once consumption."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.openapi import ResponseSpec
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from ..core import leases
from ..core.auth import Forbidden, Principal, covers
from ..core.runtime import Runtime
from ..core.topics import InvalidInput, Selector, check_topic, parse_seq
from .access import CHANGES

MAX_WAIT_SECONDS = 30


class ConsumerIn(msgspec.Struct, forbid_unknown_fields=True):
    """A consumer's definition: the topics (names or ``*`` patterns) it reads."""

    topics: list[str]
    # Seconds a worker holds a batch before its events are handed out again.
    visibility_timeout: float = 30.0
    # Where a new consumer begins: every stored event, or only events from now on.
    start: Literal["earliest", "latest"] = "earliest"


class AckIn(msgspec.Struct, forbid_unknown_fields=True):
    """Acknowledge a lease, up to a global position (all of it when omitted)."""

    lease: str
    position: int | None = None


def _decode(body: bytes, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"invalid body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None


async def _require(runtime: Runtime, principal: Principal, name: str) -> None:
    """A consumer is used by its owner, or by a subject its ``consume`` grant lets, as
    long as they may subscribe to everything it reads. To anyone else it does not exist:
    404, naming neither its topics nor its owner."""
    found = await leases.find(runtime.db, check_topic(name))
    if found is None or not principal.may_use_consumer(name, found.owner):
        raise leases.UnknownConsumer(name)
    principal.require("subscribe", found.selection)
    _unfiltered(principal, found.selection)


def _unfiltered(principal: Principal, selection: list[str]) -> None:
    """Consumers do not filter yet: a caller whose grants filter what it may read would
    read everything through one, so it may not use one."""
    if principal.granted_filter(selection) is not None:
        raise Forbidden(
            f"{principal.subject}'s grants filter these topics, and consumers do not take "
            "filtered grants yet: read them with a filtered stream or pages"
        )


class ConsumerController(Controller):
    path = "/consumers"
    tags = ["consumers"]

    @put(
        "/{name:str}",
        summary="Create or update a named consumer",
        description=(
            'Body: `{"topics": ["orders", "billing.*"], "visibility_timeout": 30, '
            '"start": "earliest"}`. 201 when created, 200 when updated (its cursors stay).'
        ),
        status_code=HTTP_200_OK,
    )
    async def define(
        self, name: str, request: Request[Any, Any, Any], runtime: Runtime, principal: Principal
    ) -> Response[dict[str, Any]]:
        check_topic(name)
        spec: ConsumerIn = _decode(await request.body(), ConsumerIn)
        if not 0.1 <= spec.visibility_timeout <= 43200:
            raise InvalidInput("visibility_timeout must be between 0.1 and 43200 seconds")
        selector = Selector(spec.topics)
        # An existing consumer must be the caller's to use, and its old selection granted
        # as well as the new one.
        existing = await leases.find(runtime.db, name)
        if existing is not None:
            if not principal.may_use_consumer(name, existing.owner):
                raise leases.NameTaken(name)
            principal.require("subscribe", existing.selection)
            _unfiltered(principal, existing.selection)
        principal.require("subscribe", selector.topics + selector.patterns)
        _unfiltered(principal, selector.topics + selector.patterns)
        created = await leases.define(
            runtime.db,
            name,
            selector,
            spec.visibility_timeout,
            spec.start,
            principal.owner,
            covers(principal.consume, name),
        )
        body = await leases.describe(runtime.db, name)
        return Response(body, status_code=HTTP_201_CREATED if created else HTTP_200_OK)

    @get("/", summary="All consumers with their lag")
    async def list_consumers(self, runtime: Runtime, principal: Principal) -> dict[str, Any]:
        # Only the consumers the caller could use.
        found = await leases.list_all(runtime.db)
        usable = [
            c
            for c in found
            if principal.may_use_consumer(c["name"], c["owner"])
            and principal.may("subscribe", c["topics"])
        ]
        return {"consumers": usable}

    @get("/{name:str}", summary="A consumer: its lag and per-topic cursors")
    async def describe(self, name: str, runtime: Runtime, principal: Principal) -> dict[str, Any]:
        await _require(runtime, principal, name)
        return await leases.describe(runtime.db, name)

    @delete(
        "/{name:str}", summary="Delete a consumer and its cursors", status_code=HTTP_204_NO_CONTENT
    )
    async def remove(self, name: str, runtime: Runtime, principal: Principal) -> None:
        await _require(runtime, principal, name)
        await leases.delete(runtime.db, name, principal.owner, covers(principal.consume, name))

    @get(
        "/{name:str}/events",
        # A lease hands events to the caller and hides them from the consumer's other
        # workers: a change, though a GET (see access.py).
        opt={CHANGES: True},
        summary="Lease a batch of events (long poll)",
        description=(
            "Up to `limit` events, leased to the caller until `expires_at`: acknowledge them "
            "with `POST /consumers/{name}/ack`, or they are handed out again (at least once). "
            "Workers share a consumer by topic: no two hold events of one topic at once, and "
            "each topic is delivered in order. Waits up to `wait` seconds for events."
        ),
        responses={200: ResponseSpec(data_container=dict[str, Any], description="A batch")},
    )
    async def poll(
        self,
        name: str,
        runtime: Runtime,
        principal: Principal,
        limit: Annotated[str, Parameter(query="limit", description="At most this many")] = "100",
        wait: Annotated[str, Parameter(query="wait", description="Seconds to wait")] = "0",
    ) -> Response[bytes]:
        check_topic(name)
        size = parse_seq(limit, "limit")
        if not 1 <= size <= runtime.settings.max_page_events:
            raise InvalidInput(f"limit must be between 1 and {runtime.settings.max_page_events}")
        seconds = parse_seq(wait, "wait")
        if seconds > MAX_WAIT_SECONDS:
            raise InvalidInput(f"wait must be at most {MAX_WAIT_SECONDS} seconds")
        await _require(runtime, principal, name)
        deadline = time.monotonic() + seconds
        while True:
            batch = await leases.lease(runtime.db, name, size)
            remaining = deadline - time.monotonic()
            if batch.events or remaining <= 0 or runtime.hub.closed:
                return Response(leases.encode(batch), media_type="application/json")
            # New events arrive with a notification; a lapsed lease of another worker does
            # not, hence the short ceiling.
            await runtime.hub.wait_for_hint(min(remaining, 1.0))

    @post("/{name:str}/ack", summary="Acknowledge a leased batch", status_code=HTTP_200_OK)
    async def ack(
        self, name: str, request: Request[Any, Any, Any], runtime: Runtime, principal: Principal
    ) -> dict[str, Any]:
        await _require(runtime, principal, name)
        spec: AckIn = _decode(await request.body(), AckIn)
        try:
            lease_id = uuid.UUID(spec.lease)
        except ValueError:
            raise InvalidInput(f"invalid lease {spec.lease[:50]!r}") from None
        if spec.position is not None and spec.position < 0:
            raise InvalidInput("position must be a whole number >= 0")
        cursors = await leases.ack(runtime.db, name, lease_id, spec.position)
        return {"consumer": name, "acked": cursors}
