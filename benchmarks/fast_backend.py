"""A minimal MCP backend that answers in microseconds, so a benchmark measures the gateway.

It speaks just enough Streamable HTTP for `initialize`, `notifications/*`,
`tools/list` and `tools/call`, with JSON responses over keep-alive HTTP/1.1.

    python benchmarks/fast_backend.py PORT
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys

ADD_SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
}
TOOLS = {"tools": [{"name": "add", "description": "Add two integers", "inputSchema": ADD_SCHEMA}]}


def answer(body: bytes) -> tuple[int, bytes, bytes]:
    """(status, extra headers, body) for one JSON-RPC message."""
    message = json.loads(body)
    method = message.get("method")
    if "id" not in message:
        return 202, b"", b""
    if method == "initialize":
        result = {
            "protocolVersion": message["params"].get("protocolVersion", "2025-11-25"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "fast", "version": "1"},
        }
        session = b"mcp-session-id: " + secrets.token_hex(16).encode() + b"\r\n"
        return 200, session, json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}).encode()
    if method == "tools/list":
        result = TOOLS
    else:
        result = {"content": [{"type": "text", "text": "42"}], "isError": False}
    return 200, b"", json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}).encode()


class Http(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].lower()
            length = 0
            position = head.find(b"content-length:")
            if position >= 0:
                length = int(
                    head[position + 15 : head.find(b"\r\n", position) if head.find(b"\r\n", position) > 0 else None]
                )
            if len(self.buffer) < head_end + 4 + length:
                return
            body = self.buffer[head_end + 4 : head_end + 4 + length]
            self.buffer = self.buffer[head_end + 4 + length :]
            if head.startswith(b"post"):
                status, extra, payload = answer(body)
            else:
                status, extra, payload = 405, b"", b""
            reason = {200: b"OK", 202: b"Accepted", 405: b"Method Not Allowed"}[status]
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n%scontent-length: %d\r\n\r\n%s"
                % (status, reason, extra, len(payload), payload)
            )
            if b"connection: close" in head:
                self.transport.close()
                return


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Http, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1])))
