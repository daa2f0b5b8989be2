"""A minimal MCP backend that answers in microseconds, so a benchmark measures the gateway.

It speaks just enough Streamable HTTP for `initialize`, `notifications/*`,
`tools/list` and `tools/call`, with JSON responses over keep-alive HTTP/1.1 on the
raw asyncio protocol of benchmarks/fast_http.py.

    python benchmarks/fast_backend.py PORT
"""

from __future__ import annotations

import json
import secrets
import sys

from fast_http import response, serve

ADD_SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
}
TOOLS = {"tools": [{"name": "add", "description": "Add two integers", "inputSchema": ADD_SCHEMA}]}

ACCEPTED = response(b"202 Accepted", b"")
METHOD_NOT_ALLOWED = response(b"405 Method Not Allowed", b"")


def answer(request_line: bytes, body: bytes) -> bytes:
    """The response to one request: a JSON-RPC message is POSTed, anything else is refused."""
    if request_line[:4].lower() != b"post":
        return METHOD_NOT_ALLOWED
    message = json.loads(body)
    method = message.get("method")
    if "id" not in message:
        return ACCEPTED
    result: object
    headers = b""
    if method == "initialize":
        result = {
            "protocolVersion": message["params"].get("protocolVersion", "2025-11-25"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "fast", "version": "1"},
        }
        headers = b"mcp-session-id: " + secrets.token_hex(16).encode() + b"\r\n"
    elif method == "tools/list":
        result = TOOLS
    else:
        result = {"content": [{"type": "text", "text": "42"}], "isError": False}
    return response(b"200 OK", json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}).encode(), headers)


if __name__ == "__main__":
    serve(answer, int(sys.argv[1]))
