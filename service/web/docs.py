"""The API's documentation at ``/schema`` (and ``/schema/swagger``): Swagger UI from this
service's own files (``static/swagger``, swagger-ui-dist 5.35.0, vendored unchanged), so
that it renders offline and under a strict Content-Security-Policy (no CDN, no inline
script). Litestar's own Swagger plugin loads the UI from a CDN and starts it inline."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

from litestar import Request, Response, get
from litestar.exceptions import NotFoundException
from litestar.openapi.plugins import OpenAPIRenderPlugin

ASSETS = "/schema/assets"
_TYPES = {".js": "text/javascript", ".css": "text/css"}

_PAGE = f"""<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>changefeed API</title>
<link rel="stylesheet" href="{ASSETS}/swagger-ui.css">
<div id="swagger-ui"></div>
<script src="{ASSETS}/swagger-ui-bundle.js"></script>
<script src="{ASSETS}/start.js"></script>
</html>
""".encode()

# External, not inline: a page under `script-src 'self'` runs it.
_START = b"""window.ui = SwaggerUIBundle({
  url: "/schema/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
});
"""


class SwaggerPage(OpenAPIRenderPlugin):
    """Serves the page at ``/schema`` and ``/schema/swagger``."""

    def __init__(self) -> None:
        super().__init__(path=["/swagger"], favicon="", style="")

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return _PAGE


@functools.cache
def _asset(name: str) -> bytes:
    if name == "start.js":
        return _START
    if name not in ("swagger-ui-bundle.js", "swagger-ui.css"):
        raise NotFoundException()
    return resources.files(__package__).joinpath(f"static/swagger/{name}").read_bytes()


@get(f"{ASSETS}/{{name:str}}", include_in_schema=False)
async def asset(name: str) -> Response[bytes]:
    body = _asset(name)
    media_type = _TYPES[name[name.rfind(".") :]]
    # The files change only with the service's version.
    return Response(body, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})
