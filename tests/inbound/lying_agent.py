"""Raw loopback servers for the hostile-agent tests: an A2A agent that says what a test scripts, and a sink.

Both run on their own event loop in a thread, bound to port 0, and record every
request (or every connection) they get, so a test can assert what reached them.
The wire is written by hand: the attack is in what the agent sends back.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

CARD_PATHS = ("/.well-known/agent-card.json", "/.well-known/agent.json")
MAX_HEAD = 64 * 1024


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    content_type: str = "application/json"
    body: bytes = b""


Script = Callable[[Received], Reply]


def card(name: str, rpc_url: str) -> dict[str, Any]:
    """A v1 card naming `rpc_url` as its JSON-RPC endpoint."""
    interface = {"url": rpc_url, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
    return {"name": name, "version": "1.0.0", "supportedInterfaces": [interface], "skills": []}


def task(task_id: str, context_id: str) -> dict[str, Any]:
    return {"id": task_id, "contextId": context_id, "status": {"state": "TASK_STATE_COMPLETED"}}


def answer(request: Received, result: Any) -> Reply:
    """A JSON-RPC answer to `request` carrying `result`."""
    body = json.dumps({"jsonrpc": "2.0", "id": request.json()["id"], "result": result}).encode()
    return Reply(body=body)


def honest(request: Received) -> Reply:
    """What an honest agent would say: a new task for a message, the named task for a task method."""
    message = request.json()
    params = message.get("params", {})
    if message["method"] in ("SendMessage", "message/send"):
        return answer(request, {"task": task(uuid.uuid4().hex, uuid.uuid4().hex)})
    task_id = params.get("id") or params.get("taskId") or "none"
    return answer(request, task(task_id, "ctx-of-" + task_id))


class _Loop:
    """One event loop in a daemon thread, shared by every server of a test module."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


@dataclass
class LyingAgent:
    """An HTTP/1.1 A2A agent: serves `card_body` and answers each POST with `script(request)`."""

    name: str
    script: Script = honest
    card_body: bytes | None = None  # None: a card naming this server itself
    received: list[Received] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def posts(self) -> list[Received]:
        return [r for r in self.received if r.method == "POST"]

    async def serve(self) -> asyncio.Server:
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (request := await _read_request(reader)) is not None:
                self.received.append(request)
                reply = self._reply(request)
                head = f"HTTP/1.1 {reply.status} X\r\nContent-Type: {reply.content_type}\r\n"
                head += f"Content-Length: {len(reply.body)}\r\n\r\n"
                writer.write(head.encode() + reply.body)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def _reply(self, request: Received) -> Reply:
        if request.method == "GET" and request.path in CARD_PATHS:
            body = self.card_body if self.card_body is not None else json.dumps(card(self.name, self.url)).encode()
            return Reply(body=body)
        if request.method == "POST":
            return self.script(request)
        return Reply(404, "text/plain", b"no")


async def _read_request(reader: asyncio.StreamReader) -> Received | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    request_line, *lines = head[:MAX_HEAD].decode("latin-1").split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Received(method, path, headers, body)


@dataclass
class Sink:
    """A TCP listener that records every connection and every byte: a webhook or a card's decoy target."""

    connections: int = 0
    data: bytearray = field(default_factory=bytearray)
    port: int = 0

    async def serve(self) -> asyncio.Server:
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while chunk := await reader.read(65536):
                self.data += chunk
                if b"\r\n\r\n" in self.data and self.data.startswith((b"POST", b"GET")):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


class Servers:
    """The lying agents and sinks of one test module, on one loop thread."""

    def __init__(self) -> None:
        self._loop = _Loop()
        self._servers: list[asyncio.Server] = []

    def agent(self, name: str, script: Script = honest) -> LyingAgent:
        agent = LyingAgent(name, script)
        self._servers.append(self._loop.run(agent.serve()))
        return agent

    def sink(self) -> Sink:
        sink = Sink()
        self._servers.append(self._loop.run(sink.serve()))
        return sink

    def close(self) -> None:
        async def close_all() -> None:
            for server in self._servers:
                server.close()

        self._loop.run(close_all())
        self._loop.stop()
