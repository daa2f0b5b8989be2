"""MCP over WebSocket at `/mcp/v1/{target}/ws` (contract 4), for clients built on mcp 1.x's websocket_client.

Subprotocol `mcp`, one JSON-RPC message per text frame. Each frame from the
client goes through the same endpoint as a Streamable HTTP POST, carrying
the session id the socket's initialize created, so sessions, pinning, policy,
audit and metrics are exactly those of HTTP. Answers (JSON or an event
stream) come back as frames, event by event; messages the backend starts
itself arrive through the session's GET stream. Closing the socket ends the
session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from agentgw import sse
from agentgw.call import CALL_KEY, Call, call_of
from agentgw.errors import NotFound
from agentgw.inbound.mcp_http import McpHttpEndpoint
from agentgw.mcp_headers import MCP_PROTOCOL_VERSION, MCP_SESSION_ID
from agentgw.observability.metrics import Metrics
from agentgw.observability.requests import MCP_WS_ROUTE, record_request

log = logging.getLogger("agentgw.inbound.mcp_websocket")

SUBPROTOCOL = "mcp"
WS_SUFFIX = "/ws"
CLOSE_PROTOCOL_ERROR = 1002  # no `mcp` subprotocol offered
CLOSE_POLICY_VIOLATION = 1008
MAX_REQUESTS_IN_FLIGHT = 32


class McpWebSocketEndpoint:
    def __init__(self, mcp: McpHttpEndpoint, metrics: Metrics) -> None:
        self.mcp = mcp
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path_params"]["target"] not in self.mcp.pools:
            await NotFound("Unknown MCP target").refuse(scope, receive, send)
            return
        connect = await receive()
        if connect["type"] != "websocket.connect":
            return
        if SUBPROTOCOL not in scope.get("subprotocols", []):
            await send({"type": "websocket.close", "code": CLOSE_PROTOCOL_ERROR, "reason": "subprotocol mcp required"})
            return
        await send({"type": "websocket.accept", "subprotocol": SUBPROTOCOL})
        await _Connection(self, scope, send).run(receive)


class _Connection:
    """One client socket: its session, the frames in flight, and the backend's GET stream."""

    def __init__(self, endpoint: McpWebSocketEndpoint, scope: Scope, send: Send) -> None:
        self.endpoint = endpoint
        self.scope = scope
        self._send = send
        self._send_lock = asyncio.Lock()
        self.session_id: str | None = None
        self.protocol_version: str | None = None
        self._tasks: set[asyncio.Task[tuple[int, list[Any]]]] = set()
        # Requests in flight per socket: past this, the socket is not read until one is answered.
        self._slots = asyncio.Semaphore(MAX_REQUESTS_IN_FLIGHT)
        self._listener: asyncio.Task[None] | None = None
        self._closed = False

    async def run(self, receive: Receive) -> None:
        try:
            while True:
                event = await receive()
                if event["type"] == "websocket.disconnect":
                    break
                if self._token_expired():
                    await self._close(CLOSE_POLICY_VIOLATION, "token expired")
                    break
                frame = event.get("text")
                if frame is None:
                    frame = (event.get("bytes") or b"").decode("utf-8", "replace")
                await self._dispatch(frame.encode())
        finally:
            self._closed = True
            await self._end()

    def _token_expired(self) -> bool:
        """The token was checked at the handshake; every frame is a request it must still cover."""
        principal = call_of(self.scope).caller
        return principal is not None and principal.expires_at <= time.time()

    async def _dispatch(self, frame: bytes) -> None:
        message = _parsed(frame)
        # initialize creates the session every later frame carries: it is answered before the next is read.
        if self.session_id is None and _method_of(message) == "initialize":
            await self._initialize(frame)
            return
        if not isinstance(message, dict) or "id" not in message or "method" not in message:
            # Notifications and answers to the backend keep their order: forwarded before the next frame.
            await self._exchange("POST", frame)
            return
        await self._slots.acquire()
        task = asyncio.create_task(self._exchange("POST", frame))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[tuple[int, list[Any]]]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _close(self, code: int, reason: str) -> None:
        async with self._send_lock:
            with contextlib.suppress(Exception):
                await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def _initialize(self, frame: bytes) -> None:
        status, answers = await self._exchange("POST", frame)
        if status == 200 and self.session_id is not None:
            self.protocol_version = _negotiated_version(answers)
            self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        """Relay what the backend sends on its own (notifications, requests to the client)."""
        await self._exchange("GET", b"")

    async def _exchange(self, method: str, body: bytes) -> tuple[int, list[Any]]:
        """One request through the MCP endpoint; every message of its answer is sent as a frame."""
        answer = _Answer(self)
        connection = call_of(self.scope)
        call = Call(MCP_WS_ROUTE, method, connection.request_id, caller=connection.caller)
        scope = self._request_scope(method, call)
        delivered = False

        async def receive() -> Message:
            nonlocal delivered
            if delivered:
                await asyncio.Event().wait()  # like a client that stays connected until the answer ends
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        started = time.perf_counter()
        await self.endpoint.mcp(scope, receive, answer.send)
        call.status = answer.status
        record_request(self.endpoint.metrics, call, time.perf_counter() - started)
        return answer.status, answer.messages

    def _request_scope(self, method: str, call: Call) -> Scope:
        headers = [
            *((k, v) for k, v in self.scope["headers"] if k == b"host"),
            (b"content-type", b"application/json"),
            (b"accept", b"application/json, text/event-stream" if method == "POST" else b"text/event-stream"),
        ]
        if self.session_id is not None:
            headers.append((MCP_SESSION_ID.encode(), self.session_id.encode()))
        if self.protocol_version is not None:
            headers.append((MCP_PROTOCOL_VERSION.encode(), self.protocol_version.encode()))
        return {
            "type": "http",
            "method": method,
            "path": self.scope["path"].removesuffix(WS_SUFFIX),
            "headers": headers,
            "query_string": b"",
            "path_params": self.scope.get("path_params", {}),
            CALL_KEY: call,
        }

    async def frame(self, message: Any) -> None:
        if self._closed:
            return
        text = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
        async with self._send_lock:
            with contextlib.suppress(Exception):  # the client went away: nothing left to tell it
                await self._send({"type": "websocket.send", "text": text})

    async def _end(self) -> None:
        pending = [*self._tasks, *([self._listener] if self._listener else [])]
        for task in pending:
            task.cancel()
        for outcome in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.error("a request of a closing WebSocket failed", exc_info=outcome)
        if self.session_id is not None:
            with contextlib.suppress(Exception):
                await self._exchange("DELETE", b"")


