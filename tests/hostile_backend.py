"""A raw asyncio MCP backend whose wire the test writes byte by byte: for attacks a well-behaved SDK cannot make.

It speaks just enough HTTP/1.1 (keep-alive, Content-Length bodies) and MCP
(`initialize` opens a session, `notifications/initialized` is accepted) for the
gateway to use it; every other answer comes from the test's `answers`, keyed by
JSON-RPC method. Everything received is recorded, so a test can assert what
reached the backend.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

# (request message) -> the raw bytes written back: head and body, exactly as the test wants them.
# An answer that is a coroutine may write in pieces itself (see `trickle`); CLOSE after it ends the connection.
Answer = Callable[[dict[str, Any]], bytes | Awaitable[bytes]]
CLOSE = b"<close>"
SESSION = "backend-session-1"


def http(status: int, body: bytes, content_type: str = "application/json", *headers: str) -> bytes:
    """A response with a Content-Length body; `headers` are extra `Name: value` lines."""
    lines = [f"HTTP/1.1 {status} X", f"Content-Type: {content_type}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def json_answer(request: dict[str, Any], result: dict[str, Any], *headers: str) -> bytes:
    body = json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}).encode()
    return http(200, body, "application/json", *headers)


def sse_answer(
    request: dict[str, Any], result: dict[str, Any], line_end: str = "\n", media: str = "text/event-stream"
) -> bytes:
    data = json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result})
    body = f"event: message{line_end}data: {data}{line_end}{line_end}".encode()
    return http(200, body, media)


def initialize_result(instructions: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "protocolVersion": "2025-11-25",
        "capabilities": {"tools": {}, "prompts": {}, "resources": {}},
        "serverInfo": {"name": "hostile", "version": "1"},
    }
    if instructions is not None:
        result["instructions"] = instructions
    return result


@dataclass
class HostileBackend:
    answers: dict[str, Answer] = field(default_factory=dict)
    received: list[dict[str, Any]] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    writer: asyncio.StreamWriter | None = None  # the connection an answer is being written to
    _server: asyncio.Server | None = None
    _open: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def methods(self) -> list[str]:
        return [m.get("method", "") for m in self.received]

    async def start(self) -> HostileBackend:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in self._open:
                writer.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._open.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, headers = _parse_head(head)
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                answer = await self._answer(method, body, writer)
                writer.write(answer.removesuffix(CLOSE))
                await writer.drain()
                if answer.endswith(CLOSE):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._open.discard(writer)
            writer.close()

    async def _answer(self, http_method: str, body: bytes, writer: asyncio.StreamWriter) -> bytes:
        if http_method == "GET":
            return http(405, b"")
        if http_method == "DELETE":
            self.received.append({"method": "DELETE"})
            return http(200, b"")
        message = json.loads(body)
        self.received.append(message)
        method = message.get("method", "")
        answer = self.answers.get(method)
        if answer is not None:
            self.writer = writer
            produced = answer(message)
            return produced if isinstance(produced, bytes) else await produced
        if method == "initialize":
            return json_answer(message, initialize_result(), f"Mcp-Session-Id: {SESSION}")
        if "id" not in message:
            return http(202, b"")
        error = {"jsonrpc": "2.0", "id": message["id"], "error": {"code": -32601, "message": "Method not found"}}
        return http(200, json.dumps(error).encode())


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return lines[0].split(" ")[0], headers
