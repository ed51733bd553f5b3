"""The HTTP side of authentication: the ``principal`` every handler receives."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.datastructures import State

from service.auth import Principal
from service.runtime import Runtime


async def caller(request: Request[Any, Any, Any], state: State) -> Principal:
    """The request's principal; Unauthenticated (401) without a valid token when auth is
    on. Tokens are read here and nowhere logged: log lines carry the path, never the query."""
    runtime: Runtime = state.runtime
    address = request.client.host if request.client else "unknown"
    return runtime.auth.authenticate(
        request.headers, request.cookies, request.query_params, address
    )
