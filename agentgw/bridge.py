"""`agentgw bridge`: one stdio MCP server served over Streamable HTTP (contract 13).

Stateful revisions only. `initialize` without a session id starts a child process
and, once the child has answered it, mints the session id (256 random bits); every
later request of the session goes to that child. A request is answered with an
event stream carrying what the child sends while it is pending, then its response
(`agentgw/bridge_sessions.py` says which message goes where); notifications and
responses from the client get 202; GET is the stream of everything else; DELETE,
an idle timeout and `close()` end the child. A child that exits takes its session
with it: the session id answers 404, so a client (or a gateway in front, as for
any dead backend) starts a new session.

Client input is checked as on the gateway's own endpoint (`inbound/mcp_request.py`,
`jsonrpc.py`) and errors are answered as `errors.py`'s types say.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from mcp.client.stdio import StdioServerParameters
from mcp.shared.message import SessionMessage
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from agentgw import jsonrpc
from agentgw.bridge_sessions import CANCELLED, BridgeSession, Call, Mailbox, unanswered
from agentgw.errors import (
    GatewayError,
    InternalError,
    MethodNotAllowed,
    NotAcceptable,
    ParseError,
    SessionNotFound,
    SessionRequired,
    UnsupportedProtocolVersion,
    UpstreamUnavailable,
)
from agentgw.inbound.mcp_request import (
    InboundRequest,
    check_accept,
    check_content_type,
    check_messages,
    read_body,
    read_headers,
)
from agentgw.inbound.origin_guard import OriginGuard
from agentgw.mcp_headers import HANDSHAKE_PROTOCOL_VERSIONS, MCP_SESSION_ID, X_MCP_SESSION_ID
from agentgw.sse import EVENT_STREAM
from agentgw.upstream.stdio import to_session_message

log = logging.getLogger("agentgw.bridge")

DEFAULT_MAX_PROCESSES = 32
DEFAULT_IDLE_TIMEOUT = 600.0
DEFAULT_INITIALIZE_TIMEOUT = 60.0  # a first `npx -y` fetches its package before it can answer
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
JSON = "application/json"
_SESSION_HEADER = MCP_SESSION_ID.encode()


@dataclass
class _Exchange:
    """One HTTP request to the bridge, and the JSON-RPC id its error answers (once its body is read)."""

    scope: Scope
    receive: Receive
    send: Send
    rpc_id: Any = None


class StdioBridge:
    """The ASGI endpoint serving the stdio MCP server `params` over Streamable HTTP, one child
    process per MCP session. `target` names the server in log lines. `close()` ends every child."""

    def __init__(
        self,
        params: StdioServerParameters,
        *,
        target: str = "stdio",
        max_processes: int = DEFAULT_MAX_PROCESSES,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        initialize_timeout: float = DEFAULT_INITIALIZE_TIMEOUT,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.params = params
        self.target = target
        self.max_processes = max_processes
        self.idle_timeout = idle_timeout
        self.initialize_timeout = initialize_timeout
        self.max_body_bytes = max_body_bytes
        self._sessions: dict[str, BridgeSession] = {}
        self._ending: set[asyncio.Task[None]] = set()
        self._stopping = 0  # children of ended sessions, not yet gone
        self._closed = False

    @property
    def processes(self) -> int:
        """Children starting, serving a session, or stopping."""
        return len(self._sessions) + self._stopping

    async def close(self) -> None:
        """End every session and its child; refuse new ones."""
        self._closed = True
        ends = [self._end(session, "shutdown") for session in list(self._sessions.values())]
        await asyncio.gather(*ends, *self._ending)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = _Exchange(scope, receive, send)
        try:
            request = read_headers(scope, X_MCP_SESSION_ID, None)
            if request.is_modern:
                raise UnsupportedProtocolVersion(
                    "This server speaks the stateful MCP revisions only",
                    data={"supported": list(HANDSHAKE_PROTOCOL_VERSIONS), "requested": request.protocol_version},
                )
            if request.method == "POST":
                await self._post(exchange, request)
            elif request.method == "GET":
                await self._get(exchange, request)
            elif request.method == "DELETE":
                await self._delete(exchange, request)
            else:
                raise MethodNotAllowed("Method not allowed", headers={"allow": "GET, POST, DELETE"})
        except GatewayError as exc:
            await exc.send(scope, send, request_id=exchange.rpc_id)
        except Exception:
            log.exception("unexpected error in the stdio bridge")
            await InternalError("Internal error").send(scope, send, request_id=exchange.rpc_id)

    async def _post(self, exchange: _Exchange, request: InboundRequest) -> None:
        check_content_type(request.headers)
        check_accept(request.headers, (JSON, EVENT_STREAM))
        body = await read_body(request.headers, exchange.receive, self.max_body_bytes)
        payload = jsonrpc.parse(body)
        messages = check_messages(payload)
        batch = isinstance(payload, list)
        if not batch:
            exchange.rpc_id = messages[0].get("id")
        outgoing = [to_session_message(message) for message in messages]
        if request.session_id is None:
            if batch or messages[0].get("method") != "initialize" or "id" not in messages[0]:
                raise SessionRequired("Bad Request: a session id is required (only initialize opens a session)")
            await self._initialize(exchange, messages[0]["id"], outgoing[0])
            return
        session = self._session(request.session_id)
        with session.in_flight():
            await self._in_session(exchange, request, session, messages, outgoing, batch)

    async def _in_session(
        self,
        exchange: _Exchange,
        request: InboundRequest,
        session: BridgeSession,
        messages: list[jsonrpc.Message],
        outgoing: list[SessionMessage],
        batch: bool,
    ) -> None:
        for message in messages:
            if message.get("method") == CANCELLED:
                session.cancel(message.get("params", {}).get("requestId"))
        requests = [message for message in messages if "method" in message and "id" in message]
        if not requests:
            await session.send(outgoing)
            await _answer(exchange.send, 202, b"", [])
            return
        events = _accepts_event_stream(request.headers)
        call = session.open_call(requests, events)
        try:
            await session.send(outgoing)
            if events:
                await self._stream(exchange, session, call.mailbox, call)
            else:
                await _answer_json(exchange, session, call, batch)
        finally:
            session.close_call(call)

    async def _initialize(self, exchange: _Exchange, request_id: Any, message: SessionMessage) -> None:
        if self._closed or self.processes >= self.max_processes:
            raise UpstreamUnavailable(f"Too many MCP sessions: at most {self.max_processes} server processes")
        session = BridgeSession(
            secrets.token_urlsafe(32), self.params, self.target, self.idle_timeout, self._forget, self._expire
        )
        self._sessions[session.id] = session  # counted against max_processes from now on
        try:
            answer = await session.initialize(message, request_id, self.initialize_timeout)
        except BaseException:
            await self._end(session, "initialize_failed")
            raise
        if "error" in answer:
            # No session: the server refused to start one.
            await self._end(session, "initialize_refused")
            await _answer(exchange.send, 200, jsonrpc.serialise(answer), [(b"content-type", JSON.encode())])
            return
        headers = [(b"content-type", JSON.encode()), (_SESSION_HEADER, session.id.encode())]
        await _answer(exchange.send, 200, jsonrpc.serialise(answer), headers)

    async def _get(self, exchange: _Exchange, request: InboundRequest) -> None:
        check_accept(request.headers, (EVENT_STREAM,))
        session = self._session(request.session_id)
        with session.in_flight():
            mailbox = session.open_stream()
            try:
                await self._stream(exchange, session, mailbox, None)
            finally:
                session.release_stream(mailbox)

    async def _delete(self, exchange: _Exchange, request: InboundRequest) -> None:
        await self._end(self._session(request.session_id), "deleted")
        await _answer(exchange.send, 200, b"", [])

    async def _stream(self, exchange: _Exchange, session: BridgeSession, mailbox: Mailbox, call: Call | None) -> None:
        """An event stream of what `mailbox` receives, until it closes or the client goes; for a
        POST (`call`), ended by errors for what the session ended without answering."""
        headers = [(b"content-type", EVENT_STREAM.encode()), (b"cache-control", b"no-cache")]
        headers.append((_SESSION_HEADER, session.id.encode()))
        await exchange.send({"type": "http.response.start", "status": 200, "headers": headers})
        async with _cut_off_on_disconnect(exchange.receive, mailbox):
            while (message := await mailbox.get()) is not None:
                await _send_event(exchange.send, message)
            if call is not None and not mailbox.cut:
                for error in unanswered(call):
                    await _send_event(exchange.send, error)
        await exchange.send({"type": "http.response.body", "body": b"", "more_body": False})

    def _session(self, session_id: str | None) -> BridgeSession:
        if session_id is None:
            raise SessionRequired("Bad Request: a session id is required")
        session = self._sessions.get(session_id)
        if session is None or session.ended:
            raise SessionNotFound("Session not found")
        return session

    async def _end(self, session: BridgeSession, reason: str) -> None:
        self._sessions.pop(session.id, None)
        self._stopping += 1
        try:
            await session.end()
        finally:
            self._stopping -= 1
        fields = {"level": "info", "logger": log.name, "event": "session_ended", "target": self.target}
        log.info("bridge session ended", extra={"fields": fields | {"child": session.child.serial, "reason": reason}})

    def _forget(self, session: BridgeSession) -> None:
        """The child exited by itself: the session id is unknown from now on."""
        self._sessions.pop(session.id, None)

    def _expire(self, session: BridgeSession) -> None:
        task = asyncio.create_task(self._end(session, "idle"))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)


def _accepts_event_stream(headers: dict[str, str]) -> bool:
    try:
        check_accept(headers, (EVENT_STREAM,))
    except NotAcceptable:
        return False
    return True


async def _answer_json(exchange: _Exchange, session: BridgeSession, call: Call, batch: bool) -> None:
    """For a client that takes no event stream: the responses alone, once all are in."""
    answers = []
    async with _cut_off_on_disconnect(exchange.receive, call.mailbox):
        while (message := await call.mailbox.get()) is not None:
            answers.append(message)
    if call.mailbox.cut:
        return
    answers += unanswered(call)
    body = jsonrpc.serialise(answers if batch else answers[0])
    headers = [(b"content-type", JSON.encode()), (_SESSION_HEADER, session.id.encode())]
    await _answer(exchange.send, 200, body, headers)


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_event(send: Send, message: Any) -> None:
    try:
        data = jsonrpc.serialise(message)
    except ParseError:
        log.warning("stdio server message not relayed: it holds a lone surrogate")
        return
    await send({"type": "http.response.body", "body": b"event: message\ndata: " + data + b"\n\n", "more_body": True})


@asynccontextmanager
async def _cut_off_on_disconnect(receive: Receive, mailbox: Mailbox) -> AsyncIterator[None]:
    """While the block runs, a client that disconnects ends the reading of `mailbox`."""

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        mailbox.cut_off()

    watcher = asyncio.create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def bridge_app(bridge: StdioBridge, listen_host: str) -> ASGIApp:
    """What `agentgw bridge` serves: the bridge at `/mcp`, behind the Host/Origin checks of
    contract 5.6 (a page in a browser must not start processes on this host), ending every
    child when the server stops."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await bridge.close()

    app = Starlette(routes=[Route("/mcp", bridge)], lifespan=lifespan)
    return OriginGuard(app, listen_host=listen_host, allowed_hosts=[], allowed_origins=[])
