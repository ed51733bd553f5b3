"""The HTTP side of authentication: the ``principal`` every handler receives, and the
checks that keep other web sites from acting with a browser's credentials.

The token cookie exists for ``EventSource``, which can send nothing else, and which only
reads. A browser attaches cookies to requests that other sites make too, so the cookie
(and ``?access_token=``, which lands in logs and histories) authenticates reads only;
whatever changes something (publishing, consumers, acknowledgements, and leasing a
consumer's batch, a GET that hands events to the caller) must carry its token in the
``Authorization`` header, which no other site can make a browser send. Two more rules
hold with or without authentication (a development server on 127.0.0.1 is reachable from
any page the developer opens):

- A request with a body must say ``Content-Type: application/json``: a page on another
  site can send a form or ``text/plain`` without asking, but not JSON, for which the
  browser first asks this service (CORS) and is refused unless the site is allowed.
- A request that changes something must come from this service's own origin or one of
  ``CHANGEFEED_CORS_ORIGINS`` when a browser says where it comes from: its ``Origin``, or
  for requests without one (an image, a link) ``Sec-Fetch-Site``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from litestar import Request
from litestar.datastructures import State

from ..core.auth import Forbidden, Principal
from ..core.runtime import Runtime

READS = frozenset({"GET", "HEAD", "OPTIONS"})
# A route that changes something though its method reads (a consumer's lease) says so with
# `opt={CHANGES: True}`.
CHANGES = "changes"
# Sec-Fetch-Site values of requests a browser made on its own page or on its user's word.
_OWN = frozenset({"same-origin", "none"})


class NotJSON(Exception):
    """A request body that is not declared as JSON (415)."""


def runtime_of(state: State) -> Runtime:
    """The replica's runtime, for handlers (injected as ``runtime``)."""
    runtime: Runtime = state.runtime
    return runtime


async def caller(request: Request[Any, Any, Any], runtime: Runtime) -> Principal:
    """The request's principal; Unauthenticated (401) without a valid token when auth is
    on. Tokens are read here and nowhere logged: log lines carry the path, never the query."""
    address = request.client.host if request.client else "unknown"
    headers = request.headers
    reads = request.method in READS and not request.route_handler.opt.get(CHANGES)
    if not reads:
        check_origin(
            headers.get("origin"), headers.get("sec-fetch-site"), headers.get("host"), runtime
        )
        if _has_body(headers):
            require_json(headers.get("content-type"))
    return runtime.auth.authenticate(
        headers,
        request.cookies if reads else {},
        request.query_params if reads else {},
        address,
    )


def check_origin(
    origin: str | None, fetch_site: str | None, host: str | None, runtime: Runtime
) -> None:
    """Forbidden unless the request comes from no browser page (no Origin, and no
    Sec-Fetch-Site naming another site), from this service's own origin (its Host), or from
    an origin CHANGEFEED_CORS_ORIGINS allows."""
    allowed = runtime.settings.cors_origin_list
    if origin is None:
        if fetch_site is None or fetch_site in _OWN or "*" in allowed:
            return
        raise Forbidden(
            "a request from another site's page may not change anything here (Sec-Fetch-Site: "
            f"{fetch_site[:20]})"
        )
    if "*" in allowed or origin in allowed:
        return
    if host and origin != "null" and urlsplit(origin).netloc.lower() == host.lower():
        return
    raise Forbidden(
        f"a request from {origin[:100]} may not change anything here: only this service's "
        "own pages and the origins in CHANGEFEED_CORS_ORIGINS may"
    )


def require_json(content_type: str | None) -> None:
    """NotJSON unless ``application/json`` (or a ``+json`` type), parameters allowed."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    ):
        return
    raise NotJSON(
        f"send the body as Content-Type: application/json, not {media or 'without a type'} "
        "(with curl: --json, or -H 'Content-Type: application/json')"
    )


def _has_body(headers: Any) -> bool:
    length = headers.get("content-length")
    return bool(headers.get("transfer-encoding")) or (length is not None and length != "0")
