"""A minimal OpenAI-compatible chat provider that answers in microseconds, so a benchmark measures the gateway.

`POST /v1/chat/completions` gets one fixed, non-streaming `chat.completion`
(with `usage`, which the gateway counts against token limits); `GET /v1/models`
lists one model. JSON over keep-alive HTTP/1.1, on the raw asyncio protocol of
benchmarks/fast_http.py, like benchmarks/fast_backend.py.

    python benchmarks/fast_chat_stub.py PORT
"""

from __future__ import annotations

import json
import sys

from fast_http import response, serve

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


# Built once: the hot path only finds the end of a request and writes these bytes.
CHAT = response(b"200 OK", json.dumps(COMPLETION, separators=(",", ":")).encode())
LIST = response(b"200 OK", json.dumps(MODELS, separators=(",", ":")).encode())
NOT_FOUND = response(b"404 Not Found", b'{"error":{"message":"not found","type":"invalid_request_error"}}')


def answer(request_line: bytes, body: bytes) -> bytes:
    method, _, rest = request_line.partition(b" ")
    path = rest.partition(b" ")[0].partition(b"?")[0].rstrip(b"/")
    if method == b"POST" and path == b"/v1/chat/completions":
        return CHAT
    if method == b"GET" and path == b"/v1/models":
        return LIST
    return NOT_FOUND


if __name__ == "__main__":
    serve(answer, int(sys.argv[1]))
