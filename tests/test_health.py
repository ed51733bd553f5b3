"""What operators and scrapers read: /healthz, /readyz, /metrics, and the content types of
everything the service serves."""

from __future__ import annotations

import httpx
import pytest

from tests.support import Service


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/metrics", "text/plain; version=1.0.0; charset=utf-8"),
        ("/", "text/html; charset=utf-8"),
        ("/client.js", "text/javascript; charset=utf-8"),
        ("/healthz", "application/json"),
        ("/readyz", "application/json"),
    ],
)
async def test_content_types_name_one_charset(service: Service, path: str, expected: str) -> None:
    async with httpx.AsyncClient(base_url=service.base_url) as http:
        response = await http.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == expected
