"""A real HTTP MCP-shaped backend that records every request it receives.

It lets tests see what the gateway forwards: headers, the exact body bytes,
which session id arrives. `GET /_records` returns them as JSON.

    python tests/recording_backend.py PORT
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

records: list[dict[str, object]] = []
session_numbers = itertools.count(1)


async def mcp(request: Request) -> Response:
    body = await request.body()
    records.append(
        {"method": request.method, "headers": dict(request.headers), "body": body.decode("utf-8", "replace")}
    )
    if request.method == "GET":
        return StreamingResponse(_events([("first", 0)]), media_type="text/event-stream")
    if request.method == "DELETE":
        return Response(status_code=200)
    message = json.loads(body)
    if "id" not in message:
        return Response(status_code=202)
    if message["method"] == "initialize":
        result = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "serverInfo": {"name": "recorder", "version": "1"},
        }
        headers = {"mcp-session-id": f"backend-session-{next(session_numbers)}"}
        return JSONResponse({"jsonrpc": "2.0", "id": message["id"], "result": result}, headers=headers)
    if message["method"] == "tools/list":
        # The gateway calls only tools it has seen listed (contract 11).
        tools = [{"name": "add", "inputSchema": {"type": "object"}}]
        return JSONResponse({"jsonrpc": "2.0", "id": message["id"], "result": {"tools": tools}})
    if message["method"] == "slow/stream":
        # Two events with a pause between them: a buffering proxy would deliver both at once.
        steps = [("first", 0.0), ("second", float(message["params"]["pause"]))]
        return StreamingResponse(_events(steps, message["id"]), media_type="text/event-stream")
    return JSONResponse({"jsonrpc": "2.0", "id": message["id"], "result": {"echo": message}})


async def _events(steps: list[tuple[str, float]], request_id: object = None) -> AsyncIterator[bytes]:
    for index, (text, pause) in enumerate(steps):
        await asyncio.sleep(pause)
        if request_id is not None and index == len(steps) - 1:
            message = {"jsonrpc": "2.0", "id": request_id, "result": {"text": text}}
        else:
            message = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": text}}
        yield f"id: {index}\nevent: message\ndata: {json.dumps(message)}\n\n".encode()


async def recorded(request: Request) -> JSONResponse:
    return JSONResponse(records)


app = Starlette(routes=[Route("/mcp", mcp, methods=["GET", "POST", "DELETE"]), Route("/_records", recorded)])

if __name__ == "__main__":
    # Info level for uvicorn's "running on" line, which tells a test the port 0 became.
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="info", access_log=False)
