"""What a browser loads from every replica: the demo page at ``/`` (plain HTML and the
browser's own EventSource) and the JavaScript client at ``/client.js`` (an ES module a page
imports without a build step; its source is ``clients/js/client.js``, the npm package)."""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from typing import Any

from litestar import Request, Response, get

from ..core.runtime import Runtime


def _static(name: str) -> str:
    return resources.files(__package__).joinpath(f"static/{name}").read_text("utf-8")


@functools.cache
def _page(cookie: str) -> bytes:
    return _static("demo.html").replace("{{cookie}}", cookie).encode()


@functools.cache
def _client() -> tuple[bytes, str]:
    body = _static("client.js").encode()
    return body, f'"{hashlib.sha256(body).hexdigest()[:32]}"'


@get("/", include_in_schema=False)
async def demo(runtime: Runtime) -> Response[bytes]:
    return Response(
        _page(runtime.settings.auth_cookie),
        media_type="text/html",
        headers={"Cache-Control": "no-cache"},
    )


@get("/client.js", include_in_schema=False)
async def client_js(request: Request[Any, Any, Any]) -> Response[bytes]:
    # Revalidated on every load (no-cache, with an ETag), so that a page never runs a client
    # older than the replicas it talks to.
    body, etag = _client()
    headers = {"Cache-Control": "no-cache", "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(b"", status_code=304, headers=headers)
    return Response(body, media_type="text/javascript", headers=headers)
