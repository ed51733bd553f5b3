"""An ASGI application factory for running changefeed under another ASGI server
(``granian --interface asgi --factory service.asgi:app``); ``changefeed serve`` is the
usual way, with its graceful shutdown and embedded database."""

from __future__ import annotations

from service.app import create_app
from service.fastpath import PublishFastPath
from service.hosts import AllowedHosts
from service.settings import Settings


def app() -> AllowedHosts:
    """The app for CHANGEFEED_DATABASE_URL (migrated already)."""
    settings = Settings(**{})
    if not settings.database_url:
        raise SystemExit("service.asgi: set CHANGEFEED_DATABASE_URL")
    return AllowedHosts(
        PublishFastPath(create_app(settings, settings.database_url)), settings.allowed_host_list
    )