class _Answer:
    """Collects one HTTP answer of the MCP endpoint and turns its messages into frames as they come."""

    def __init__(self, connection: _Connection) -> None:
        self.connection = connection
        self.status = 0
        self.messages: list[Any] = []
        self._events: sse.SseDecoder | None = None
        self._buffer = b""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
            if sse.is_event_stream(headers.get("content-type")):
                self._events = sse.SseDecoder()
            if MCP_SESSION_ID in headers and self.connection.session_id is None:
                self.connection.session_id = headers[MCP_SESSION_ID]
            return
        body = message.get("body", b"")
        if self._events is not None:
            for event in self._events.feed(body):
                await self._deliver(event.data.encode())
            return
        self._buffer += body
        if not message.get("more_body", False):
            await self._deliver(self._buffer)

    async def _deliver(self, data: bytes) -> None:
        if not data.strip():
            return  # 202 Accepted: a notification or a response, nothing to answer
        try:
            message = json.loads(data)
        except ValueError:
            log.warning("a backend answer that is not JSON was not relayed over the WebSocket")
            return
        self.messages.append(message)
        await self.connection.frame(message)


def _parsed(frame: bytes) -> Any:
    try:
        return json.loads(frame)
    except ValueError:
        return None  # the endpoint answers it with a parse error


def _method_of(message: Any) -> str | None:
    method = message.get("method") if isinstance(message, dict) else None
    return method if isinstance(method, str) else None


def _negotiated_version(answers: list[Any]) -> str | None:
    for answer in answers:
        if isinstance(answer, dict) and isinstance(answer.get("result"), dict):
            version = answer["result"].get("protocolVersion")
            if isinstance(version, str):
                return version
    return None
