"""Backend responses back to the client: JSON whole, event streams event by event.

A response the gateway must change (a `tools/list` trimmed to what the caller
may call) is read whole, rewritten message by message, and sent as one body.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import Receive, Send

from agentgw import sse
from agentgw.errors import UpstreamUnavailable
from agentgw.upstream.http import UpstreamConnectionError, UpstreamResponse, UpstreamTimeoutError

# Backend response headers never relayed: hop-by-hop, recomputed, or the backend's session id.
NOT_RELAYED = frozenset(
    name.encode()
    for name in (
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "date",
        "server",
        "mcp-session-id",
        "x-mcp-session-id",
    )
)

Rewrite = Callable[[Any], Awaitable[Any]]
Tap = Callable[[bytes], Awaitable[None]]


def _head(response: UpstreamResponse, extra_headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    headers = [(name.lower(), value) for name, value in response.raw_headers if name.lower() not in NOT_RELAYED]
    return headers + [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra_headers]


def is_event_stream(response: UpstreamResponse) -> bool:
    return (response.header("content-type") or "").startswith("text/event-stream")


async def relay(
    response: UpstreamResponse,
    extra_headers: list[tuple[str, str]],
    receive: Receive,
    send: Send,
    timeout: float,
    tap: Tap | None = None,
) -> None:
    """Relay a backend response: JSON whole, an event stream event by event as it arrives.

    `tap` sees every chunk of an event stream just before the client gets it.
    """
    headers = _head(response, extra_headers)
    if not is_event_stream(response):
        body = await read_body(response, timeout)
        await _send_whole(send, response.status, headers, body)
        return
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    events = asyncio.ensure_future(_relay_events(response, send, tap))
    disconnect = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait((events, disconnect), return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnect.cancel()
        events.cancel()
        await asyncio.gather(events, disconnect, return_exceptions=True)
    await send({"type": "http.response.body", "body": b""})


async def relay_rewritten(
    response: UpstreamResponse,
    extra_headers: list[tuple[str, str]],
    send: Send,
    timeout: float,
    rewrite: Rewrite,
) -> None:
    """Read a response whole, pass each JSON-RPC message through `rewrite`, send the result."""
    headers = _head(response, extra_headers)
    body = await read_body(response, timeout)
    if response.status == 200:
        if is_event_stream(response):
            body = await _rewrite_events(body, rewrite)
        else:
            try:
                message = json.loads(body)
            except ValueError:
                message = None  # not ours to fix: relayed as the backend sent it
            if message is not None:
                body = _dump(await rewrite(message))
    await _send_whole(send, response.status, headers, body)


async def read_body(response: UpstreamResponse, timeout: float) -> bytes:
    try:
        return await response.read(timeout)
    except (UpstreamConnectionError, UpstreamTimeoutError) as exc:
        raise UpstreamUnavailable("Backend failed while answering") from exc


async def _send_whole(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _rewrite_events(body: bytes, rewrite: Rewrite) -> bytes:
    out = []
    for lines, message in sse.events(body):
        if message is None:
            out.append(b"\n".join(lines))
            continue
        others = [line for line in lines if not line.startswith(b"data:")]
        out.append(b"\n".join([*others, b"data: " + _dump(await rewrite(message))]))
    return b"\n\n".join(out) + b"\n\n"


def _dump(message: Any) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()


async def _relay_events(response: UpstreamResponse, send: Send, tap: Tap | None) -> None:
    try:
        # No read timeout: an event stream may rightly stay quiet for a long time.
        async for chunk in response.chunks(None):
            if tap is not None:
                await tap(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except UpstreamConnectionError:
        pass  # the backend went away mid-stream; the client sees the stream end


async def wait_for_disconnect(receive: Receive) -> None:
    """Return once the client has gone away (its request body already read)."""
    while (await receive())["type"] != "http.disconnect":
        pass
