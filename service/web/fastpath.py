"""``POST /feeds/<topic>`` without the framework, when nothing about the request is unusual.

Measured with py-spy: Litestar's routing, dependency injection, signature parsing and
response assembly were over half of this process's CPU for a single-event publish. This
ASGI layer in front of the app answers the common case itself (a JSON publish that is
valid, authorised, within its limits, with a Content-Length and no CORS) using the same
functions as the Litestar handler. Anything else goes to the Litestar app, which stays the
one place that words refusals; a request handed over after its body was read gets the body
replayed. Nothing is stored before every check has passed, so a handed-over request is
never stored twice. Failures of the insert itself are answered here (503, 400, 500), with
the bodies the app would give: handing them over would insert again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Litestar

from .. import logs
from ..core import database, metrics
from ..core.admission import Limited, Unavailable
from ..core.auth import Forbidden, Principal, Unauthenticated
from ..core.runtime import Runtime
from ..core.topics import InvalidInput, check_topic
from . import problems
from .access import NotJSON, require_json

log = logs.get(__name__)

# Plain ASGI, typed loosely: Litestar's own types describe its app, not a layer before it.
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_PREFIX = "/feeds/"
_JSON = [(b"content-type", b"application/json")]


class _HandOver(Exception):
    """The request needs the full app (a refusal, or something this path does not do)."""


class PublishFastPath:
    """ASGI middleware in front of the Litestar app (see the module's docstring)."""

    def __init__(self, app: Litestar) -> None:
        self.litestar = app
        self.app: Callable[[Scope, Receive, Send], Awaitable[None]] = app  # type: ignore[assignment]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime: Runtime | None = getattr(self.litestar.state, "runtime", None)
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not scope["path"].startswith(_PREFIX)
            or runtime is None
        ):
            await self.app(scope, receive, send)
            return
        body: bytes | None = None
        try:
            headers = _headers(scope)
            topic, principal = _admit(runtime, scope, headers)
            body = await _read_body(receive, headers, runtime.settings.max_body_bytes)
            if body is None:
                return  # the client went away
            batch = runtime.check_publish(principal, body)
        except (_HandOver, InvalidInput, Unauthenticated, Forbidden, Unavailable, Limited):
            await self.app(scope, receive if body is None else _replay(body, receive), send)
            return
        logs.bind_request(scope)
        try:
            await runtime.store(topic, batch)
        except database.UNAVAILABLE as exc:
            # Not handed over: the events may have been stored before the connection broke.
            log.warning("database.unavailable", error=str(exc), path=scope["path"])
            await problems.send(
                send, "unavailable", problems.DATABASE_UNAVAILABLE, {b"retry-after": b"1"}
            )
            return
        except problems.REFUSED as exc:
            # PostgreSQL refused a value (nothing was stored). Answered here rather than
            # handed over: that would insert again and charge the subject's allowance twice.
            detail = problems.data_error_detail(exc)
            await problems.send(send, "invalid-input", detail)
            return
        except Exception:
            log.exception("request.failed", path=scope["path"])
            await problems.send(send, "internal", problems.INTERNAL)
            return
        metrics.fast_publishes.inc()
        answer = b'{"accepted":%d}' % len(batch)
        await send(
            {
                "type": "http.response.start",
                "status": 202,
                "headers": [*_JSON, (b"content-length", b"%d" % len(answer))],
            }
        )
        await send({"type": "http.response.body", "body": answer})


def _headers(scope: Scope) -> dict[bytes, bytes]:
    headers: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in headers:
            raise _HandOver  # repeated headers: leave their meaning to the framework
        headers[name] = value
    # A browser's cross-origin request needs the CORS middleware's headers on the answer
    # (and the Origin check); a body not declared as JSON gets the app's 415.
    if b"origin" in headers or b"content-length" not in headers:
        raise _HandOver
    try:
        require_json(headers.get(b"content-type", b"").decode("latin-1"))
    except NotJSON:
        raise _HandOver from None
    return headers


def _admit(runtime: Runtime, scope: Scope, headers: dict[bytes, bytes]) -> tuple[str, Principal]:
    """The topic and the principal, if this request may publish there now (the same
    admission as the app's); anything else raises, and the request is handed over."""
    topic = scope["path"][len(_PREFIX) :]
    if "/" in topic:
        raise _HandOver
    check_topic(topic)
    client = scope.get("client")
    address = client[0] if client else "unknown"
    # Only the bearer header here: cookie and query tokens take the full path.
    authorization = headers.get(b"authorization")
    principal = runtime.auth.authenticate(
        {"authorization": authorization.decode("latin-1")} if authorization else {},
        {},
        {},
        address,
    )
    runtime.admission.publish(principal, topic)
    return topic, principal


async def _read_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes | None:
    try:
        length = int(headers[b"content-length"])
    except ValueError:
        raise _HandOver from None
    if not 0 < length <= limit:
        raise _HandOver
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk: bytes = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > length:
            raise _HandOver
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, then: Receive) -> Receive:
    """A ``receive`` that gives the app the body already read, then the connection's own."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await then()

    return receive
