"""Run by the tests with mcp 1.x (its own environment): mcp's own `websocket_client` against the gateway.

    python tests/inbound/mcp1_websocket_client.py WS_URL TOOL ARGUMENTS_JSON DENIED_TOOL

Prints one JSON line: the server's name and protocol version, the tools
listed, the text of the call, and the JSON-RPC error code of the denied call.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from mcp import ClientSession
from mcp.client.websocket import websocket_client
from mcp.shared.exceptions import McpError


async def main(url: str, tool: str, arguments: dict[str, Any], denied: str) -> None:
    async with websocket_client(url) as (read, write), ClientSession(read, write) as session:
        initialized = await session.initialize()
        listed = await session.list_tools()
        called = await session.call_tool(tool, arguments)
        try:
            await session.call_tool(denied, {})
            denied_code = None
        except McpError as exc:
            denied_code = exc.error.code
    print(
        json.dumps(
            {
                "server": initialized.serverInfo.name,
                "protocol": initialized.protocolVersion,
                "tools": [t.name for t in listed.tools],
                "result": called.content[0].text if called.content else None,
                "denied": denied_code,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]))
