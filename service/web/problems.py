"""Errors as RFC 9457 problem details (``application/problem+json``), never a bare 500.

One table of problem types, and one way to write each: as a Litestar response for errors
raised in handlers (``handlers()``, which maps each domain error once), or as bytes for the
layers below Litestar that answer by themselves (the publish fast path, the host check,
uvicorn's protocol).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import asyncpg
from litestar import Request, Response
from litestar.plugins.problem_details import ProblemDetailsException
from litestar.types import ExceptionHandlersMap

from .. import logs
from ..core.admission import Limited, Unavailable
from ..core.auth import Forbidden, Unauthenticated
from ..core.database import UNAVAILABLE
from ..core.events import AfterHead, Trimmed
from ..core.leases import LeaseLost, NameTaken, UnknownConsumer
from ..core.topics import InvalidInput
from .access import NotJSON

log = logs.get(__name__)


@dataclass(frozen=True)
class Kind:
    status: int
    title: str


# Each problem's `type` is `urn:changefeed:problem:<kind>`: stable, for clients to act on.
KINDS = {
    "invalid-input": Kind(400, "Invalid input"),
    "unauthenticated": Kind(401, "Authentication required"),
    "forbidden": Kind(403, "Not granted"),
    "unknown-consumer": Kind(404, "No such consumer"),
    "request-timeout": Kind(408, "Request timeout"),
    "after-head": Kind(409, "Starting point beyond the topic's head"),
    "lease-lost": Kind(409, "Lease not held"),
    "name-taken": Kind(409, "Consumer name in use"),
    "trimmed": Kind(410, "Events removed by retention"),
    "unsupported-media-type": Kind(415, "Body must be JSON"),
    "misdirected-request": Kind(421, "Not this service's host"),
    "rate-limited": Kind(429, "Over a per-subject limit"),
    "headers-too-large": Kind(431, "Request header fields too large"),
    "internal": Kind(500, "Internal error"),
    "unavailable": Kind(503, "Service unavailable"),
}

DATABASE_UNAVAILABLE = "the database is unreachable; retry shortly"
INTERNAL = "see the service log"


def problem(
    kind: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> ProblemDetailsException:
    """A problem of a kind in KINDS, for Litestar to answer."""
    return ProblemDetailsException(
        status_code=KINDS[kind].status,
        type_=f"urn:changefeed:problem:{kind}",
        title=KINDS[kind].title,
        detail=detail,
        headers=headers,
        extra=extra or None,
    )


def render(kind: str, detail: str) -> bytes:
    """A problem's body, for the layers below Litestar."""
    return json.dumps(
        {
            "type": f"urn:changefeed:problem:{kind}",
            "title": KINDS[kind].title,
            "status": KINDS[kind].status,
            "detail": detail,
        }
    ).encode()


async def send(
    send: Any, kind: str, detail: str, headers: dict[bytes, bytes] | None = None
) -> None:
    """Answer a problem through ASGI ``send``, below Litestar."""
    body = render(kind, detail)
    await send(
        {
            "type": "http.response.start",
            "status": KINDS[kind].status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", b"%d" % len(body)),
                *(headers or {}).items(),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def raw_response(kind: str, detail: str) -> bytes:
    """A whole HTTP/1.1 response closing the connection, for uvicorn's protocol."""
    status = KINDS[kind].status
    body = render(kind, detail)
    return (
        b"HTTP/1.1 %d %s\r\n"
        b"content-type: application/problem+json\r\n"
        b"connection: close\r\n"
        b"content-length: %d\r\n\r\n%s"
        % (status, HTTPStatus(status).phrase.encode(), len(body), body)
    )


# Values PostgreSQL refused: JSON it cannot store (a \u0000 in a string), and event data
# against the inbox's rule (too deep, a number too large, too large as stored).
REFUSED = (asyncpg.DataError, asyncpg.ProgramLimitExceededError)


def data_error_detail(exc: asyncpg.PostgresError) -> str:
    """What to tell a client whose value PostgreSQL refused (one of REFUSED): a 400
    invalid-input with PostgreSQL's message and hint."""
    message = str(exc.args[0]) if exc.args else str(exc)
    hint = getattr(exc, "hint", None)
    return f"{message}. {hint}" if hint else message


def _described(exc: Exception) -> ProblemDetailsException:
    """The problem a domain error is, mapped here once."""
    match exc:
        case InvalidInput():
            return problem("invalid-input", str(exc))
        case asyncpg.DataError() | asyncpg.ProgramLimitExceededError():
            return problem("invalid-input", data_error_detail(exc))
        case Unauthenticated():
            return problem(
                "unauthenticated",
                str(exc),
                headers={"WWW-Authenticate": 'Bearer realm="changefeed"'},
            )
        case Forbidden():
            return problem("forbidden", str(exc))
        case NotJSON():
            return problem("unsupported-media-type", str(exc))
        case UnknownConsumer():
            return problem("unknown-consumer", f"no consumer is named {exc.args[0]!r}")
        case AfterHead():
            return problem(
                "after-head",
                f"seq {exc.after} is beyond the topic's head ({exc.head}): no such event was "
                "ever sent",
                head=exc.head,
            )
        case LeaseLost():
            return problem("lease-lost", str(exc))
        case NameTaken():
            return problem(
                "name-taken",
                f"a consumer named {exc.args[0]!r} belongs to another subject: choose another name",
            )
        case Trimmed():
            return problem(
                "trimmed",
                f"retention removed the events after seq {exc.after} up to seq "
                f"{exc.first_seq - 1}; the first seq still held is {exc.first_seq}",
                first_seq=exc.first_seq,
            )
        case Limited():
            return problem("rate-limited", str(exc), headers={"Retry-After": str(exc.retry_after)})
        case Unavailable():
            return problem("unavailable", str(exc), headers={"Retry-After": str(exc.retry_after)})
    raise TypeError(f"no problem for {type(exc).__name__}")


DOMAIN_ERRORS: tuple[type[Exception], ...] = (
    InvalidInput,
    *REFUSED,
    Unauthenticated,
    Forbidden,
    NotJSON,
    UnknownConsumer,
    AfterHead,
    LeaseLost,
    NameTaken,
    Trimmed,
    Limited,
    Unavailable,
)


def _domain(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return _described(exc).to_response(request)


def _unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.warning("database.unavailable", error=str(exc), path=request.url.path)
    return problem("unavailable", DATABASE_UNAVAILABLE, headers={"Retry-After": "1"}).to_response(
        request
    )


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("request.failed", path=request.url.path)
    return problem("internal", INTERNAL).to_response(request)


def handlers() -> ExceptionHandlersMap:
    """Exception handlers for the app (HTTP errors are mapped by ProblemDetailsPlugin)."""
    mapping: ExceptionHandlersMap = dict.fromkeys(DOMAIN_ERRORS, _domain)
    for exc_type in UNAVAILABLE:
        mapping[exc_type] = _unavailable
    mapping[Exception] = _internal
    return mapping
