"""Talk to an MCP server through agentgw with the MCP Python SDK client.

export AGENTGW_TOKEN=...   # the dev token `make run` prints
.venv/bin/python examples/mcp_client.py [MCP_URL]

MCP_URL defaults to $AGENTGW_URL/mcp/v1 (AGENTGW_URL: http://127.0.0.1:8080);
name a target with e.g. http://127.0.0.1:8080/mcp/v1/docs. A call the gateway
refuses is printed with its JSON-RPC error, and the client carries on.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import httpx2  # the MCP SDK's HTTP client is httpx2, not httpx
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.types import TextContent

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
NO_TOKEN = "AGENTGW_TOKEN is not set: the gateway will answer 401 (export the dev token `make run` printed)"
# By the tool's own name: on a virtual server (/mcp/v1/workspace) the listed name that ends with it.
# These are called even when not listed, so that a refusal shows; the stdio server's only when listed.
CALLS = [
    ("add", {"a": 20, "b": 22}),
    ("search_documents", {"query": "redis"}),
    ("whoami", {}),
]
WHEN_LISTED = [("echo", {"text": "through a stdio server"})]


async def main(url: str) -> None:
    token = os.environ.get("AGENTGW_TOKEN")
    if not token:
        print(NO_TOKEN, file=sys.stderr)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        # legacy mode: the stateful revision, an initialize handshake and a gateway session id.
        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
            server = client.server_info
            print(f"initialized: {server.name if server else '?'} (protocol {client.protocol_version}) at {url}")
            tools = await client.list_tools()
            listed = [tool.name for tool in tools.tools]
            print("tools:", ", ".join(listed))
            calls = [(_listed_as(listed, wanted) or wanted, arguments) for wanted, arguments in CALLS]
            calls += [(name, arguments) for wanted, arguments in WHEN_LISTED if (name := _listed_as(listed, wanted))]
            for name, arguments in calls:
                try:
                    result = await client.call_tool(name, arguments)
                except MCPError as exc:
                    print(f"{name}{arguments} -> refused: error {exc.code}: {exc.message} {json.dumps(exc.data)}")
                    continue
                first = result.content[0]
                print(f"{name}{arguments} -> {first.text if isinstance(first, TextContent) else first}")


def _listed_as(listed: list[str], wanted: str) -> str | None:
    """The listed name of a tool: its own, or on a virtual server its own under a member's prefix."""
    return next((name for name in listed if name == wanted or name.endswith("__" + wanted)), None)


if __name__ == "__main__":
    gateway = os.environ.get("AGENTGW_URL", DEFAULT_GATEWAY).rstrip("/")
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else f"{gateway}/mcp/v1"))
