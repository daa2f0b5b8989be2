"""A stand-in LLM provider on loopback, speaking both the OpenAI and the Anthropic API.

    python tests/stub_upstream.py PORT [MODE...]

Modes (also replaceable at run time with `POST /_modes {"modes": [...]}`):
  name=X      the label in every answer ("X says <last user message>"); default "stub"
  status=N    answer every chat request with HTTP N and an error body
  failfirst=N answer the next N chat requests with HTTP `status` (default 503), then normally
  delay=S     wait S seconds before answering a chat request
  cut=N       on a stream, send N events then drop the connection without ending the body
  stall=N     on a stream, send N events then go silent with the connection open
  end=N       on a stream, send N events then end the body cleanly (no `[DONE]`, no `message_stop`)
  models=a,b  what GET /v1/models lists; default "x,y"

Every request outside `/_...` is recorded (method, path, lower-cased headers, JSON body)
and listed by `GET /_requests`; `GET /_streams` counts the streams being sent.
`POST /_script {"message": {...}, "events": [[name, data], ...]}` makes `/v1/messages`
answer exactly that message, or stream exactly those events; `"chunks": [...]` makes a
streamed `/v1/chat/completions` send exactly those `data:` payloads, then `[DONE]`
(`"raw_events": ["data: ...\n\n", ...]`: exactly those bytes, `[DONE]` included), and
`"completion": {...}` a plain one answer exactly that. `"line_end": "\r"` (or `"\r\n"`)
ends the lines of scripted streams that way.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


class ConnectionDropped(Exception):
    """Raised inside a streaming body: uvicorn then closes the socket mid-response, as a crashing provider would."""


class Stub:
    def __init__(self, modes: list[str]) -> None:
        self.requests: list[dict[str, Any]] = []
        self.open_streams = 0  # streams being sent right now (GET /_streams)
        self.script: dict[str, Any] = {}
        self.set_modes(modes)

    def set_modes(self, modes: list[str]) -> None:
        options = dict(mode.partition("=")[::2] for mode in modes)
        self.name = options.get("name", "stub")
        self.status = int(options["status"]) if "status" in options else None
        self.fail_first = int(options.get("failfirst", 0))
        if self.fail_first and self.status is None:
            self.status = 503
        self.delay = float(options.get("delay", 0))
        self.cut = int(options["cut"]) if "cut" in options else None
        self.stall = int(options["stall"]) if "stall" in options else None
        self.end = int(options["end"]) if "end" in options else None
        self.models = [m for m in options.get("models", "x,y").split(",") if m]

    async def record(self, request: Request) -> dict[str, Any] | None:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self.requests.append(
            {
                "method": request.method,
                "path": request.url.path,
                "at": time.time(),
                "headers": {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers.raw},
                "body": body,
            }
        )
        return body if isinstance(body, dict) else None

    async def misbehave(self) -> Response | None:
        """The configured delay, then the configured error status, if any."""
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status is not None:
            if self.fail_first:
                self.fail_first -= 1
                if not self.fail_first:
                    self.status = None  # this answer is the last failure
            error = {"error": {"message": f"{self.name} fails on purpose", "type": "server_error", "code": None}}
            return JSONResponse(error, status_code=self.status)
        return None

    def reply(self, body: dict[str, Any]) -> str:
        users = [m for m in body.get("messages", []) if isinstance(m, dict) and m.get("role") == "user"]
        content = users[-1].get("content", "") if users else ""
        if isinstance(content, list):
            content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        return f"{self.name} says {content}".strip()

    def stream(self, events: list[bytes]) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            self.open_streams += 1
            try:
                for sent, event in enumerate(events):
                    if self.cut is not None and sent == self.cut:
                        raise ConnectionDropped(f"{self.name} drops the connection after {sent} events")
                    if self.stall is not None and sent == self.stall:
                        await asyncio.sleep(3600)
                    if self.end is not None and sent == self.end:
                        return
                    yield event
            finally:
                self.open_streams -= 1

        return StreamingResponse(body(), media_type="text/event-stream", headers={"cache-control": "no-cache"})

    # -- OpenAI ------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        body = await self.record(request) or {}
        failure = await self.misbehave()
        if failure is not None:
            return failure
        if body.get("stream") and self.script.get("raw_events") is not None:
            return self.stream([event.encode() for event in self.script["raw_events"]])
        if body.get("stream") and self.script.get("chunks") is not None:
            return self.stream(self.data_events([*self.script["chunks"], "[DONE]"]))
        if not body.get("stream") and self.script.get("completion") is not None:
            return JSONResponse(self.script["completion"])
        model = body.get("model", "")
        words = self.reply(body).split(" ")
        usage = {"prompt_tokens": 3, "completion_tokens": len(words), "total_tokens": 3 + len(words)}
        if not body.get("stream"):
            message = {"role": "assistant", "content": " ".join(words)}
            return JSONResponse(
                {
                    "id": f"chatcmpl-{self.name}",
                    "object": "chat.completion",
                    "created": 1700000000,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": usage,
                }
            )
        base = {"id": f"chatcmpl-{self.name}", "object": "chat.completion.chunk", "created": 1700000000, "model": model}
        chunks = []
        for index, word in enumerate(words):
            delta = {"role": "assistant", "content": word} if index == 0 else {"content": " " + word}
            chunks.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage})
        events = [b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in chunks]
        return self.stream([*events, b"data: [DONE]\n\n"])

    def data_events(self, payloads: list[Any]) -> list[bytes]:
        end = self.script.get("line_end") or "\n"
        return [f"data: {p if p == '[DONE]' else json.dumps(p)}{end}{end}".encode() for p in payloads]

    async def list_models(self, request: Request) -> Response:
        await self.record(request)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": self.name} for m in self.models]
        return JSONResponse({"object": "list", "data": data})

    # -- Anthropic ---------------------------------------------------------------

    async def messages(self, request: Request) -> Response:
        body = await self.record(request) or {}
        failure = await self.misbehave()
        if failure is not None:
            return failure
        if not body.get("stream"):
            return JSONResponse(self.script.get("message") or self._message(body))
        events = self.script.get("events") or self._events(body)
        end = self.script.get("line_end") or "\n"
        return self.stream([f"event: {name}{end}data: {json.dumps(data)}{end}{end}".encode() for name, data in events])

    def _message(self, body: dict[str, Any]) -> dict[str, Any]:
        text = self.reply(body)
        return {
            "id": f"msg_{self.name}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", ""),
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": len(text.split())},
        }

    def _events(self, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        message = self._message(body)
        words = message["content"][0]["text"].split(" ")
        start = {**message, "content": [], "stop_reason": None, "usage": {"input_tokens": 3, "output_tokens": 1}}
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": start}),
            (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            ),
        ]
        for index, word in enumerate(words):
            delta = {"type": "text_delta", "text": word if index == 0 else " " + word}
            events.append(("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}))
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": len(words)},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        return events

    # -- control -----------------------------------------------------------------

    async def list_requests(self, request: Request) -> Response:
        return JSONResponse(self.requests)

    async def streams(self, request: Request) -> Response:
        return JSONResponse({"open": self.open_streams})

    async def replace_modes(self, request: Request) -> Response:
        self.set_modes((await request.json())["modes"])
        return JSONResponse({"ok": True})

    async def replace_script(self, request: Request) -> Response:
        self.script = await request.json()
        return JSONResponse({"ok": True})


def create_app(stub: Stub) -> Starlette:
    return Starlette(
        routes=[
            Route("/v1/chat/completions", stub.chat_completions, methods=["POST"]),
            Route("/v1/models", stub.list_models, methods=["GET"]),
            Route("/v1/messages", stub.messages, methods=["POST"]),
            Route("/_requests", stub.list_requests, methods=["GET"]),
            Route("/_streams", stub.streams, methods=["GET"]),
            Route("/_modes", stub.replace_modes, methods=["POST"]),
            Route("/_script", stub.replace_script, methods=["POST"]),
        ]
    )


def server(modes: list[str], port: int = 0) -> uvicorn.Server:
    """The stub on loopback `port` (0: one the kernel picks), ready to serve."""
    config = uvicorn.Config(
        create_app(Stub(modes)),
        host="127.0.0.1",
        port=port,
        log_config=None,  # served inside a test process too, whose logging it leaves alone
        log_level="warning",
        http="httptools",
        timeout_graceful_shutdown=1,  # a stalled or delayed answer must not hold up the test's teardown
    )
    return uvicorn.Server(config)


def main() -> None:
    port, *modes = sys.argv[1:]
    server(modes, int(port)).run()


if __name__ == "__main__":
    main()
