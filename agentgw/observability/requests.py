"""Per request: one JSON log line and the request metrics (contract 10).

The observer is the outermost middleware (steps 1 and 10 of `agentgw/call.py`).
It puts the request's `Call` into the ASGI scope; the layers below fill in
what they learn (caller, session, target, backend, tool, decision), and the
observer logs and counts it when the answer is complete. Only names and
outcomes reach the log: never tokens, secrets or message contents.
"""

from __future__ import annotations

import logging
import random
import re
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentgw.call import CALL_KEY, Call
from agentgw.observability.audit import hash_session
from agentgw.observability.logs import access_log, log_request
from agentgw.observability.metrics import Metrics

REQUEST_ID_HEADER = b"x-request-id"
_CLIENT_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
# Tool, method and model names are client input: a log line keeps their start only.
MAX_LOGGED_NAME = 128


# Route label values: the endpoint templates of the contract, so they stay a small fixed set.
MCP_ROUTE, MCP_TARGET_ROUTE, MCP_WS_ROUTE = "/mcp/v1", "/mcp/v1/{target}", "/mcp/v1/{target}/ws"
A2A_ROUTE, A2A_CARD_ROUTE = "/a2a/v1/{agent}", "/a2a/v1/{agent}/.well-known/agent-card.json"
CHAT_ROUTE, MODELS_ROUTE = "/v1/chat/completions", "/v1/models"
OAUTH_METADATA_ROUTE = "/.well-known/oauth-protected-resource"
UNMATCHED_ROUTE = "unmatched"
_FIXED_ROUTES = {p: p for p in ("/healthz", "/ready", MCP_ROUTE, CHAT_ROUTE, MODELS_ROUTE)}


def route_of(path: str, websocket: bool) -> str:
    """The endpoint template a path belongs to: metrics label values must come from a bounded set."""
    fixed = _FIXED_ROUTES.get(path.rstrip("/") or "/")
    if fixed is not None:
        return fixed
    if path.startswith(MCP_ROUTE + "/"):
        return MCP_WS_ROUTE if websocket else MCP_TARGET_ROUTE
    if path.startswith("/a2a/v1/"):
        return A2A_CARD_ROUTE if path.endswith(("agent-card.json", "agent.json")) else A2A_ROUTE
    if path.startswith(OAUTH_METADATA_ROUTE):
        return OAUTH_METADATA_ROUTE
    return UNMATCHED_ROUTE


def without_credentials(url: str) -> str:
    """A backend URL fit for a log line or a label: any user:password@ removed."""
    if "@" not in url:
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class RequestObserver:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        call = Call(route_of(scope["path"], kind == "websocket"), scope.get("method", "GET"), _request_id(scope))
        scope[CALL_KEY] = call
        request_id_header = (REQUEST_ID_HEADER, call.request_id.encode())

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                call.status = message["status"]
                message["headers"] = [*message.get("headers", ()), request_id_header]
            elif message["type"] == "websocket.accept":
                call.status = 101
            elif message["type"] == "websocket.close" and not call.status:
                call.status = 403  # refused before the handshake completed
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            # A WebSocket's lifetime is no latency: its messages are timed one by one instead.
            record_request(self.metrics, call, time.perf_counter() - started, timed=kind == "http")


def record_request(metrics: Metrics, call: Call, seconds: float, timed: bool = True) -> None:
    """Count and log one finished request (or one message of a WebSocket)."""
    status = call.status or 500
    metrics.request(call.route, status, seconds if timed else None)
    if access_log.isEnabledFor(logging.INFO):
        log_request(_log_fields(call, status, seconds))


def _request_id(scope: Scope) -> str:
    """The client's X-Request-Id when it is a sane one, so logs join up across hops; else a new one."""
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and _CLIENT_REQUEST_ID.fullmatch(value):
            return str(value.decode())
    return f"{random.getrandbits(64):016x}"  # it correlates log lines; it guards nothing


def _log_fields(call: Call, status: int, seconds: float) -> dict[str, Any]:
    return {
        "request_id": call.request_id,
        "route": call.route,
        "method": _clip(call.rpc_method or call.http_method),
        "http_method": call.http_method,
        "session": hash_session(call.session_id),
        "subject": call.subject,
        "target": _clip(call.target),
        "backend": _clip(without_credentials(call.backend) if call.backend else None),
        "tool": _clip(call.tool),
        "decision": call.decision,
        "status": status,
        "duration": round(seconds, 6),  # seconds, as in the metrics
    }


def _clip(value: str | None) -> str | None:
    return value[:MAX_LOGGED_NAME] if value is not None else None
