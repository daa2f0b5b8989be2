"""mcp 1.x's `websocket_client`, carried over to the mcp 2.x stream types for the tests.

The 1.x transport is: connect with subprotocol `mcp`, send each message as
one text frame (`model_dump_json(by_alias=True, exclude_none=True)`), read
each text frame as one message. mcp 2.x dropped it; this keeps the same
wire behaviour so the real SDK `ClientSession` can talk to the gateway's
WebSocket transport. `headers` is the one addition (1.x could not set any).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp import types
from mcp.shared.message import SessionMessage
from websockets.asyncio.client import connect


@asynccontextmanager
async def websocket_client(url: str, headers: dict[str, str] | None = None) -> AsyncIterator[tuple[Any, Any]]:
    read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)

    async with connect(url, subprotocols=["mcp"], additional_headers=headers) as ws:  # type: ignore[list-item]

        async def ws_reader() -> None:
            async with read_writer:
                async for frame in ws:
                    try:
                        message = types.jsonrpc_message_adapter.validate_json(frame, by_name=False)
                    except ValueError as exc:
                        await read_writer.send(exc)
                        continue
                    await read_writer.send(SessionMessage(message))

        async def ws_writer() -> None:
            async with write_reader:
                async for session_message in write_reader:
                    await ws.send(session_message.message.model_dump_json(by_alias=True, exclude_none=True))

        async with anyio.create_task_group() as tg:
            tg.start_soon(ws_reader)
            tg.start_soon(ws_writer)
            yield read_stream, write_stream
            tg.cancel_scope.cancel()
