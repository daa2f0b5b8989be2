"""Keep-alive HTTP/1.1 on a raw asyncio protocol for the benchmark stubs: no framework between socket and answer.

It understands only what wrk and the gateway send: a request head and a body of
`content-length` bytes (no chunked bodies), one request after another or
pipelined. A stub gives a handler that turns (request line, body) into the
whole response, and calls `serve`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

Handler = Callable[[bytes, bytes], bytes]
CONTENT_LENGTH = b"content-length:"


def response(status: bytes, body: bytes, headers: bytes = b"") -> bytes:
    """A JSON response; `headers` are more header lines, each ending in CRLF."""
    return b"HTTP/1.1 %s\r\ncontent-type: application/json\r\n%scontent-length: %d\r\n\r\n%s" % (
        status,
        headers,
        len(body),
        body,
    )


class Http(asyncio.Protocol):
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end]
            lowered = head.lower()
            length = 0
            position = lowered.find(CONTENT_LENGTH)
            if position >= 0:
                line_end = lowered.find(b"\r\n", position)
                length = int(lowered[position + len(CONTENT_LENGTH) : line_end if line_end > 0 else None])
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            body = self.buffer[head_end + 4 : end]
            self.buffer = self.buffer[end:]
            self.transport.write(self.handler(head.partition(b"\r\n")[0], body))
            if b"connection: close" in lowered:
                self.transport.close()
                return


def serve(handler: Handler, port: int) -> None:
    """Answer on 127.0.0.1:`port` with `handler` until killed, on uvloop when it is installed."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve(handler, port))


async def _serve(handler: Handler, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(lambda: Http(handler), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()
