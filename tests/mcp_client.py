"""The real MCP SDK client, pointed at a gateway."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx2
from mcp import Client, types
from mcp.client.streamable_http import streamable_http_client


@contextlib.asynccontextmanager
async def sdk_client(
    url: str,
    mode: str = "legacy",
    seen: list[httpx2.Response] | None = None,
    headers: dict[str, str] | None = None,
    **callbacks: Any,
) -> AsyncIterator[Client]:
    """A connected SDK client sending `headers` on every request; every HTTP response it gets is
    appended to `seen`."""

    async def record(response: httpx2.Response) -> None:
        if seen is not None:
            seen.append(response)

    # verify=False: plain HTTP on loopback, so no CA bundle to load (60 ms a client otherwise).
    hooks = {"response": [record]}
    async with httpx2.AsyncClient(event_hooks=hooks, headers=headers, timeout=30, verify=False) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode, **callbacks) as client:
            yield client


async def call_text(client: Client, tool: str, arguments: dict[str, Any] | None = None) -> str:
    result = await client.call_tool(tool, arguments or {})
    assert not result.is_error, result
    content = result.content[0]
    assert isinstance(content, types.TextContent)
    return content.text
