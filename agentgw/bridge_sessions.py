"""One MCP session of `agentgw bridge`: its child process, and which HTTP stream carries each message the child sends.

Over stdio a server's messages carry no hint of the request they belong to
(the SDK's server knows, but says nothing of it on the wire), so they are routed
as MCP's Streamable HTTP transport expects to receive them:

- a response goes to the POST that carried its request;
- a progress notification goes to the POST whose request named its `progressToken`;
- a logging notification and a server-to-client request (sampling, elicitation,
  roots) go to the latest POST still waiting on an event stream, for that is the
  request they most likely serve; with none waiting, to the GET stream;
- everything else (`*/list_changed`, `resources/updated`, ...) goes to the GET stream,
  kept (up to a bound) while no GET stream is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from mcp.client.stdio import StdioServerParameters
from mcp.shared.message import SessionMessage

from agentgw.errors import SERVER_UNAVAILABLE, InvalidRequest, SessionNotFound, UpstreamUnavailable
from agentgw.jsonrpc import Message
from agentgw.upstream.stdio import ChildExited, StdioChild

log = logging.getLogger("agentgw.bridge")

PROGRESS = "notifications/progress"
LOGGING = "notifications/message"
CANCELLED = "notifications/cancelled"
# Notifications a stream holds for a reader slower than the server; past it they are dropped
# (and logged), never a response.
MAILBOX_LIMIT = 1000

RequestId = int | str


class Mailbox:
    """The messages one HTTP stream is to carry, in order."""

    def __init__(self, items: deque[Message] | None = None) -> None:
        self._items: deque[Message] = items if items is not None else deque()
        self._ready = asyncio.Event()
        self.closed = False  # nothing more will be put: the reader takes what is left, then stops
        self.cut = False  # the reader is gone: it stops at once

    def put(self, message: Message) -> None:
        if self.closed:
            return
        if len(self._items) >= MAILBOX_LIMIT and "result" not in message and "error" not in message:
            log.warning("message dropped: the client reads too slowly", extra={"fields": _dropped(message)})
            return
        self._items.append(message)
        self._ready.set()

    async def get(self) -> Message | None:
        """The next message; None once closed and empty, or cut."""
        while not self.cut:
            if self._items:
                return self._items.popleft()
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return None

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    def cut_off(self) -> None:
        self.cut = True
        self._ready.set()

    def hand_over(self) -> Mailbox:
        """A new mailbox holding what this one still holds; this one ends for its reader."""
        successor = Mailbox(self._items)
        self._items = deque()
        self.close()
        self.cut_off()
        return successor


def _dropped(message: Message) -> dict[str, Any]:
    fields = {"level": "warning", "logger": log.name, "event": "message_dropped"}
    return fields | {"method": message.get("method")}


@dataclass(eq=False)
class Call:
    """The requests of one POST, waiting for their responses."""

    ids: set[RequestId]
    events: bool  # answered on an event stream: it may carry the server's notifications and requests too
    tokens: list[Any] = field(default_factory=list)
    mailbox: Mailbox = field(default_factory=Mailbox)


class BridgeSession:
    """An MCP session served by one child process, from `initialize` to its end."""

    def __init__(
        self,
        session_id: str,
        params: StdioServerParameters,
        target: str,
        idle_timeout: float,
        on_gone: Callable[[BridgeSession], None],
        on_idle: Callable[[BridgeSession], None],
    ) -> None:
        self.id = session_id
        self.child = StdioChild(params, target, self._route, self._child_exited)
        self.ended = False
        self._on_gone = on_gone
        self._on_idle = on_idle
        self._idle_timeout = idle_timeout
        self._idle_timer: asyncio.TimerHandle | None = None
        self._in_flight = 0
        self._calls: list[Call] = []
        self._by_id: dict[RequestId, Call] = {}
        self._by_token: dict[Any, Call] = {}
        self._stream = Mailbox()  # the GET stream's, kept while none is open

    async def initialize(self, message: SessionMessage, request_id: RequestId, timeout: float) -> Message:
        """Start the child and hand it the client's `initialize`; its answer, result or error."""
        try:
            await self.child.start()
        except (OSError, ValueError) as exc:
            fields = {"level": "error", "logger": log.name, "event": "start_failed", "target": self.child.target}
            log.error("stdio server cannot be started", extra={"fields": fields | {"error": str(exc)}})
            raise UpstreamUnavailable("The MCP server could not be started") from None
        call = self.open_call([{"id": request_id}], events=False)
        try:
            await self.send([message])
            async with asyncio.timeout(timeout):
                answer = await call.mailbox.get()
        except (TimeoutError, SessionNotFound):
            answer = None
        finally:
            self.close_call(call)
        if answer is None:
            raise UpstreamUnavailable("The MCP server did not answer initialize")
        self._arm_idle_timer()
        return answer

    async def send(self, messages: list[SessionMessage]) -> None:
        try:
            for message in messages:
                await self.child.send(message)
        except ChildExited:
            raise SessionNotFound("Session not found: its MCP server process has ended") from None

    async def end(self) -> None:
        """End the child and every stream of the session; idempotent."""
        self.ended = True
        self._cancel_idle_timer()
        await self.child.stop()
        self._close_streams()

    # -- the client's side ------------------------------------------------------------------

    def open_call(self, requests: list[Message], events: bool) -> Call:
        if self.ended:
            raise SessionNotFound("Session not found: its MCP server process has ended")
        ids: set[RequestId] = {request["id"] for request in requests}
        if len(ids) < len(requests) or any(request_id in self._by_id for request_id in ids):
            raise InvalidRequest("Invalid request: a request with this id is already in flight")
        call = Call(ids, events)
        self._calls.append(call)
        for request_id in ids:
            self._by_id[request_id] = call
        if events:
            for request in requests:
                token = request.get("params", {}).get("_meta", {}).get("progressToken")
                if isinstance(token, (str, int)) and token not in self._by_token:
                    call.tokens.append(token)
                    self._by_token[token] = call
        return call

    def close_call(self, call: Call) -> None:
        """The POST is over: a late response to it is dropped."""
        self._calls.remove(call)
        for request_id in call.ids:
            self._by_id.pop(request_id, None)
        for token in call.tokens:
            self._by_token.pop(token, None)

    def cancel(self, request_id: Any) -> None:
        """The client cancelled a request: a server need not answer it, so its POST stops waiting."""
        call = self._by_id.pop(request_id, None) if isinstance(request_id, (str, int)) else None
        if call is not None:
            call.ids.discard(request_id)
            if not call.ids:
                call.mailbox.close()

    def open_stream(self) -> Mailbox:
        """The GET stream's mailbox; a GET already open ends (the client reconnected)."""
        self._stream = self._stream.hand_over()
        if self.ended:
            self._stream.close()
        return self._stream

    def release_stream(self, mailbox: Mailbox) -> None:
        """A GET stream ended: what it did not carry waits for the next one."""
        if mailbox is self._stream and not self.ended:
            self._stream = mailbox.hand_over()

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        """An HTTP request of this session is being served: the session is not idle."""
        self._in_flight += 1
        self._cancel_idle_timer()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._arm_idle_timer()

    # -- the child's side -------------------------------------------------------------------

    def _route(self, message: Message) -> None:
        if "method" not in message:
            request_id = message.get("id")
            call = self._by_id.pop(request_id, None) if isinstance(request_id, (str, int)) else None
            if call is None:
                return  # its POST is gone (client disconnected, request cancelled)
            call.ids.discard(request_id)
            call.mailbox.put(message)
            if not call.ids:
                call.mailbox.close()
            return
        call = self._call_for(message)
        (call.mailbox if call is not None else self._stream).put(message)

    def _call_for(self, message: Message) -> Call | None:
        method = message["method"]
        if method == PROGRESS:
            token = message.get("params", {}).get("progressToken")
            return self._by_token.get(token) if isinstance(token, (str, int)) else None
        if method == LOGGING or "id" in message:
            return next((call for call in reversed(self._calls) if call.events), None)
        return None

    def _child_exited(self) -> None:
        self.ended = True
        self._cancel_idle_timer()
        self._close_streams()
        self._on_gone(self)

    def _close_streams(self) -> None:
        for call in self._calls:
            call.mailbox.close()
        self._stream.close()

    def _arm_idle_timer(self) -> None:
        self._cancel_idle_timer()
        if not self.ended:
            self._idle_timer = asyncio.get_running_loop().call_later(self._idle_timeout, self._on_idle, self)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None


def unanswered(call: Call) -> list[Message]:
    """Error responses for the requests of `call` that the session ended without answering."""
    error = {"code": SERVER_UNAVAILABLE, "message": "The MCP session ended before the server answered"}
    return [{"jsonrpc": "2.0", "id": request_id, "error": error} for request_id in call.ids]
