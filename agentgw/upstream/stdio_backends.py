"""`command:` backends (contract 13): the bridge of `agentgw bridge`, run inside the gateway process.

Each stdio backend gets a bridge of its own, served on a loopback port bound
when the app is made, so the target's backend is an ordinary URL from then on:
sessions, pinning, failover and the checks of contract 11 apply unchanged. A
child's session ends with the gateway session (DELETE, or the SessionPolicy's
timeout as the bridge's idle timeout), and every child ends when the gateway stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import Iterator, Mapping
from typing import Any

import uvicorn

from agentgw.config import BackendConfig, McpTargetConfig
from agentgw.typed_yaml import ConfigError, line_of

log = logging.getLogger("agentgw.stdio")

LOOPBACK = "127.0.0.1"


class _InnerServer(uvicorn.Server):
    """A server inside the gateway's own: that one answers the signals, and stops this one."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclasses.dataclass
class _Served:
    bridge: Any  # agentgw.bridge.StdioBridge, imported only when a command backend exists
    listener: socket.socket
    server: _InnerServer | None = None
    task: asyncio.Task[None] | None = None


class StdioBackends:
    """The in-process bridges of every `command` backend of `targets`."""

    def __init__(
        self, targets: list[McpTargetConfig], environ: Mapping[str, str], idle_timeout: float, source: str
    ) -> None:
        self._served: list[_Served] = []
        self.targets = [self._resolved(t, environ, idle_timeout, source) for t in targets]

    def _resolved(
        self, target: McpTargetConfig, environ: Mapping[str, str], idle_timeout: float, source: str
    ) -> McpTargetConfig:
        """The target with each command backend replaced by the URL of its bridge."""
        if not any(b.command for b in target.backends):
            return target
        from agentgw.bridge import StdioBridge
        from agentgw.upstream.stdio import server_parameters

        backends = []
        for backend in target.backends:
            if not backend.command:
                backends.append(backend)
                continue
            try:
                params = server_parameters(backend.command, backend.env, backend.cwd, environ)
            except ValueError as exc:
                raise ConfigError(source, line_of(backend), f"mcp.targets.{target.name}.backends: {exc}") from None
            bridge = StdioBridge(
                params,
                target=target.name,
                max_processes=target.max_processes,
                idle_timeout=idle_timeout,
                initialize_timeout=float(target.timeout),
            )
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((LOOPBACK, 0))
            self._served.append(_Served(bridge, listener))
            backends.append(BackendConfig(url=f"http://{LOOPBACK}:{listener.getsockname()[1]}/mcp"))
        return dataclasses.replace(target, backends=backends)

    async def start(self) -> None:
        if not self._served:
            return
        from agentgw.bridge import bridge_app

        for served in self._served:
            app = bridge_app(served.bridge, LOOPBACK)
            served.server = _InnerServer(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
            served.task = asyncio.create_task(served.server.serve(sockets=[served.listener]))

    async def close(self) -> None:
        """End every child, then the bridges' servers."""
        await asyncio.gather(*(served.bridge.close() for served in self._served))
        for served in self._served:
            if served.server is not None:
                served.server.should_exit = True
        tasks = [served.task for served in self._served if served.task is not None]
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.error("a stdio bridge failed to stop", exc_info=outcome)
        for served in self._served:
            served.listener.close()
