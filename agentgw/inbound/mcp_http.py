"""MCP Streamable HTTP, proxied (contract 5): the transport.

Stateful 2025 revisions: the gateway mints its own session id on `initialize`,
pins the session to one backend and swaps the backend's id in and out. The
stateless 2026-07-28 revision is forwarded request by request, pinned only when
the client echoes the `X-MCP-Session-ID` handle the gateway answers with.

This module reads what the client sent and answers errors; a POST is a call
through the steps of `agentgw/call.py` (`inbound/mcp_calls.py` says what each
kind of POST does at each), and the sessions are `inbound/mcp_sessions.py`'s.
A GET stream and a DELETE are no calls: they name a session and go straight
to its backend.
"""

from __future__ import annotations

import logging

from starlette.types import Receive, Scope, Send

from agentgw import jsonrpc
from agentgw.call import Call, CallPipeline, call_of
from agentgw.config import Settings
from agentgw.errors import (
    BackendRefused,
    GatewayError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    UpstreamTimeout,
)
from agentgw.inbound.mcp_calls import CHECKED_METHODS, McpCalls, McpPost
from agentgw.inbound.mcp_request import (
    InboundRequest,
    check_accept,
    check_content_type,
    check_messages,
    check_routing_headers,
    read_body,
    read_headers,
)
from agentgw.inbound.mcp_virtual import VirtualCalls, VirtualServer
from agentgw.inbound.mcp_virtual_post import RENAMED_METHODS, VirtualPost
from agentgw.inbound.mcp_virtual_steps import relay_streams, virtual_steps
from agentgw.inbound.relay import ResumedAnswers
from agentgw.mcp_headers import LAST_EVENT_ID
from agentgw.observability.refusals import Refusals
from agentgw.policy.live import LivePolicies
from agentgw.upstream.mcp import BackendPool

log = logging.getLogger("agentgw.inbound.mcp")


