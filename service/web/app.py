"""The Litestar application: routes, error handling, and the replica's runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.plugins.problem_details import ProblemDetailsConfig, ProblemDetailsPlugin

from .. import __version__, logs
from ..core.runtime import Runtime
from ..settings import Settings
from . import demo, docs, health, problems
from .access import caller, runtime_of
from .consumers import ConsumerController
from .feeds import FeedController, list_topics


def create_app(
    settings: Settings,
    database_url: str,
    on_started: Callable[[Runtime], None] | None = None,
) -> Litestar:
    """The app for one replica serving ``database_url``."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        runtime = await Runtime.start(settings, database_url)
        app.state.runtime = runtime
        if on_started is not None:
            on_started(runtime)
        try:
            yield
        finally:
            await runtime.stop()

    return Litestar(
        route_handlers=[
            FeedController,
            list_topics,
            ConsumerController,
            demo.demo,
            demo.client_js,
            docs.asset,
            health.healthz,
            health.readyz,
            health.metrics,
        ],
        lifespan=[lifespan],
        dependencies={
            "runtime": Provide(runtime_of, sync_to_thread=False),
            "principal": Provide(caller),
        },
        before_request=_bind_request_context,
        exception_handlers=problems.handlers(),
        plugins=[ProblemDetailsPlugin(ProblemDetailsConfig(enable_for_all_http_exceptions=True))],
        request_max_body_size=settings.max_body_bytes,
        cors_config=_cors(settings),
        openapi_config=OpenAPIConfig(
            title="changefeed",
            version=__version__,
            description="An exactly-resumable change feed over PostgreSQL, served as SSE.",
            render_plugins=[docs.SwaggerPage()],
        ),
        logging_config=None,
    )


def _cors(settings: Settings) -> CORSConfig | None:
    origins = settings.cors_origin_list
    if not origins:
        return None
    return CORSConfig(
        allow_origins=origins,
        allow_methods=["GET", "POST", "PUT", "DELETE"],
        # An EventSource resuming adds Last-Event-ID.
        allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "X-Request-ID"],
        # The JS client reads a refusal's Retry-After.
        expose_headers=["Retry-After"],
        allow_credentials="*" not in origins,
    )


async def _bind_request_context(request: Request[Any, Any, Any]) -> None:
    logs.bind_request(request.scope)
