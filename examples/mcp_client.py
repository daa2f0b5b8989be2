"""Talk to an MCP server through agentgw with the MCP Python SDK client.

export AGENTGW_TOKEN=...   # the dev token `make run` prints
.venv/bin/python examples/mcp_client.py [URL]
"""

from __future__ import annotations

import asyncio
import os
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import TextContent


async def main(url: str) -> None:
    token = os.environ.get("AGENTGW_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers) as http:
        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
            tools = await client.list_tools()
            print("tools:", ", ".join(tool.name for tool in tools.tools))
            for name, arguments in [
                ("add", {"a": 20, "b": 22}),
                ("search_documents", {"query": "redis"}),
                ("whoami", {}),
            ]:
                result = await client.call_tool(name, arguments)
                text = result.content[0].text if isinstance(result.content[0], TextContent) else result.content[0]
                print(f"{name}{arguments} -> {text}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080/mcp/v1"))
