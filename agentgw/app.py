"""create_app(settings): routes, middleware in flow order, lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from opentelemetry.trace import TracerProvider
from prometheus_client.core import Metric
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from agentgw.auth.middleware import AuthMiddleware
from agentgw.call import CallPipeline
from agentgw.config import Settings, split_host_port
from agentgw.errors import WELL_KNOWN_METADATA, GatewayError, NotFound, StoreUnavailable, base_url
from agentgw.inbound.a2a import A2A_PREFIX, A2AEndpoint
from agentgw.inbound.admin import Operated, create_admin_app, start_listener
from agentgw.inbound.mcp_calls import McpCalls
from agentgw.inbound.mcp_http import McpHttpEndpoint
from agentgw.inbound.mcp_sessions import McpSessions
from agentgw.inbound.mcp_virtual import VirtualCalls
from agentgw.inbound.mcp_websocket import WS_SUFFIX, McpWebSocketEndpoint
from agentgw.inbound.openai_chat import ChatEndpoint
from agentgw.inbound.origin_guard import OriginGuard
from agentgw.observability.audit import AuditLog
from agentgw.observability.guardrail_actions import GuardrailActions
from agentgw.observability.logs import configure_logging
from agentgw.observability.metrics import Metrics, gauge
from agentgw.observability.refusals import Refusals
from agentgw.observability.requests import RequestObserver, without_credentials
from agentgw.observability.tracing import (
    TracedConnectionPool,
    TracingMiddleware,
    configure_from_environment,
    configured_provider,
    flush_spans,
)
from agentgw.policy.catalogue import ToolCatalogue
from agentgw.policy.live import LivePolicies
from agentgw.policy.loader import load_policies
from agentgw.policy.model import PolicySet
from agentgw.policy.tool_guard import ToolGuard
from agentgw.sessions.memory import MemorySessionStore
from agentgw.sessions.redis import RedisSessionStore
from agentgw.sessions.stateless import StatelessHandles
from agentgw.sessions.store import SessionStore
from agentgw.upstream.http import ConnectionPool
from agentgw.upstream.llm.router import LlmRouter
from agentgw.upstream.mcp import McpUpstream
from agentgw.upstream.stdio_backends import StdioBackends

log = logging.getLogger("agentgw")

CONNECT_TIMEOUT = 3.0
MCP_PREFIX = "/mcp/v1"
CHAT_PREFIX = "/v1/"


def create_store(settings: Settings, env: Mapping[str, str]) -> SessionStore:
    config = settings.session_store
    if config.type == "memory":
        return MemorySessionStore(config.max_sessions)
    return RedisSessionStore.for_config(config, env)


def create_app(
    settings: Settings,
    policies: PolicySet | None = None,
    env: Mapping[str, str] | None = None,
    tracer_provider: TracerProvider | None = None,
) -> ASGIApp:
    """The gateway as one ASGI app. Raises ConfigError when a policy names a secret that is not set.

    Spans are made with `tracer_provider`, else with the global one if an OpenTelemetry SDK set it.
    """
    env = os.environ if env is None else env
    policies = policies if policies is not None else load_policies(settings.policies)
    store = create_store(settings, env)
    provider = configured_provider(tracer_provider)
    tracer = provider.get_tracer("agentgw") if provider is not None else None
    http = ConnectionPool(CONNECT_TIMEOUT) if tracer is None else TracedConnectionPool(CONNECT_TIMEOUT, tracer)
    live = LivePolicies(settings.policies, policies, env, http)
    # A `command` backend becomes the URL of a bridge inside this process; a child lives as long as
    # its gateway session may.
    idle = live.policies.session.session_timeout
    stdio = StdioBackends(settings.mcp.targets if settings.mcp.enabled else [], env, idle, settings.source)
    targets = stdio.targets
    upstream = McpUpstream(targets, http, env)
    metrics = Metrics(_configured_models(settings))
    refusals = Refusals(metrics)
    catalogue = ToolCatalogue(store, refusals)
    audit = AuditLog(store)
    guardrail_actions = GuardrailActions(metrics, audit)
    guard = ToolGuard(live, catalogue, audit, metrics, refusals, enabled=settings.mcp.tool_validation)
    pipeline = CallPipeline(live, store)
    sessions = McpSessions(store, upstream, live)
    handles = StatelessHandles(store)
    calls = McpCalls(store, upstream, sessions, handles, guard, live, refusals, guardrail_actions)
    virtual = VirtualCalls(calls, settings.mcp.virtual_servers if settings.mcp.enabled else [])
    mcp = McpHttpEndpoint(settings, calls, virtual, pipeline, live, refusals)
    a2a = None
    if settings.a2a.agents:
        a2a = A2AEndpoint(settings, store, pipeline, live, http, refusals, env, guardrail_actions)
    chat = None
    if settings.llm.providers:
        router = LlmRouter(settings.llm, http)
        chat = ChatEndpoint(router, store, pipeline, metrics, refusals, settings.server, live, guardrail_actions)
    target_names = [t.name for t in targets]

    async def live_metrics() -> list[Metric]:
        up: dict[tuple[str, ...], float] = {
            (name, without_credentials(b.url)): float(b.healthy)
            for name, pool in upstream.pools.items()
            for b in pool.backends
        }
        gauges = [gauge("agentgw_backend_up", "1 while the backend passes health checks", ["target", "backend"], up)]
        try:
            sessions = 0
            # A virtual server's session has no backend of its own (its members' are in its record).
            backends = {name: [b.url for b in pool.backends] for name, pool in upstream.pools.items()}
            backends |= {name: [""] for name in virtual.servers}
            for name, urls in backends.items():
                sessions += sum((await store.count_by_backend(name, urls, time.time())).values())
        except StoreUnavailable:
            return gauges  # the scrape still answers; the missing series says the store did not
        return [*gauges, gauge("agentgw_sessions_active", "Live MCP sessions in the session store", [], {(): sessions})]

    scraped = metrics.add_live(live_metrics)

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

    async def protected_resource(request: Request) -> JSONResponse:
        """RFC 9728: what this resource is, who issues its tokens, which scopes mean something here."""
        base = base_url(request.scope)
        suffix = request.path_params.get("path", "")
        authenticator = live.authenticator
        return JSONResponse(
            {
                "resource": f"{base}/{suffix}",
                # RFC 9728: issuer identifiers are URLs; a bare dev issuer name would break clients that fetch them.
                "authorization_servers": [i for i in authenticator.issuers if i.startswith(("https://", "http://"))]
                if authenticator
                else [],
                "scopes_supported": live.policies.scopes(),
                "bearer_methods_supported": ["header"],
                "resource_name": "agentgw",
            }
        )

    async def refresh_catalogue() -> None:
        """Other replicas' quarantines and approvals, as the store announces them: no work while
        nothing changes, and none at all with the memory store, which no other process writes."""
        await catalogue.follow(target_names)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await stdio.start()
        await upstream.start()
        audit.start()
        tasks = [asyncio.create_task(live.watch()), asyncio.create_task(refresh_catalogue())]
        if virtual.servers:
            tasks.append(asyncio.create_task(virtual.end_expired()))
        admin = None
        if settings.server.metrics_listen:
            operated = Operated(store, upstream, virtual, catalogue, audit, live.detection, metrics, scraped)
            admin_app = create_admin_app(operated)
            admin = await start_listener(admin_app, settings.server.metrics_listen)
        _log_urls(settings, upstream)
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(outcome, Exception):
                    log.error("a background task failed", exc_info=outcome)
            if admin is not None:
                await admin.shutdown()
            await audit.close()
            await upstream.close()
            await stdio.close()
            await http.close()
            await store.close()
            if provider is not None:
                flush_spans(provider)

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route(WELL_KNOWN_METADATA, protected_resource, methods=["GET"]),
        Route(WELL_KNOWN_METADATA + "/{path:path}", protected_resource, methods=["GET"]),
    ]
    host, _ = split_host_port(settings.server.listen)
    mcp_websocket = McpWebSocketEndpoint(mcp, metrics)
    other = Starlette(routes=routes, lifespan=lifespan)
    app: ASGIApp = ProtocolRouter(mcp if targets else None, mcp_websocket, a2a, chat, other)
    # Outermost first, in the order of a call's steps (agentgw/call.py): observe, Host/Origin,
    # authenticate, then the protocol endpoints (tracing wraps all but the observer).
    app = AuthMiddleware(app, live, refusals)
    app = OriginGuard(
        app,
        listen_host=host,
        allowed_hosts=settings.server.allowed_hosts,
        allowed_origins=settings.server.allowed_origins,
    )
    if tracer is not None:
        app = TracingMiddleware(app, tracer)
    return RequestObserver(app, metrics)


def _configured_models(settings: Settings) -> dict[str, set[str]]:
    """provider -> the models the config names: always metric labels of their own."""
    models: dict[str, set[str]] = {p.name: set() for p in settings.llm.providers}
    for alias in settings.llm.models:
        for entry in alias.route:
            provider, _, model = entry.partition("/")
            models.setdefault(provider, set()).add(model)
    return models


def _log_urls(settings: Settings, upstream: McpUpstream) -> None:
    base = f"http://{settings.server.listen}"
    for name in upstream.pools:
        log.info("MCP target %s at %s%s/%s", name, base, MCP_PREFIX, name)
    log.info("session store: %s; health at %s/healthz and %s/ready", settings.session_store.type, base, base)
    if settings.server.metrics_listen:
        log.info("admin API at http://%s/admin/", settings.server.metrics_listen)


class ProtocolRouter:
    """Sends proxied protocol traffic straight to its endpoint; the rest goes to Starlette.

    The proxy paths are the hot path: they skip Starlette's routing and
    exception middleware, which cost more per request than the proxying itself.
    """

    def __init__(
        self,
        mcp: McpHttpEndpoint | None,
        mcp_websocket: McpWebSocketEndpoint | None,
        a2a: A2AEndpoint | None,
        chat: ChatEndpoint | None,
        other: ASGIApp,
    ) -> None:
        self.mcp = mcp
        self.mcp_websocket = mcp_websocket
        self.a2a = a2a
        self.chat = chat
        self.other = other

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.chat is not None and scope["path"].startswith(CHAT_PREFIX):
            await self.chat(scope, receive, send)
            return
        if scope["type"] == "http" and self.a2a is not None and scope["path"].startswith(A2A_PREFIX + "/"):
            await self.a2a(scope, receive, send)
            return
        if self.mcp is not None and scope["type"] in ("http", "websocket"):
            path: str = scope["path"]
            if path == MCP_PREFIX or path.startswith(MCP_PREFIX + "/"):
                await self._mcp(scope, path[len(MCP_PREFIX) + 1 :].rstrip("/"), receive, send)
                return
        await self.other(scope, receive, send)

    async def _mcp(self, scope: Scope, target: str, receive: Receive, send: Send) -> None:
        assert self.mcp is not None and self.mcp_websocket is not None
        if scope["type"] == "websocket" and target.endswith(WS_SUFFIX):
            scope["path_params"] = {"target": target.removesuffix(WS_SUFFIX)}
            await self.mcp_websocket(scope, receive, send)
        elif scope["type"] != "http" or "/" in target:
            await NotFound("Not found").refuse(scope, receive, send)
        else:
            scope["path_params"] = {"target": target} if target else {}
            await self.mcp(scope, receive, send)


def app_from_environment() -> ASGIApp:
    """Factory for uvicorn worker processes (`server.workers` > 1)."""
    from agentgw.config import config_path, load_settings

    configure_logging()
    configure_from_environment(os.environ)
    return create_app(load_settings(config_path(None, os.environ)))
