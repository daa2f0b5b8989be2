"""The `anthropic` provider: the Messages API, translated to and from the OpenAI shape."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from agentgw.config import LlmProviderConfig
from agentgw.upstream.http import ConnectionPool, UpstreamConnectionError, UpstreamTimeoutError
from agentgw.upstream.llm.openai import post
from agentgw.upstream.llm.provider import ChatChunk, ChatRequest, ChatResponse, ProviderError, content_text
from agentgw.upstream.llm.sse_client import events

DEFAULT_BASE_URL = "https://api.anthropic.com/v1"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024
FINISH_REASON = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


class AnthropicProvider:
    def __init__(self, config: LlmProviderConfig, http: ConnectionPool) -> None:
        self.name = config.name
        self._base = (config.base_url or DEFAULT_BASE_URL).rstrip("/")
        self._timeout = float(config.timeout)
        self._http = http
        key = os.environ.get(config.api_key_env) if config.api_key_env else None
        self._headers = {"content-type": "application/json", "anthropic-version": API_VERSION}
        if key:
            self._headers["x-api-key"] = key

    async def complete(self, request: ChatRequest, model: str) -> ChatResponse:
        response = await post(
            self._http, self._base + "/messages", self._headers, to_messages(request, model), self._timeout
        )
        try:
            answer = json.loads(await response.read(self._timeout))
        except (UpstreamConnectionError, UpstreamTimeoutError, ValueError) as exc:
            raise ProviderError(f"provider broke off: {exc}") from exc
        finally:
            response.release()
        return to_completion(answer, model)

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[ChatChunk]:
        body = {**to_messages(request, model), "stream": True}
        response = await post(self._http, self._base + "/messages", self._headers, body, self._timeout)
        translate = StreamTranslation(model)
        try:
            async for name, event in events(response, self._timeout, until_done=False):
                for chunk in translate(name, event):
                    yield chunk
        finally:
            response.release()
        if not translate.finished:
            raise ProviderError("provider stream ended without message_stop")

    async def models(self) -> list[str]:
        return []


def to_messages(request: ChatRequest, model: str) -> dict[str, Any]:
    """An OpenAI chat request as a Messages API request."""
    system = [
        content_text(m.get("content")) for m in request.get("messages", []) if m.get("role") in ("system", "developer")
    ]
    messages = [
        {"role": m["role"], "content": content_text(m.get("content"))}
        for m in request.get("messages", [])
        if m.get("role") in ("user", "assistant")
    ]
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": request.get("max_completion_tokens") or request.get("max_tokens") or DEFAULT_MAX_TOKENS,
    }
    if system:
        body["system"] = "\n\n".join(system)
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p")):
        if request.get(ours) is not None:
            body[theirs] = request[ours]
    stop = request.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    return body


def to_completion(answer: dict[str, Any], model: str) -> ChatResponse:
    """A Messages API answer as an OpenAI chat.completion."""
    text = "".join(block.get("text", "") for block in answer.get("content", []) if block.get("type") == "text")
    usage = answer.get("usage") or {}
    prompt, completion = int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))
    return {
        "id": str(answer.get("id") or f"chatcmpl-{uuid.uuid4().hex}"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": FINISH_REASON.get(str(answer.get("stop_reason")), "stop"),
            }
        ],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }


class StreamTranslation:
    """Messages API stream events to OpenAI chunks, keeping what later chunks need."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.prompt_tokens = 0
        self.finished = False

    def __call__(self, name: str | None, event: dict[str, Any]) -> list[ChatChunk]:
        kind = event.get("type", name)
        if kind == "message_start":
            message = event.get("message") or {}
            self.id = str(message.get("id") or self.id)
            self.prompt_tokens = int((message.get("usage") or {}).get("input_tokens", 0))
            return [self._chunk({"role": "assistant", "content": ""}, None)]
        if kind == "content_block_delta" and (event.get("delta") or {}).get("type") == "text_delta":
            return [self._chunk({"content": event["delta"].get("text", "")}, None)]
        if kind == "message_delta":
            reason = FINISH_REASON.get(str((event.get("delta") or {}).get("stop_reason")), "stop")
            completion = int((event.get("usage") or {}).get("output_tokens", 0))
            chunk = self._chunk({}, reason)
            chunk["usage"] = {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion,
            }
            return [chunk]
        if kind == "message_stop":
            self.finished = True
            return []
        if kind == "error":
            raise ProviderError(f"provider error: {(event.get('error') or {}).get('message', 'unknown')}")
        return []

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None) -> ChatChunk:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
