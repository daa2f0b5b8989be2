"""DNS-rebinding protection (contract 5.6): Host and Origin allow-lists, as pure ASGI.

A request with more than one Host (contract 11) is refused first, whatever the
allow-list says: RFC 9112 (3.2) requires a 400, and a proxy in front that reads
the first Host while the gateway reads the last could be steered past the list.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from agentgw.errors import Forbidden, InvalidRequest

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostname(netloc: str) -> str:
    """`host`, `host:port`, `[v6]:port` -> the bare host name, lower-cased."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[1 : netloc.find("]")] if "]" in netloc else netloc
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


class OriginGuard:
    """Refuses a request whose Host is not allowed or whose Origin is present and not allowed."""

    def __init__(self, app: ASGIApp, *, listen_host: str, allowed_hosts: list[str], allowed_origins: list[str]) -> None:
        self.app = app
        self.loopback_only = is_loopback(listen_host)
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        self.allowed_origins = frozenset(o.lower().rstrip("/") for o in allowed_origins)
        # Clients send the same few Host values again and again: decide each once.
        self._host_decisions: dict[str, bool] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = origin = None
        hosts = 0
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
                hosts += 1
            elif name == b"origin":
                origin = value.decode("latin-1")
        # A comma is two Host values folded into one line, as some proxies merge them. The
        # connection ends with the answer: what follows a request this ambiguous is not trusted.
        if hosts > 1 or (host is not None and "," in host):
            refusal = InvalidRequest("Bad Request: more than one Host", headers={"connection": "close"})
            await refusal.refuse(scope, receive, send)
            return
        if not self._host_allowed(host):
            await Forbidden("Forbidden: Host not allowed").refuse(scope, receive, send)
            return
        if origin is not None and not self._origin_allowed(origin, host or "", scope["type"] == "websocket"):
            await Forbidden("Forbidden: Origin not allowed").refuse(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _host_allowed(self, host: str | None) -> bool:
        if host is None:
            return not self.allowed_hosts and not self.loopback_only
        decision = self._host_decisions.get(host)
        if decision is None:
            decision = self._decide_host(host)
            if len(self._host_decisions) < 1024:
                self._host_decisions[host] = decision
        return decision

    def _decide_host(self, host: str) -> bool:
        if self.allowed_hosts:
            return (
                "*" in self.allowed_hosts or host.lower() in self.allowed_hosts or _hostname(host) in self.allowed_hosts
            )
        if self.loopback_only:
            return is_loopback(_hostname(host))
        return True

    def _origin_allowed(self, origin: str, host: str, websocket: bool) -> bool:
        origin = origin.lower().rstrip("/")
        if self.allowed_origins:
            return "*" in self.allowed_origins or origin in self.allowed_origins
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False
        if parts.netloc == host.lower():
            return True
        # Browsers do not preflight WebSockets: another local page may open one only if allowed by name.
        return not websocket and self.loopback_only and is_loopback(_hostname(parts.netloc))
