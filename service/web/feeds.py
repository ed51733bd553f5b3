"""HTTP handlers for ``/feeds``: publish, subscribe (SSE) and replay."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.openapi import ResponseSpec
from litestar.params import Parameter
from litestar.response import Stream
from litestar.status_codes import HTTP_202_ACCEPTED

from ..core import events, export, filters, replay, stream
from ..core.auth import Principal
from ..core.runtime import Runtime
from ..core.topics import InvalidInput, Selector, check_topic, parse_resume, parse_seq
from .litestar_response import event_stream
from .uvicorn_direct import DIRECT_WRITE

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    # nginx: do not buffer this response, whatever proxy_buffering says.
    "X-Accel-Buffering": "no",
}


_EVENT_STREAM = ResponseSpec(
    data_container=str, media_type="text/event-stream", description="The event stream"
)
_DISPATCH = Parameter(
    query="dispatch",
    description="`message`: no `event:` lines, so that an EventSource's `onmessage` gets every "
    'event; each frame\'s data is then `{"topic", "seq", "type", "data"}`',
)


_WHERE = Parameter(
    query="where",
    description="A JSON object: only events whose data contains it (PostgreSQL's `data @> where`),"
    ' such as `{"tenant": "acme"}` or, for a captured table, `{"new": {"tenant_id": 42}}`',
)


def _message(dispatch: str | None) -> bool:
    """Whether ``?dispatch=`` asks for ``message`` frames."""
    if dispatch is None or dispatch == "typed":
        return False
    if dispatch == "message":
        return True
    raise InvalidInput(
        f"invalid dispatch {dispatch[:50]!r}: message (every event a message event, its type "
        "in the data) or typed (the default: each event dispatched by its type)"
    )


class FeedController(Controller):
    path = "/feeds"
    tags = ["feeds"]

    @post(
        "/{topic:str}",
        status_code=HTTP_202_ACCEPTED,
        summary="Publish one event or a batch",
        description=(
            'Body: one event `{"type", "data", "id"}` or a JSON array of them, stored '
            "atomically. `type` defaults to `message`; `data` is any JSON value; `id` is an "
            "optional client-chosen id, unique per topic: an event whose id is already stored "
            "is not stored again. A 202 means the events are durable."
        ),
        responses={
            202: ResponseSpec(data_container=dict[str, int], description="Events are durable"),
        },
    )
    async def publish_events(
        self, topic: str, request: Request[Any, Any, Any], runtime: Runtime, principal: Principal
    ) -> Response[dict[str, int]]:
        runtime.admission.publish(principal, check_topic(topic))
        batch = runtime.check_publish(principal, await request.body())
        await runtime.store(topic, batch)
        return Response({"accepted": len(batch)}, status_code=HTTP_202_ACCEPTED)

    @get(
        "/{topic:str}",
        summary="Subscribe (Server-Sent Events)",
        description=(
            "A `text/event-stream`. The first frame carries `retry:` and the `id:` of the "
            "position the stream starts after (`0`: before the first event). Each event is a "
            "frame with `id: <seq>.<hash8>`, `event: <type>`, `data: <JSON>` (with "
            '`dispatch=message`: no `event:`, data `{"topic", "seq", "type", "data"}`). '
            "Starts after the `Last-Event-ID` header if present, else after `?after=<seq>` "
            "(or `<seq>.<hash8>`, checked: a mismatch starts with `event: reset`), else at the "
            "live tail. `after=0` replays the whole topic. A `*` in the name makes it a "
            "pattern over topics (`orders.*`): see `GET /feeds`. With `where`, only the events "
            "whose data contains it; ids stay the topic's seqs, and an id-only frame now and "
            "then moves a sparse stream's resume point past the events it left out."
        ),
        responses={200: _EVENT_STREAM},
    )
    async def subscribe(
        self,
        topic: str,
        request: Request[Any, Any, Any],
        runtime: Runtime,
        principal: Principal,
        last_event_id: Annotated[str | None, Parameter(header="Last-Event-ID")] = None,
        after: Annotated[
            str | None, Parameter(query="after", description="Start after this seq")
        ] = None,
        dispatch: Annotated[str | None, _DISPATCH] = None,
        where: Annotated[str | None, _WHERE] = None,
    ) -> Stream:
        source: stream.Source
        message = _message(dispatch)
        principal.require("subscribe", topic)
        condition = filters.combine(filters.parse_where(where), principal.granted_filter(topic))
        if "*" in topic:
            source = stream.SelectionSource(Selector([topic]), message=message, where=condition)
        else:
            source = stream.TopicSource(check_topic(topic), message=message, where=condition)
        return await _open(runtime, principal, source, last_event_id, after, request.scope)

    @get(
        "/",
        summary="Subscribe to several topics (Server-Sent Events)",
        description=(
            "Events of several topics (`?topic=a&topic=b`, patterns such as `orders.*` allowed) "
            "in one order: the global position, which is the frames' `id` (`<position>.<hash8>`)."
            ' Each frame\'s data is `{"topic", "seq", "type", "data"}`. Resuming works as for '
            "one topic, with positions, verified by their hash."
        ),
        responses={200: _EVENT_STREAM},
    )
    async def subscribe_many(
        self,
        request: Request[Any, Any, Any],
        runtime: Runtime,
        principal: Principal,
        topic: Annotated[
            list[str] | None, Parameter(query="topic", description="A topic or pattern; repeat")
        ] = None,
        last_event_id: Annotated[str | None, Parameter(header="Last-Event-ID")] = None,
        after: Annotated[
            str | None, Parameter(query="after", description="Start after this position")
        ] = None,
        dispatch: Annotated[str | None, _DISPATCH] = None,
        where: Annotated[str | None, _WHERE] = None,
    ) -> Stream:
        selector = Selector(topic or [])
        message = _message(dispatch)
        # Each topic and pattern must be granted (a pattern: all the topics it can match).
        named = selector.topics + selector.patterns
        principal.require("subscribe", named)
        condition = filters.combine(filters.parse_where(where), principal.granted_filter(named))
        source = stream.SelectionSource(selector, message=message, where=condition)
        return await _open(runtime, principal, source, last_event_id, after, request.scope)

    @get(
        "/{topic:str}/events",
        summary="Replay a page of stored events (JSON), or export a range (NDJSON)",
        description=(
            "The events with `after < seq < before` and `since <= time < until` (ISO 8601; "
            "each bound optional), and whose data contains `where` if given: as JSON, a page "
            "of `limit` of them and the URL of the next page (with a filter, it starts after "
            "what this page scanned, which may hold no event); with `Accept: "
            "application/x-ndjson`, all of them, streamed one JSON object per line, up to the "
            "head when the export started."
        ),
        responses={200: ResponseSpec(data_container=replay.ReplayPageDoc, description="A page")},
    )
    async def replay_events(
        self,
        topic: str,
        request: Request[Any, Any, Any],
        runtime: Runtime,
        principal: Principal,
        after: Annotated[str, Parameter(query="after", description="Events after this seq")] = "0",
        limit: Annotated[str | None, Parameter(query="limit", description="Page size")] = None,
        before: Annotated[
            str | None, Parameter(query="before", description="Events before this seq")
        ] = None,
        since: Annotated[
            str | None, Parameter(query="since", description="Events from this time on")
        ] = None,
        until: Annotated[
            str | None, Parameter(query="until", description="Events before this time")
        ] = None,
        where: Annotated[str | None, _WHERE] = None,
    ) -> Response[bytes] | Stream:
        check_topic(topic)
        principal.require("subscribe", topic)
        span = replay.Range(
            after=parse_seq(after, "after"),
            before=parse_seq(before, "before") if before is not None else None,
            since=replay.parse_time(since, "since"),
            until=replay.parse_time(until, "until"),
            where=filters.combine(filters.parse_where(where), principal.granted_filter(topic)),
        )
        if "application/x-ndjson" in request.headers.get("accept", ""):
            lines = await export.lines(runtime.db, topic, span, runtime.settings.max_page_events)
            return Stream(lines, media_type="application/x-ndjson")
        maximum = runtime.settings.max_page_events
        size = parse_seq(limit, "limit") if limit is not None else min(100, maximum)
        if not 1 <= size <= maximum:
            raise InvalidInput(f"limit must be between 1 and {maximum}")
        body = await replay.read_page(runtime.db, topic, span, size)
        return Response(body, media_type="application/json")


async def _open(
    runtime: Runtime,
    principal: Principal,
    source: stream.Source,
    last_event_id: str | None,
    after: str | None,
    scope: Any,
) -> Stream:
    runtime.admission.stream(principal)
    # The header wins: a browser's EventSource reconnects to the same URL and adds it.
    expect_hash: str | None = None
    if last_event_id is not None and last_event_id.strip():
        start, expect_hash = parse_resume(last_event_id, "Last-Event-ID")
    elif after is not None:
        start, expect_hash = parse_resume(after, "after")
    else:
        start = None
    direct = scope.get("extensions", {}).get(DIRECT_WRITE)
    frames = await stream.open_stream(
        runtime.hub,
        runtime.db,
        source,
        start,
        page_size=runtime.settings.max_page_events,
        retry_milliseconds=runtime.settings.retry_milliseconds,
        expect_hash=expect_hash,
        subject=principal.subject if principal.limited else "",
        expires_at=principal.expires_at,
        direct=direct,
    )
    return event_stream(frames, SSE_HEADERS, ends_on_disconnect=direct is not None)


@get(
    "/topics",
    tags=["feeds"],
    summary="Topics with events",
    description="Each topic the caller may subscribe to, with its head and low-water mark "
    "(`first_seq`), by name (at most 1000).",
)
async def list_topics(runtime: Runtime, principal: Principal) -> dict[str, Any]:
    rows = await events.topics(runtime.db, 1000)
    return {
        "topics": [
            {"topic": r["topic"], "head": r["head"], "first_seq": r["first_seq"]}
            for r in rows
            if principal.may("subscribe", [r["topic"]])
        ]
    }
