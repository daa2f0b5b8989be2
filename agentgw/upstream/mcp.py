"""MCP backends: the replicas of each target, their health, and forwarding to them."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp

from agentgw.config import McpTargetConfig
from agentgw.errors import UpstreamTimeout, UpstreamUnavailable
from agentgw.sessions.store import SessionStore

log = logging.getLogger("agentgw.upstream.mcp")

HEALTH_CHECK_TIMEOUT = 1.0
CONNECT_TIMEOUT = 3.0


@dataclass
class Backend:
    url: str
    healthy: bool = True


class BackendPool:
    """The replicas of one MCP target and which of them may take new sessions."""

    def __init__(self, target: McpTargetConfig) -> None:
        self.target = target
        self.backends = [Backend(b.url) for b in target.backends]
        self._by_url = {b.url: b for b in self.backends}
        self._round_robin = itertools.count()

    @property
    def urls(self) -> list[str]:
        return [b.url for b in self.backends]

    def has_healthy(self) -> bool:
        return any(b.healthy for b in self.backends)

    def mark_down(self, url: str) -> None:
        backend = self._by_url.get(url)
        if backend is not None and backend.healthy:
            log.warning("backend down", extra={"target": self.target.name, "backend": url})
            backend.healthy = False

    async def candidates(self, store: SessionStore, now: float, exclude: str | None = None) -> list[str]:
        """Healthy backends for a new session, the balancer's choice first.

        Unhealthy ones follow, so an initialize still has somewhere to go when
        every health check failed but a backend has come back since.
        """
        healthy = [b.url for b in self.backends if b.healthy and b.url != exclude]
        others = [b.url for b in self.backends if not b.healthy and b.url != exclude]
        if len(healthy) > 1:
            if self.target.balance == "round_robin":
                start = next(self._round_robin) % len(healthy)
                healthy = healthy[start:] + healthy[:start]
            else:
                counts = await store.count_by_backend(self.target.name, healthy, now)
                healthy.sort(key=lambda url: counts.get(url, 0))
        return healthy + others


class McpUpstream:
    """Pooled keep-alive HTTP connections to every MCP backend."""

    def __init__(self, targets: Iterable[McpTargetConfig]) -> None:
        self.pools = {t.name: BackendPool(t) for t in targets}
        self._http: aiohttp.ClientSession | None = None
        self._health_tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        self._http = aiohttp.ClientSession(connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",))
        for pool in self.pools.values():
            await self._check_pool(pool)
            self._health_tasks.append(asyncio.create_task(self._health_loop(pool)))

    async def close(self) -> None:
        for task in self._health_tasks:
            task.cancel()
        await asyncio.gather(*self._health_tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    async def send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        *,
        timeout: float,
        stream: bool = False,
    ) -> aiohttp.ClientResponse:
        """Send one request; the caller releases the response.

        Connection failures mark the backend down and raise UpstreamUnavailable;
        `stream` (the GET event stream) lifts the read timeout.
        """
        assert self._http is not None
        client_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT, sock_read=None if stream else timeout
        )
        try:
            return await self._http.request(
                method, url, headers=headers, data=body, timeout=client_timeout, allow_redirects=False
            )
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeout("Backend did not answer in time") from exc
        except (aiohttp.ClientError, OSError) as exc:
            for pool in self.pools.values():
                pool.mark_down(url)
            raise UpstreamUnavailable("Backend unreachable") from exc

    async def _health_loop(self, pool: BackendPool) -> None:
        while True:
            await asyncio.sleep(pool.target.health_check_interval)
            await self._check_pool(pool)

    async def _check_pool(self, pool: BackendPool) -> None:
        results = await asyncio.gather(*(self._probe(b.url) for b in pool.backends))
        for backend, up in zip(pool.backends, results):
            if up != backend.healthy:
                log.warning("backend %s", "up" if up else "down", extra={"target": pool.target.name, "backend": backend.url})
            backend.healthy = up

    async def _probe(self, url: str) -> bool:
        """Any HTTP answer means the backend serves; MCP defines no health endpoint."""
        assert self._http is not None
        try:
            async with self._http.get(
                url, headers={"Accept": "text/event-stream"}, timeout=aiohttp.ClientTimeout(total=HEALTH_CHECK_TIMEOUT)
            ) as response:
                return response.status < 500
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False
