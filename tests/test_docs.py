"""The API documentation renders from the service's own files: in real Chromium, offline
(every other origin refused) and under a strict Content-Security-Policy."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import Service, needs_chromium

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"
)


@needs_chromium
@pytest.mark.parametrize("path", ["/schema", "/schema/swagger"])
async def test_the_api_page_renders_offline_under_a_strict_csp(
    browser: Any, service: Service, path: str
) -> None:
    page = await browser.new_page()
    elsewhere: list[str] = []
    violations: list[str] = []
    page.on(
        "console", lambda m: violations.append(m.text) if "Content Security" in m.text else None
    )

    async def route(request_route: Any) -> None:
        url = request_route.request.url
        if not url.startswith(service.base_url):
            elsewhere.append(url)
            await request_route.abort()
            return
        response = await request_route.fetch()
        headers = {**response.headers, "content-security-policy": CSP}
        await request_route.fulfill(response=response, headers=headers)

    await page.route("**/*", route)
    await page.goto(service.base_url + path)
    await page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    paths = await page.eval_on_selector_all(
        ".opblock-summary-path", "nodes => nodes.map(n => n.textContent)"
    )
    assert "/feeds/{topic}" in [p.replace("\u200b", "") for p in paths]
    assert elsewhere == [] and violations == []