class McpHttpEndpoint:
    """The ASGI endpoint behind `/mcp/v1` and `/mcp/v1/{target}`."""

    def __init__(
        self,
        settings: Settings,
        calls: McpCalls,
        virtual: VirtualCalls,
        pipeline: CallPipeline,
        live: LivePolicies,
        refusals: Refusals,
    ) -> None:
        self.server = settings.server
        self.calls = calls
        self.virtual = virtual
        self.pipeline = pipeline
        self.live = live
        self.refusals = refusals
        self.pools = calls.upstream.pools
        self._default_target = settings.mcp.targets[0].name if settings.mcp.targets else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        call = call_of(scope)
        served = None  # the target or virtual server, once known: what a backend's fault is counted on
        try:
            name = scope.get("path_params", {}).get("target", self._default_target)
            server = self.virtual.servers.get(name) if name is not None else None
            if server is not None:
                served = server.name
                await self._virtual(call, scope, server, receive, send)
                return
            pool = self._pool(name)
            served = pool.target.name
            request = read_headers(scope, self.live.policies.session.second_header, call.caller)
            call.target, call.session_id = pool.target.name, request.session_id
            if request.method == "POST":
                await self._post(call, request, pool, receive, send)
            elif request.method == "GET":
                await self._get(call, request, pool, receive, send)
            elif request.method == "DELETE":
                await self._delete(request, pool, send)
            else:
                raise MethodNotAllowed("Method not allowed", headers={"allow": "GET, POST, DELETE"})
        except GatewayError as exc:
            if served is not None:
                self._record_refusal(served, exc)
            await exc.send(scope, send, request_id=call.rpc_id)
        except Exception:
            log.exception("unexpected error in the MCP endpoint")
            await InternalError("Internal error").send(scope, send)

    def _record_refusal(self, served: str, error: GatewayError) -> None:
        """What the backend did wrong is counted and logged; what the client did wrong is its answer alone."""
        if isinstance(error, BackendRefused):
            self.refusals.record(served, error.reason)
        elif isinstance(error, UpstreamTimeout):
            self.refusals.record(served, "timeout")

    def _pool(self, name: str | None) -> BackendPool:
        pool = self.pools.get(name) if name is not None else None
        if pool is None:
            raise NotFound("Unknown MCP target")
        return pool

    async def _post(self, call: Call, request: InboundRequest, pool: BackendPool, receive: Receive, send: Send) -> None:
        check_content_type(request.headers)
        check_accept(request.headers, ("application/json", "text/event-stream"))
        body = await read_body(request.headers, receive, self.server.max_body_bytes, self.server.body_timeout)
        payload = call.message = jsonrpc.parse(body)
        messages = check_messages(payload)
        batch = isinstance(payload, list)
        call.rpc_method = "batch" if batch else messages[0].get("method")
        if request.is_modern:
            if batch:
                raise InvalidRequest("Batches are not part of MCP 2026-07-28")
            check_routing_headers(request, messages[0])
        elif batch and any(m.get("method") in CHECKED_METHODS for m in messages):
            raise InvalidRequest("initialize and the list methods must be sent alone, not in a batch")
        request.answers = self.calls.answers(pool, [m["id"] for m in messages if "method" in m and "id" in m])
        # What is checked is what is forwarded: the gateway's own serialisation, made (and
        # refused, for a lone surrogate) before any policy looks at the message.
        post = McpPost(request, pool, messages, batch, jsonrpc.serialise(payload))
        await self.pipeline.run(self.calls.steps(post), call, receive, send)

    async def _get(self, call: Call, request: InboundRequest, pool: BackendPool, receive: Receive, send: Send) -> None:
        check_accept(request.headers, ("text/event-stream",))
        if request.is_modern:
            raise MethodNotAllowed("MCP 2026-07-28 has no GET stream", headers={"allow": "POST"})
        record = await self.calls.sessions.find(request, pool.target.name)
        # A GET stream carries no responses, unless it resumes the stream of an earlier request.
        resumed = LAST_EVENT_ID in request.headers
        request.answers = (
            ResumedAnswers([], self.calls.foreign_answer(pool)) if resumed else self.calls.answers(pool, [])
        )
        record, response = await self.calls.send_in_session(request, pool, record, None)
        call.backend = record.backend
        self.calls.guard_session_answers(request.answers, pool, record, call.caller)
        post = McpPost(request, pool, [], False, b"")
        try:
            await self.calls.relay(response, self.calls.session_headers(record.id), receive, send, post, None)
        finally:
            response.release()

    # -- virtual servers (contract 12) ----------------------------------------------------

    async def _virtual(self, call: Call, scope: Scope, server: VirtualServer, receive: Receive, send: Send) -> None:
        request = read_headers(scope, self.live.policies.session.second_header, call.caller)
        call.target, call.session_id = server.name, request.session_id
        if request.is_modern and request.method != "POST":
            raise MethodNotAllowed("MCP 2026-07-28 has no GET stream", headers={"allow": "POST"})
        if request.method == "POST":
            post = await self._read_post(call, request, receive)
            if request.is_modern:
                check_routing_headers(request, post.message)
                if post.message.get("method") == "initialize":
                    raise InvalidRequest("MCP 2026-07-28 has no initialize")
            await self.pipeline.run(virtual_steps(self.virtual, server, post), call, receive, send)
        elif request.method == "GET":
            check_accept(request.headers, ("text/event-stream",))
            record = await self.calls.sessions.find(request, server.name)
            await relay_streams(self.virtual, server, record, request.principal, receive, send)
        elif request.method == "DELETE":
            await self.virtual.end(await self.calls.sessions.find(request, server.name), server, request.principal)
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
        else:
            raise MethodNotAllowed("Method not allowed", headers={"allow": "GET, POST, DELETE"})

    async def _read_post(self, call: Call, request: InboundRequest, receive: Receive) -> VirtualPost:
        """A virtual server's POST: one message, read as strictly as any."""
        check_content_type(request.headers)
        check_accept(request.headers, ("application/json", "text/event-stream"))
        body = await read_body(request.headers, receive, self.server.max_body_bytes, self.server.body_timeout)
        payload = call.message = jsonrpc.parse(body)
        if isinstance(payload, list):
            raise InvalidRequest("Virtual servers take one message per request, not a batch")
        [message] = check_messages(payload)
        call.rpc_method = message.get("method")
        request.answers = None
        renamed = message.get("method") in RENAMED_METHODS
        return VirtualPost(request, message, None if renamed else jsonrpc.serialise(message))

    async def _delete(self, request: InboundRequest, pool: BackendPool, send: Send) -> None:
        await self.calls.sessions.end(
            await self.calls.sessions.find(request, pool.target.name), pool, request.principal
        )
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
