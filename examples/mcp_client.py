"""Talk to an MCP server through agentgw with the MCP Python SDK client.

.venv/bin/python examples/mcp_client.py [URL]
"""

from __future__ import annotations

import asyncio
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import TextContent


async def main(url: str) -> None:
    async with httpx2.AsyncClient() as http:
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
