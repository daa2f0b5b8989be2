"""MCP backends: the replicas of each target, their health, and forwarding to them."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agentgw import jsonrpc
from agentgw.auth.principal import Principal
from agentgw.config import McpTargetConfig
from agentgw.errors import UpstreamAuthFailed, UpstreamTimeout, UpstreamUnavailable
from agentgw.mcp_headers import MCP_PROTOCOL_VERSION, MCP_SESSION_ID
from agentgw.sessions.store import SessionRecord, SessionRecords
from agentgw.upstream.answers import Answer, read_answer, read_body, refuse_backend_auth
from agentgw.upstream.credentials import Credentials, Presenting, credentials_for, sent_with
from agentgw.upstream.faults import BACKEND
from agentgw.upstream.http import ConnectionPool, UpstreamConnectionError, UpstreamResponse, UpstreamTimeoutError

log = logging.getLogger("agentgw.upstream.mcp")

HEALTH_CHECK_TIMEOUT = 1.0
ACCEPT = "application/json, text/event-stream"
# The gateway's own tools/list, sent before a tool it has never seen listed may be called. Each
# has an id of its own: a server answers concurrent requests of one session by their ids.
_LIST_ID_PREFIX = "agentgw-tool-discovery-"
MAX_TOOL_PAGES = 20
_INITIALIZED = jsonrpc.serialise({"jsonrpc": "2.0", "method": "notifications/initialized"})


@dataclass
class Backend:
    url: str
    healthy: bool = True


class BackendPool:
    """The replicas of one MCP target and which of them may take new sessions."""

    def __init__(self, target: McpTargetConfig, credentials: Credentials | None = None) -> None:
        self.target = target
        self.credentials = credentials
        self.backends = [Backend(b.url) for b in target.backends]
        self._by_url = {b.url: b for b in self.backends}
        self._index = {b.url: i for i, b in enumerate(self.backends)}
        self._round_robin = itertools.count()

    def presenting(self, caller: Principal | None) -> Presenting | None:
        """What a request of `caller` presents to this target's backends (contract 14); None: nothing."""
        return None if self.credentials is None else Presenting(self.credentials, caller)

    def has_healthy(self) -> bool:
        return any(b.healthy for b in self.backends)

    def mark_down(self, url: str) -> None:
        backend = self._by_url.get(url)
        if backend is not None and backend.healthy:
            log.warning("backend %s down (target %s)", url, self.target.name)
            backend.healthy = False

    def rotation(self) -> list[str]:
        """Backends for a request that starts no session: healthy ones in turn, then the others."""
        healthy = [b.url for b in self.backends if b.healthy]
        start = next(self._round_robin) % len(healthy) if healthy else 0
        return healthy[start:] + healthy[:start] + [b.url for b in self.backends if not b.healthy]

    def index_of(self, url: str) -> int:
        return self._index[url]

    async def candidates(self, store: SessionRecords, now: float, exclude: str | None = None) -> list[str]:
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
    """Pooled keep-alive HTTP connections to every MCP backend, and their health."""

    def __init__(self, targets: Iterable[McpTargetConfig], http: ConnectionPool, env: Mapping[str, str]) -> None:
        self.pools = {t.name: BackendPool(t, credentials_for(t.auth, http, t.name, env)) for t in targets}
        self._http = http
        self._health_tasks: list[asyncio.Task[None]] = []
        self._list_ids = itertools.count()

    async def start(self) -> None:
        for pool in self.pools.values():
            await self._check_pool(pool)
            self._health_tasks.append(asyncio.create_task(self._health_loop(pool)))

    async def close(self) -> None:
        for task in self._health_tasks:
            task.cancel()
        for outcome in await asyncio.gather(*self._health_tasks, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.error("a health check loop failed", exc_info=outcome)

    async def send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        *,
        timeout: float,
        presenting: Presenting | None = None,
    ) -> UpstreamResponse:
        """Send one request and wait for the response head; the caller releases the response.

        A backend that cannot be reached is marked down (UpstreamUnavailable);
        one that does not answer within `timeout` raises UpstreamTimeout. With
        `presenting`, the target's credentials go along; a 401 to a fetched token
        has it dropped and the request sent once more with a fresh one (contract 14).
        """
        if presenting is None:  # most targets: no closure on the hot path
            return await self._send(method, url, headers, body, timeout)
        return await sent_with(presenting, headers, lambda sent: self._send(method, url, sent, body, timeout))

    async def _send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: float
    ) -> UpstreamResponse:
        try:
            with BACKEND.mapped("Backend"):
                return await self._http.request(method, url, headers, body, timeout)
        except UpstreamTimeout:
            raise
        except UpstreamUnavailable:
            for pool in self.pools.values():
                pool.mark_down(url)
            raise

    async def send_to_first(
        self,
        candidates: list[str],
        headers: dict[str, str],
        body: bytes,
        timeout: float,
        target: str,
        presenting: Presenting | None = None,
    ) -> tuple[str, UpstreamResponse]:
        """POST to the first of `candidates` that can be reached, and which it was. Skipping one is
        safe only where nothing is kept per backend (an initialize, the stateless revision): nothing
        arrived there. A timeout is the answer."""
        for url in candidates:
            try:
                return url, await self.send("POST", url, headers, body, timeout=timeout, presenting=presenting)
            except UpstreamTimeout:
                raise
            except UpstreamUnavailable:
                continue
        raise UpstreamUnavailable(f"No backend of target {target!r} is reachable")

    async def post_answer(
        self, url: str, headers: dict[str, str], body: bytes, timeout: float, presenting: Presenting | None
    ) -> None:
        """The gateway's own answer to a backend's request (one it refused to relay); a backend that
        is gone or slow does not need it any more."""
        try:
            response = await self.send("POST", url, headers, body, timeout=timeout, presenting=presenting)
            response.release()
        except (UpstreamUnavailable, UpstreamTimeout, UpstreamAuthFailed) as exc:
            log.warning("a refused request's answer did not reach backend %s: %s", url, exc.message)

    async def initialize(
        self, url: str, initialize: bytes, protocol_version: str, timeout: float, presenting: Presenting | None
    ) -> str | None:
        """Open a backend session as the client once did (failover: reinitialize); its session id."""
        headers = {"content-type": "application/json", "accept": ACCEPT}
        response = await self.send("POST", url, headers, initialize, timeout=timeout, presenting=presenting)
        try:
            await read_body(response, timeout)
        finally:
            response.release()
        if response.status != 200:
            raise UpstreamUnavailable("Backend refused the replayed initialize")
        backend_session_id = response.header(MCP_SESSION_ID)
        headers[MCP_PROTOCOL_VERSION] = protocol_version
        if backend_session_id is not None:
            headers[MCP_SESSION_ID] = backend_session_id
        notified = await self.send("POST", url, headers, _INITIALIZED, timeout=timeout, presenting=presenting)
        try:
            await read_body(notified, timeout)
        finally:
            notified.release()
        return backend_session_id

    async def end_session(self, record: SessionRecord, timeout: float, presenting: Presenting | None) -> None:
        """Tell the backend a session is over (DELETE), so it frees it; a backend that is gone has
        already, and one the gateway cannot authenticate to will expire it itself."""
        if record.backend_session_id is None:
            return
        headers = {MCP_SESSION_ID: record.backend_session_id, MCP_PROTOCOL_VERSION: record.protocol_version}
        try:
            response = await self.send("DELETE", record.backend, headers, None, timeout=timeout, presenting=presenting)
            response.release()
        except (UpstreamUnavailable, UpstreamTimeout, UpstreamAuthFailed) as exc:
            log.info("backend session at %s not ended there (%s); it expires on its own", record.backend, exc.message)

    async def list_tools(
        self, url: str, headers: dict[str, str], meta: Any, timeout: float, presenting: Presenting | None
    ) -> tuple[list[Any], bool]:
        """A backend's tools, listed as a client would (all pages), and whether that is all of them.

        An answer that fails the checks of contract 11 raises BadBackendAnswer: nothing
        it holds is taken as listed.
        """
        headers = {**headers, "content-type": "application/json", "accept": ACCEPT}
        tools: list[Any] = []
        cursor = None
        for _ in range(MAX_TOOL_PAGES):
            params: dict[str, Any] = {} if meta is None else {"_meta": meta}
            if cursor is not None:
                params["cursor"] = cursor
            request_id = f"{_LIST_ID_PREFIX}{next(self._list_ids)}"
            request = {"jsonrpc": "2.0", "id": request_id, "method": "tools/list", "params": params}
            try:
                answer = await self._exchange(url, headers, jsonrpc.serialise(request), request_id, timeout, presenting)
            except UpstreamUnavailable:
                return tools, False
            result = answer.result if answer is not None else None
            if result is None or not isinstance(result.get("tools"), list):
                return tools, False
            tools += result["tools"]
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str):
                return tools, True
        return tools, False

    async def _exchange(
        self,
        url: str,
        headers: dict[str, str],
        body: bytes,
        request_id: Any,
        timeout: float,
        presenting: Presenting | None,
    ) -> Answer | None:
        """One POST whose answer is read whole and checked; None when the backend answered with an error status."""
        response = await self.send("POST", url, headers, body, timeout=timeout, presenting=presenting)
        try:
            refuse_backend_auth(response)
            if response.status != 200:
                return None
            return await read_answer(response, request_id, timeout)
        finally:
            response.release()

    async def _health_loop(self, pool: BackendPool) -> None:
        while True:
            await asyncio.sleep(pool.target.health_check_interval)
            await self._check_pool(pool)

    async def _check_pool(self, pool: BackendPool) -> None:
        results = await asyncio.gather(*(self._probe(b.url) for b in pool.backends))
        for backend, up in zip(pool.backends, results, strict=True):
            if up != backend.healthy:
                log.warning("backend %s %s of target %s", backend.url, "up" if up else "down", pool.target.name)
            backend.healthy = up

    async def _probe(self, url: str) -> bool:
        """Any HTTP answer below 500 means the backend serves; MCP defines no health endpoint."""
        try:
            response = await self._http.request("GET", url, {"accept": "text/event-stream"}, None, HEALTH_CHECK_TIMEOUT)
        except (UpstreamConnectionError, UpstreamTimeoutError):
            return False
        try:
            await response.read(HEALTH_CHECK_TIMEOUT)
        except (UpstreamConnectionError, UpstreamTimeoutError):
            pass
        finally:
            response.release()
        return response.status < 500
