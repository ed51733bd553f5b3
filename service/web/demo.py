"""The demo page at ``/``: publish to a topic and watch it live, in plain HTML and
JavaScript with the browser's own EventSource (no build step)."""

from __future__ import annotations

import functools
from importlib import resources

from litestar import Response, get

from ..core.runtime import Runtime


@functools.cache
def _page(cookie: str) -> bytes:
    html = resources.files(__package__).joinpath("static/demo.html").read_text("utf-8")
    return html.replace("{{cookie}}", cookie).encode()


@get("/", include_in_schema=False)
async def demo(runtime: Runtime) -> Response[bytes]:
    return Response(
        _page(runtime.settings.auth_cookie),
        media_type="text/html; charset=utf-8",
        headers={"Cache-Control": "no-cache"},
    )
