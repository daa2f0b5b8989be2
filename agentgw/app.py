"""create_app(settings): routes, middleware in flow order, lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from agentgw.config import Settings, split_host_port
from agentgw.errors import GatewayError, NotFound
from agentgw.inbound.mcp_http import McpHttpEndpoint
from agentgw.inbound.origin_guard import OriginGuard
from agentgw.policy.loader import load_policies
from agentgw.policy.model import PolicySet
from agentgw.sessions.memory import MemorySessionStore
from agentgw.sessions.redis import RedisSessionStore
from agentgw.sessions.store import SessionStore
from agentgw.upstream.mcp import McpUpstream

log = logging.getLogger("agentgw")


def create_store(settings: Settings) -> SessionStore:
    config = settings.session_store
    if config.type == "redis":
        return RedisSessionStore(config.url, config.key_prefix)
    return MemorySessionStore(config.max_sessions)


def create_app(settings: Settings, policies: PolicySet | None = None) -> ASGIApp:
    policies = policies if policies is not None else load_policies(settings.policies)
    store = create_store(settings)
    targets = settings.mcp.targets if settings.mcp.enabled else []
    upstream = McpUpstream(targets)
    mcp = McpHttpEndpoint(settings, store, upstream, policies)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> JSONResponse:
        problems: dict[str, Any] = {}
        try:
            await store.ping()
        except GatewayError:
            problems["session_store"] = "unreachable"
        for name, pool in upstream.pools.items():
            if not pool.has_healthy():
                problems.setdefault("targets", {})[name] = "no healthy backend"
        if problems:
            return JSONResponse({"status": "not ready", **problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await upstream.start()
        base = f"http://{settings.server.listen}"
        for name in upstream.pools:
            log.info("MCP target %s at %s/mcp/v1/%s", name, base, name)
        log.info("session store: %s; health at %s/healthz and %s/ready", settings.session_store.type, base, base)
        try:
            yield
        finally:
            await upstream.close()
            await store.close()

    routes = [Route("/healthz", healthz, methods=["GET"]), Route("/ready", ready, methods=["GET"])]
    host, _ = split_host_port(settings.server.listen)
    app = ProtocolRouter(mcp if targets else None, Starlette(routes=routes, lifespan=lifespan))
    # The Host/Origin check runs first: a rebinding page must learn nothing, not even a 404.
    return OriginGuard(
        app,
        listen_host=host,
        allowed_hosts=settings.server.allowed_hosts,
        allowed_origins=settings.server.allowed_origins,
    )


MCP_PREFIX = "/mcp/v1"


class ProtocolRouter:
    """Sends proxied protocol traffic straight to its endpoint; the rest goes to Starlette.

    The proxy paths are the hot path: they skip Starlette's routing and
    exception middleware, which cost more per request than the proxying itself.
    """

    def __init__(self, mcp: McpHttpEndpoint | None, other: ASGIApp) -> None:
        self.mcp = mcp
        self.other = other

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.mcp is not None:
            path: str = scope["path"]
            if path == MCP_PREFIX or path.startswith(MCP_PREFIX + "/"):
                target = path[len(MCP_PREFIX) + 1 :].rstrip("/")
                if "/" in target:
                    await NotFound("Not found").send(send)
                    return
                scope["path_params"] = {"target": target} if target else {}
                await self.mcp(scope, receive, send)
                return
        await self.other(scope, receive, send)


def app_from_environment() -> ASGIApp:
    """Factory for uvicorn worker processes (`server.workers` > 1)."""
    import os

    from agentgw.config import config_path, load_settings

    return create_app(load_settings(config_path(None, os.environ)))
