"""A minimal OpenAI-compatible chat provider that answers in microseconds, so a benchmark measures the gateway.

`POST /v1/chat/completions` gets one fixed, non-streaming `chat.completion`
(with `usage`, which the gateway counts against token limits); `GET /v1/models`
lists one model. JSON over keep-alive HTTP/1.1, on the raw asyncio protocol of
benchmarks/fast_http.py, like benchmarks/fast_backend.py.

A request with `"stream": true` gets a fixed event stream instead, as OpenAI
sends one: the role, STREAM_CHUNKS chunks of a few characters each (about 1.3 KB
of prose, with no secret in it), the finish with the usage, then `[DONE]`.

    python benchmarks/fast_chat_stub.py PORT
"""

from __future__ import annotations

import json
import re
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

STREAM_CHUNKS = 256
_ANSWER_WORDS = (
    "The export job stalled on a schema change, so the March close ran two days late; the team re-ran it by "
    "hand and added a check that stops it before it writes when a column is missing. The variance against the "
    "forecast was 1.8%, inside the bound the board asked for, and the figures were signed off on the 4th."
).split(" ")
# A token or so per chunk, as a model streams: words in turn, each with its space.
STREAMED_PIECES = [_ANSWER_WORDS[n % len(_ANSWER_WORDS)] + " " for n in range(STREAM_CHUNKS)]
STREAMED_TEXT = "".join(STREAMED_PIECES)
_CHUNK_BASE = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL}


# Built once: the hot path only finds the end of a request and writes these bytes.
CHAT = response(b"200 OK", json.dumps(COMPLETION, separators=(",", ":")).encode())
LIST = response(b"200 OK", json.dumps(MODELS, separators=(",", ":")).encode())
NOT_FOUND = response(b"404 Not Found", b'{"error":{"message":"not found","type":"invalid_request_error"}}')
# Only a body that names `stream` is parsed: the non-streaming answer stays a plain write.
STREAM_FIELD = b'"stream"'
STREAM_ON = re.compile(rb'"stream"\s*:\s*true')


def _chunk(delta: dict[str, str], finish_reason: str | None = None, **extra: object) -> dict[str, object]:
    return {**_CHUNK_BASE, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}


def _stream() -> bytes:
    usage = {"prompt_tokens": 14, "completion_tokens": STREAM_CHUNKS, "total_tokens": 14 + STREAM_CHUNKS}
    chunks = [
        _chunk({"role": "assistant", "content": ""}),
        *(_chunk({"content": piece}) for piece in STREAMED_PIECES),
        _chunk({}, "stop", usage=usage),
    ]
    events = b"".join(b"data: " + json.dumps(c, separators=(",", ":")).encode() + b"\n\n" for c in chunks)
    body = events + b"data: [DONE]\n\n"
    # Sent whole, with a length: the gateway reads it as a provider's stream all the same.
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


STREAM = _stream()


def answer(request_line: bytes, body: bytes) -> bytes:
    method, _, rest = request_line.partition(b" ")
    path = rest.partition(b" ")[0].partition(b"?")[0].rstrip(b"/")
    if method == b"POST" and path == b"/v1/chat/completions":
        return STREAM if STREAM_FIELD in body and STREAM_ON.search(body) else CHAT
    if method == b"GET" and path == b"/v1/models":
        return LIST
    return NOT_FOUND


if __name__ == "__main__":
    serve(answer, int(sys.argv[1]))
