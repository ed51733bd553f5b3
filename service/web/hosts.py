"""Requests addressed to a host this service answers for, and no other (DNS rebinding)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from . import problems

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def host_name(header: bytes | str) -> str:
    """The name in a Host header, without its port: `[::1]:8000` is `::1`."""
    host = header.decode("latin-1") if isinstance(header, bytes) else header
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class AllowedHosts:
    """ASGI middleware in front of everything: a request whose Host is not one of
    ``hosts`` gets 421 at once (``*`` allows any)."""

    def __init__(self, app: App, hosts: list[str]) -> None:
        self.app = app
        self.any = "*" in hosts
        self.hosts = frozenset(hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.any or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"host"), b"")
        if host_name(header) in self.hosts:
            await self.app(scope, receive, send)
            return
        await problems.send(
            send,
            "misdirected-request",
            "this service does not answer for that host name: set CHANGEFEED_ALLOWED_HOSTS "
            "to the names clients use to reach it",
        )
