"""Running a replica: the database (given, or an embedded cluster), migrations, uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn

from .. import logs
from ..core import auth
from ..core.database import connect
from ..core.runtime import Runtime
from ..settings import Settings
from ..web import uvicorn_protocol
from ..web.app import create_app
from ..web.fastpath import PublishFastPath
from ..web.hosts import AllowedHosts
from . import embedded, migrate
from .uvicorn_server import DrainingServer

log = logs.get(__name__)


@contextlib.contextmanager
def database(settings: Settings, *, apply_migrations: bool) -> Iterator[str]:
    """The database URL to serve; an embedded cluster lives as long as the context."""
    if settings.database_url:
        if apply_migrations:
            limit = settings.max_event_bytes_if_set
            migrate.upgrade(settings.database_url, max_event_bytes=limit)
        yield settings.database_url
        return
    with embedded.serving(settings) as url:
        yield url


def preflight(url: str) -> None:
    """Fail fast, with a readable message, when the database is unreachable or unmigrated."""

    async def check() -> None:
        conn = await connect(url, "preflight")
        try:
            await migrate.require_head(conn)
        finally:
            await conn.close()

    asyncio.run(check())


def serve(settings: Settings, url: str) -> bool:
    """Serve until a shutdown signal; False if the app could not start."""
    server: DrainingServer | None = None

    def started(runtime: Runtime) -> None:
        assert server is not None
        server.loop = asyncio.get_running_loop()
        server.runtime = runtime

    app = AllowedHosts(
        PublishFastPath(create_app(settings, url, on_started=started)),
        settings.allowed_host_list,
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        http=uvicorn_protocol.bounded(
            settings.max_header_bytes,
            settings.header_timeout_seconds,
            settings.body_timeout_seconds,
        ),
        # Connections beyond this get 503 at once instead of using memory.
        limit_concurrency=settings.max_connections,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(max(1, settings.shutdown_seconds)),
    )
    server = DrainingServer(config)

    log.info("serving", url=f"http://{settings.host}:{settings.port}", auth=auth.describe(settings))
    if settings.auth != "jwt":
        log.warning(
            "auth.disabled",
            detail="CHANGEFEED_AUTH=none: anyone who can reach this service may read and "
            "publish every topic",
        )
    server.run()
    return bool(server.started)
