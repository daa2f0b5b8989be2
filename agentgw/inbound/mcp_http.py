"""MCP Streamable HTTP, proxied (contract section 5).

Stateful 2025 revisions: the gateway mints its own session id on `initialize`,
pins the session to one backend and swaps the backend's id in and out. The
stateless 2026-07-28 revision is forwarded request by request, pinned only when
the client echoes the `X-MCP-Session-ID` handle the gateway answers with.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.types import Receive, Scope, Send

from agentgw import jsonrpc
from agentgw.config import Settings
from agentgw.errors import (
    BackendRefused,
    GatewayError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    StoreUnavailable,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from agentgw.inbound.mcp_policy import McpGuard
from agentgw.inbound.mcp_request import (
    InboundRequest,
    check_accept,
    check_content_type,
    check_messages,
    check_routing_headers,
    read_body,
    read_headers,
)
from agentgw.inbound.mcp_sessions import McpSessions
from agentgw.inbound.relay import AnswerFilter, Rewrite, client_headers, relay, relay_checked, send_answer
from agentgw.mcp_headers import LAST_EVENT_ID, MCP_METHOD, MCP_PROTOCOL_VERSION, MCP_SESSION_ID
from agentgw.observability.refusals import Refusals
from agentgw.policy import rate_limits
from agentgw.policy.live import LivePolicies
from agentgw.sessions.stateless import StatelessHandles
from agentgw.sessions.store import SessionRecord, SessionStore
from agentgw.upstream.answers import Answer, read_answer, refuse_backend_auth
from agentgw.upstream.http import UpstreamResponse
from agentgw.upstream.mcp import BackendPool, McpUpstream

log = logging.getLogger("agentgw.inbound.mcp")

# Answers the gateway reads whole and checks before the client sees them (contract 11).
CHECKED_METHODS = frozenset(
    {"initialize", "tools/list", "prompts/list", "resources/list", "resources/templates/list", "server/discover"}
)


@dataclass(frozen=True, slots=True)
class Checked:
    """An answer to read whole and check: the id it must answer, and how its result is changed."""

    request_id: Any
    rewrite: Rewrite | None


class McpHttpEndpoint:
    """The ASGI endpoint behind `/mcp/v1` and `/mcp/v1/{target}`."""

    def __init__(
        self,
        settings: Settings,
        store: SessionStore,
        upstream: McpUpstream,
        live: LivePolicies,
        guard: McpGuard,
        refusals: Refusals,
    ) -> None:
        self.settings = settings
        self.refusals = refusals
        self.store = store
        self.upstream = upstream
        self.live = live
        self.guard = guard
        self.handles = StatelessHandles(store)
        self.sessions = McpSessions(store, upstream, live)
        # Made once per target, not per request: what an answer to another request costs the backend.
        self._foreign_answer = {
            name: functools.partial(refusals.record, name, "bad_backend_answer", "a response to another request")
            for name in upstream.pools
        }
        self._default_target = settings.mcp.targets[0].name if settings.mcp.targets else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pool = None
        try:
            pool = self._pool(scope)
            request = read_headers(scope, self.live.policies.session.second_header)
            request.info.target, request.info.session_id = pool.target.name, request.session_id
            if request.method == "POST":
                await self._post(scope, request, pool, receive, send)
            elif request.method == "GET":
                await self._get(request, pool, receive, send)
            elif request.method == "DELETE":
                await self._delete(request, pool, send)
            else:
                raise MethodNotAllowed("Method not allowed", headers={"allow": "GET, POST, DELETE"})
        except GatewayError as exc:
            if pool is not None:
                self._record_refusal(pool, exc)
            await exc.send(send)
        except Exception:
            log.exception("unexpected error in the MCP endpoint")
            await InternalError("Internal error").send(send)

    def _answers(self, pool: BackendPool, request_ids: list[Any]) -> AnswerFilter:
        return AnswerFilter(request_ids, self._foreign_answer[pool.target.name])

    def _record_refusal(self, pool: BackendPool, error: GatewayError) -> None:
        """What the backend did wrong is counted and logged; what the client did wrong is its answer alone."""
        if isinstance(error, BackendRefused):
            self.refusals.record(pool.target.name, error.reason)
        elif isinstance(error, UpstreamTimeout):
            self.refusals.record(pool.target.name, "timeout")

    def _pool(self, scope: Scope) -> BackendPool:
        name = scope.get("path_params", {}).get("target", self._default_target)
        pool = self.upstream.pools.get(name) if name is not None else None
        if pool is None:
            raise NotFound("Unknown MCP target")
        return pool

    # -- POST ---------------------------------------------------------------

    async def _post(
        self, scope: Scope, request: InboundRequest, pool: BackendPool, receive: Receive, send: Send
    ) -> None:
        check_content_type(request.headers)
        check_accept(request.headers, ("application/json", "text/event-stream"))
        server = self.settings.server
        body = await read_body(request.headers, receive, server.max_body_bytes, server.body_timeout)
        payload = jsonrpc.parse(body)
        messages = check_messages(payload)
        request.info.rpc_method = "batch" if isinstance(payload, list) else messages[0].get("method")
        # What is checked is what is forwarded: the gateway's own serialisation, made (and
        # refused, for a lone surrogate) before any policy looks at the message.
        forwarded = jsonrpc.serialise(payload)
        batch = isinstance(payload, list)
        request.answers = self._answers(pool, [m["id"] for m in messages if "method" in m and "id" in m])
        try:
            # Counted per POST (a batch is one), before a backend is touched; no store call without a policy.
            await rate_limits.admit(self.live.policies.rate_limits, self.store, request.principal, "mcp")
            if request.is_modern:
                if batch:
                    raise InvalidRequest("Batches are not part of MCP 2026-07-28")
                check_routing_headers(request, messages[0])
                await self._post_modern(scope, request, pool, messages[0], forwarded, receive, send)
            elif not batch and messages[0].get("method") == "initialize":
                await self._initialize(request, pool, messages[0], forwarded, receive, send)
            else:
                if batch and any(m.get("method") in CHECKED_METHODS for m in messages):
                    raise InvalidRequest("initialize and the list methods must be sent alone, not in a batch")
                await self._post_in_session(scope, request, pool, messages, batch, forwarded, receive, send)
        except GatewayError as exc:
            if exc.request_id is None and isinstance(payload, dict):
                exc.request_id = payload.get("id")
            raise

    async def _post_in_session(
        self,
        scope: Scope,
        request: InboundRequest,
        pool: BackendPool,
        messages: list[jsonrpc.Message],
        batch: bool,
        forwarded: bytes,
        receive: Receive,
        send: Send,
    ) -> None:
        record = await self.sessions.find(request, pool)
        session_headers = {MCP_PROTOCOL_VERSION: request.protocol_version or record.protocol_version}
        if record.backend_session_id is not None:
            session_headers[MCP_SESSION_ID] = record.backend_session_id

        async def discover() -> None:
            tools, complete = await self.upstream.list_tools(record.backend, session_headers, None, pool.target.timeout)
            await self.guard.observe(pool.target.name, tools, pool.target.max_tools, complete)

        await self.guard.check(scope, pool.target.name, messages, request.principal, record.id, batch, discover)
        checked = None if batch else self._checked(request, pool, messages[0])
        await self._forward_in_session(request, pool, record, forwarded, receive, send, checked)

    def _checked(self, request: InboundRequest, pool: BackendPool, message: jsonrpc.Message) -> Checked | None:
        """How an answer the gateway acts on is read: whole, checked, changed by `rewrite`."""
        method = message.get("method")
        if method not in CHECKED_METHODS or "id" not in message:
            return None
        rewrite = self.guard.answer_rewrite(pool.target.name, method, message, request.principal, pool.target.max_tools)
        return Checked(message["id"], rewrite)

    async def _initialize(
        self,
        request: InboundRequest,
        pool: BackendPool,
        message: jsonrpc.Message,
        body: bytes,
        receive: Receive,
        send: Send,
    ) -> None:
        if request.session_id is not None:
            raise InvalidRequest("initialize must not carry a session id")
        url, response = await self._send_to_first(await pool.candidates(self.store, time.time()), request, body, pool)
        try:
            refuse_backend_auth(response)
            if not 200 <= response.status < 300:
                # The backend refused: its answer, and no session. (Any 2xx is an answer clients
                # accept, so any 2xx is checked.)
                await relay(response, [], receive, send, pool.target.timeout)
                return
            backend_session_id = response.header(MCP_SESSION_ID)
            record = self.sessions.new_record(pool, url, backend_session_id, message, body, request.principal)
            answer = await self._open(record, response, message.get("id"), pool)
            request.info.session_id, request.info.backend = record.id, url
            await send_answer(send, answer, client_headers(response, self._session_headers(record.id)))
        finally:
            response.release()

    async def _open(
        self, record: SessionRecord, response: UpstreamResponse, request_id: Any, pool: BackendPool
    ) -> Answer:
        """Check the backend's answer and store the new session. A backend session whose answer is
        refused, or that cannot be stored, is ended at once: no client leaves one open behind the gateway."""
        try:
            answer = await read_answer(response, request_id, pool.target.timeout)
            if answer.result is not None:
                self.guard.scan_initialize(pool.target.name, answer.result)
            await self.sessions.create(record)
        except (StoreUnavailable, BackendRefused, UpstreamUnavailable):
            await self.upstream.end_session(record, pool.target.timeout)
            raise
        return answer

    async def _send_to_first(
        self, candidates: list[str], request: InboundRequest, body: bytes, pool: BackendPool
    ) -> tuple[str, UpstreamResponse]:
        """POST to the first backend that can be reached. Skipping one is safe: nothing arrived there,
        an initialize opened no session and the stateless revision keeps none. A timeout is the answer."""
        headers = request.forwarded_headers()
        for url in candidates:
            try:
                return url, await self.upstream.send("POST", url, headers, body, timeout=pool.target.timeout)
            except UpstreamTimeout:
                raise
            except UpstreamUnavailable:
                continue
        raise UpstreamUnavailable(f"No backend of target {pool.target.name!r} is reachable")

    async def _post_modern(
        self,
        scope: Scope,
        request: InboundRequest,
        pool: BackendPool,
        message: jsonrpc.Message,
        body: bytes,
        receive: Receive,
        send: Send,
    ) -> None:
        sticky = self.live.policies.session.sticky_session
        pinned = await self._pinned_backend(request, pool) if sticky else None
        candidates = pool.rotation()
        if pinned is not None:
            candidates = [pinned] + [url for url in candidates if url != pinned]

        async def discover() -> None:
            meta = message.get("params", {}).get("_meta")
            modern = {MCP_PROTOCOL_VERSION: MODERN_PROTOCOL_VERSIONS[-1], MCP_METHOD: "tools/list"}
            tools, complete = await self.upstream.list_tools(candidates[0], modern, meta, pool.target.timeout)
            await self.guard.observe(pool.target.name, tools, pool.target.max_tools, complete)

        handle = request.session_id if pinned is not None else None
        await self.guard.check(scope, pool.target.name, [message], request.principal, handle, False, discover)
        checked = self._checked(request, pool, message)
        url, response = await self._send_to_first(candidates, request, body, pool)
        try:
            handle_header = []
            if sticky:
                if url != pinned or handle is None:
                    handle = await self.handles.mint(pool.target.name, pool.index_of(url), request.principal)
                handle_header = [(self.live.policies.session.second_header, handle)]
            request.info.session_id, request.info.backend = handle, url
            await self._relay(response, handle_header, receive, send, pool, request, checked)
        finally:
            response.release()

    async def _pinned_backend(self, request: InboundRequest, pool: BackendPool) -> str | None:
        """The backend an echoed handle pins to; an unknown one simply pins afresh,
        since this revision promises clients no session to lose."""
        if request.session_id is None:
            return None
        backends = pool.backends
        index = await self.handles.backend_index(request.session_id, pool.target.name, len(backends), request.principal)
        return backends[index].url if index is not None else None

    # -- GET and DELETE -------------------------------------------------------

    async def _get(self, request: InboundRequest, pool: BackendPool, receive: Receive, send: Send) -> None:
        check_accept(request.headers, ("text/event-stream",))
        if request.is_modern:
            raise MethodNotAllowed("MCP 2026-07-28 has no GET stream", headers={"allow": "POST"})
        record = await self.sessions.find(request, pool)
        # A GET stream carries no responses, unless it resumes the stream of an earlier request.
        request.answers = None if LAST_EVENT_ID in request.headers else self._answers(pool, [])
        await self._forward_in_session(request, pool, record, None, receive, send, None)

    async def _delete(self, request: InboundRequest, pool: BackendPool, send: Send) -> None:
        await self.sessions.end(await self.sessions.find(request, pool), pool)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    # -- forwarding in a session ------------------------------------------------

    async def _forward_in_session(
        self,
        request: InboundRequest,
        pool: BackendPool,
        record: SessionRecord,
        body: bytes | None,
        receive: Receive,
        send: Send,
        checked: Checked | None,
    ) -> None:
        headers = request.forwarded_headers()
        for _ in range(2):
            if record.backend_session_id is not None:
                headers[MCP_SESSION_ID] = record.backend_session_id
            try:
                response = await self.upstream.send(
                    request.method, record.backend, headers, body, timeout=pool.target.timeout
                )
            except UpstreamTimeout:
                raise
            except UpstreamUnavailable:
                record = await self.sessions.fail_over(pool, record)
                continue
            try:
                if response.status == 404 and record.backend_session_id is not None:
                    # The backend no longer knows its session: it restarted or expired it.
                    record = await self.sessions.fail_over(pool, record)
                    continue
                request.info.backend = record.backend
                session_headers = self._session_headers(record.id)
                await self._relay(response, session_headers, receive, send, pool, request, checked)
                return
            finally:
                response.release()
        raise UpstreamUnavailable(f"No backend of target {pool.target.name!r} kept the session")

    async def _relay(
        self,
        response: UpstreamResponse,
        headers: list[tuple[str, str]],
        receive: Receive,
        send: Send,
        pool: BackendPool,
        request: InboundRequest,
        checked: Checked | None,
    ) -> None:
        refuse_backend_auth(response)
        if checked is None:
            await relay(response, headers, receive, send, pool.target.timeout, answers=request.answers)
        else:
            await relay_checked(response, headers, send, pool.target.timeout, checked.request_id, checked.rewrite)

    def _session_headers(self, session_id: str) -> list[tuple[str, str]]:
        """Mcp-Session-Id, and the SessionPolicy's second header, both naming the gateway's session."""
        second = self.live.policies.session.second_header
        if second == MCP_SESSION_ID:
            return [(MCP_SESSION_ID, session_id)]
        return [(MCP_SESSION_ID, session_id), (second, session_id)]
