"""Liveness, readiness and metrics endpoints."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..core.database import UNAVAILABLE
from ..core.runtime import Runtime


@get("/healthz", tags=["operations"], summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", tags=["operations"], summary="Database reachable and listener connected")
async def readyz(runtime: Runtime) -> Response[dict[str, Any]]:
    checks: dict[str, Any] = {"listener": runtime.listener.connected}
    try:
        await runtime.db.fetchval("SELECT 1")
        checks["database"] = True
    except UNAVAILABLE:
        checks["database"] = False
    checks["draining"] = runtime.hub.closed
    ready = checks["database"] and checks["listener"] and not checks["draining"]
    checks["sequencer"] = runtime.sequencer.is_leader
    checks["status"] = "ready" if ready else "unavailable"
    return Response(checks, status_code=200 if ready else 503)


@get("/metrics", tags=["operations"], summary="Prometheus metrics", include_in_schema=False)
async def metrics() -> Response[bytes]:
    # Litestar adds the charset to text/* types itself: without this, it would say it twice.
    media_type = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")
    return Response(generate_latest(), media_type=media_type)
