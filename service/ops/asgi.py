"""An ASGI application factory for running changefeed under another ASGI server
(``granian --interface asgi --factory changefeed.ops.asgi:app``); ``changefeed serve`` is
the usual way, with its graceful shutdown and embedded database."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from ..settings import Settings
from ..web.app import create_app
from ..web.fastpath import PublishFastPath
from ..web.hosts import AllowedHosts
from .server import preflight


def app() -> AllowedHosts:
    """The app for CHANGEFEED_DATABASE_URL, which must be migrated already."""
    settings = Settings(**{})
    if not settings.database_url:
        raise SystemExit("changefeed.ops.asgi: set CHANGEFEED_DATABASE_URL")
    # In a thread of its own: the server may call this factory inside its event loop.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(preflight, settings.database_url).result()
    return AllowedHosts(
        PublishFastPath(create_app(settings, settings.database_url)), settings.allowed_host_list
    )
