"""A minimal OpenAI-compatible chat provider that answers in microseconds, so a benchmark measures the gateway.

`POST /v1/chat/completions` gets one fixed, non-streaming `chat.completion`
(with `usage`, which the gateway counts against token limits); `GET /v1/models`
lists one model. JSON over keep-alive HTTP/1.1, on a raw asyncio protocol like
benchmarks/fast_backend.py: no framework between the socket and the answer.

    python benchmarks/fast_chat_stub.py PORT
"""

from __future__ import annotations

import asyncio
import json
import sys

MODEL = "fast"
COMPLETION = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "42"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 14, "completion_tokens": 1, "total_tokens": 15},
}
MODELS = {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "stub"}]}


def _response(status: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (status, len(body), body)


# Built once: the hot path only finds the end of a request and writes these bytes.
CHAT = _response(b"200 OK", json.dumps(COMPLETION, separators=(",", ":")).encode())
LIST = _response(b"200 OK", json.dumps(MODELS, separators=(",", ":")).encode())
NOT_FOUND = _response(b"404 Not Found", b'{"error":{"message":"not found","type":"invalid_request_error"}}')


def answer(request_line: bytes) -> bytes:
    method, _, rest = request_line.partition(b" ")
    path = rest.partition(b" ")[0].partition(b"?")[0].rstrip(b"/")
    if method == b"POST" and path == b"/v1/chat/completions":
        return CHAT
    if method == b"GET" and path == b"/v1/models":
        return LIST
    return NOT_FOUND


class Http(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end]
            lowered = head.lower()
            length = 0
            position = lowered.find(b"content-length:")
            if position >= 0:
                line_end = lowered.find(b"\r\n", position)
                length = int(lowered[position + 15 : line_end if line_end > 0 else None])
            if len(self.buffer) < head_end + 4 + length:
                return
            self.buffer = self.buffer[head_end + 4 + length :]
            self.transport.write(answer(head.partition(b"\r\n")[0]))  # type: ignore[attr-defined]
            if b"connection: close" in lowered:
                self.transport.close()
                return


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Http, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1])))
