"""The metrics port: `/metrics`, and the admin API behind the operator commands (contract 4).

It is served by a second listener inside the gateway process, so it reads the
same sessions, catalogue and audit stream; with Redis every replica answers
alike, and a session revoked through one replica is gone for all of them. It
has no authentication of its own: keep the metrics port internal (the
Kubernetes manifests do, with a NetworkPolicy).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from agentgw.config import split_host_port
from agentgw.errors import StoreUnavailable
from agentgw.inbound.mcp_virtual import VirtualCalls, members_of
from agentgw.inbound.origin_guard import OriginGuard
from agentgw.observability.audit import AuditLog
from agentgw.observability.metrics import LiveMetrics, Metrics
from agentgw.observability.requests import without_credentials
from agentgw.policy.catalogue import ToolCatalogue
from agentgw.policy.model import PoisoningDetection
from agentgw.policy.poisoning import ToolEntry
from agentgw.sessions.store import SessionRecord, SessionStore
from agentgw.upstream.mcp import McpUpstream

log = logging.getLogger("agentgw.admin")

MAX_AUDIT_LINES = 10_000
MAX_LISTED_SESSIONS = 10_000
BACKEND_DELETE_TIMEOUT = 3.0


@dataclass(frozen=True)
class Operated:
    """The parts of the running gateway that the admin API reads and steers."""

    store: SessionStore
    upstream: McpUpstream
    virtual: VirtualCalls
    catalogue: ToolCatalogue
    audit: AuditLog
    detection: Callable[[str], PoisoningDetection]
    metrics: Metrics
    live_metrics: LiveMetrics


def create_admin_app(gateway: Operated) -> Starlette:
    targets = gateway.upstream.pools
    virtual_servers = gateway.virtual.servers

    def describe(target: str, entry: ToolEntry) -> dict[str, object]:
        reason = entry.quarantine_reason(gateway.detection(target))
        return {**asdict(entry), "quarantined": reason is not None, "reason": reason}

    async def scrape(request: Request) -> Response:
        await gateway.live_metrics.refresh()
        return Response(gateway.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def tools(request: Request) -> JSONResponse:
        target = request.path_params["target"]
        if target not in targets:
            return _error(404, f"unknown target {target!r}")
        await gateway.catalogue.refresh(target)
        entries = {name: describe(target, entry) for name, entry in sorted(gateway.catalogue.entries(target).items())}
        return JSONResponse({"target": target, "tools": entries})

    async def approve(request: Request) -> JSONResponse:
        target, tool = request.path_params["target"], request.path_params["tool"]
        if target not in targets:
            return _error(404, f"unknown target {target!r}")
        entry = await gateway.catalogue.approve(target, tool)
        if entry is None:
            return _error(404, f"target {target!r} has never listed a tool {tool!r}")
        log.warning("tool %s of target %s approved by an operator", tool, target)
        return JSONResponse({"target": target, "tool": tool, "entry": describe(target, entry)})

    async def audit_tail(request: Request) -> JSONResponse:
        count = _count(request, "n", 20, MAX_AUDIT_LINES)
        return JSONResponse({"entries": await gateway.audit.tail(count)})

    async def sessions(request: Request) -> JSONResponse:
        limit = _count(request, "limit", 100, MAX_LISTED_SESSIONS)
        wanted = request.query_params.get("target")
        if wanted is not None and wanted not in targets and wanted not in virtual_servers:
            return _error(404, f"unknown target {wanted!r}")
        now = time.time()
        found: list[dict[str, object]] = []
        # A virtual server's session has no backend of its own: its members' are in its record.
        backends_of = {name: [b.url for b in pool.backends] for name, pool in targets.items()}
        backends_of |= {name: [""] for name in virtual_servers}
        for name, backends in backends_of.items():
            if wanted in (None, name):
                found += [_summary(r) for r in await gateway.store.sessions(name, backends, now, limit)]
        found.sort(key=lambda s: float(str(s["last_seen"])), reverse=True)
        return JSONResponse({"sessions": found[:limit]})

    async def show(request: Request) -> JSONResponse:
        record = await gateway.store.get(request.path_params["session_id"])
        if record is None:
            return _error(404, "no such session")
        return JSONResponse(_summary(record))

    async def revoke(request: Request) -> JSONResponse:
        record = await gateway.store.delete(request.path_params["session_id"])
        if record is None:
            return _error(404, "no such session")
        pool = targets.get(record.target)
        server = virtual_servers.get(record.target)
        # The backends free their sessions too; the operator does not wait long for them.
        if pool is not None:
            # No caller here: a target that acts on a caller's behalf is not told, and expires the session itself.
            presenting = pool.presenting(None)
            await gateway.upstream.end_session(record, min(pool.target.timeout, BACKEND_DELETE_TIMEOUT), presenting)
        elif server is not None:
            await gateway.virtual.end_members(record, server, BACKEND_DELETE_TIMEOUT)
        log.warning("session of %s on target %s revoked by an operator", record.subject, record.target)
        return JSONResponse({"revoked": record.id, "target": record.target})

    async def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
        return _error(503, "session store unavailable")

    async def bad_request(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, exc.detail)

    return Starlette(
        routes=[
            Route("/metrics", scrape, methods=["GET"]),
            Route("/admin/tools/{target}", tools, methods=["GET"]),
            Route("/admin/tools/{target}/{tool}/approve", approve, methods=["POST"]),
            Route("/admin/audit", audit_tail, methods=["GET"]),
            Route("/admin/sessions", sessions, methods=["GET"]),
            Route("/admin/sessions/{session_id}", show, methods=["GET"]),
            Route("/admin/sessions/{session_id}", revoke, methods=["DELETE"]),
        ],
        exception_handlers={StoreUnavailable: store_unavailable, HTTPException: bad_request},
    )


def _summary(record: SessionRecord) -> dict[str, object]:
    """What an operator sees of a session: never the client's initialize message. A virtual
    server's session names its members' backends."""
    summary: dict[str, object] = {
        "id": record.id,
        "target": record.target,
        "backend": without_credentials(record.backend),
        "protocol_version": record.protocol_version,
        "subject": record.subject,
        "issuer": record.issuer,
        "scopes": record.scopes,
        "created_at": record.created_at,
        "last_seen": record.last_seen,
    }
    if record.members is not None:
        summary["members"] = [
            {"target": m.target, "backend": without_credentials(m.backend) if m.backend else None}
            for m in members_of(record)
        ]
    return summary


def _count(request: Request, name: str, default: int, most: int) -> int:
    try:
        return max(0, min(int(request.query_params.get(name, default)), most))
    except ValueError:
        raise HTTPException(400, f"{name} must be an integer") from None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _NoBrowserPages:
    """Refuse any request that carries an Origin: browsers send one with every cross-site request
    (a page driving the admin API by DNS rebinding or a simple POST), operators' tools and Prometheus do not."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and any(name == b"origin" for name, _ in scope["headers"]):
            await _error(403, "the admin API does not answer browser pages")(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def start_listener(app: Starlette, listen: str) -> uvicorn.Server:
    """Serve `app` on `listen` from inside the running gateway, without touching its signal handling.

    The socket is bound with SO_REUSEPORT, so every worker process of a
    multi-worker gateway can listen on the same metrics port.
    """
    host, port = split_host_port(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    # The bound port, which differs from `listen` when it names port 0 (the kernel picks one).
    log.info("admin API listening on %s port %d", host, sock.getsockname()[1])
    # log_level None: uvicorn's loggers are shared with the main listener, whose levels stay as they are.
    guarded = OriginGuard(_NoBrowserPages(app), listen_host=host, allowed_hosts=[], allowed_origins=[])
    config = uvicorn.Config(
        guarded, lifespan="off", access_log=False, log_config=None, log_level=None, http="httptools"
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    return server
