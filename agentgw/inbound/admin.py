"""The admin API behind the operator commands, on the metrics port only (contract 4).

It is served by a second listener inside the gateway process, so it reads the
same catalogue and audit stream; with Redis every replica answers alike. It
has no authentication of its own: keep the metrics port internal (the
Kubernetes manifests do, with a NetworkPolicy).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import asdict

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agentgw.config import split_host_port
from agentgw.errors import StoreUnavailable
from agentgw.observability.audit import AuditLog
from agentgw.observability.metrics import LiveMetrics, Metrics
from agentgw.policy.model import PoisoningDetection
from agentgw.policy.poisoning import ToolCatalogue, ToolEntry

log = logging.getLogger("agentgw.admin")

MAX_AUDIT_LINES = 10_000


def create_admin_app(
    targets: list[str],
    catalogue: ToolCatalogue,
    audit: AuditLog,
    detection: Callable[[str], PoisoningDetection],
    metrics: Metrics,
    live_metrics: LiveMetrics,
) -> Starlette:
    def describe(target: str, entry: ToolEntry) -> dict[str, object]:
        reason = entry.quarantine_reason(detection(target))
        return {**asdict(entry), "quarantined": reason is not None, "reason": reason}

    async def tools(request: Request) -> JSONResponse:
        target = request.path_params["target"]
        if target not in targets:
            return JSONResponse({"error": f"unknown target {target!r}"}, status_code=404)
        await catalogue.refresh(target)
        entries = {name: describe(target, entry) for name, entry in sorted(catalogue.entries(target).items())}
        return JSONResponse({"target": target, "tools": entries})

    async def approve(request: Request) -> JSONResponse:
        target, tool = request.path_params["target"], request.path_params["tool"]
        if target not in targets:
            return JSONResponse({"error": f"unknown target {target!r}"}, status_code=404)
        entry = await catalogue.approve(target, tool)
        if entry is None:
            return JSONResponse({"error": f"target {target!r} has never listed a tool {tool!r}"}, status_code=404)
        log.warning("tool %s of target %s approved by an operator", tool, target)
        return JSONResponse({"target": target, "tool": tool, "entry": describe(target, entry)})

    async def audit_tail(request: Request) -> JSONResponse:
        try:
            count = int(request.query_params.get("n", "20"))
        except ValueError:
            return JSONResponse({"error": "n must be an integer"}, status_code=400)
        count = max(0, min(count, MAX_AUDIT_LINES))
        return JSONResponse({"entries": await audit.tail(count)})

    async def scrape(request: Request) -> Response:
        await live_metrics.refresh()
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "session store unavailable"}, status_code=503)

    return Starlette(
        routes=[
            Route("/metrics", scrape, methods=["GET"]),
            Route("/admin/tools/{target}", tools, methods=["GET"]),
            Route("/admin/tools/{target}/{tool}/approve", approve, methods=["POST"]),
            Route("/admin/audit", audit_tail, methods=["GET"]),
        ],
        exception_handlers={StoreUnavailable: store_unavailable},
    )


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
    config = uvicorn.Config(app, lifespan="off", access_log=False, log_level="warning", http="httptools")
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    return server
