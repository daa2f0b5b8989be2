"""The `anthropic` provider: the Messages API, translated to and from the OpenAI shape."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from agentgw.config import LlmProviderConfig
from agentgw.upstream.http import ConnectionPool
from agentgw.upstream.llm.chat_fields import (
    InvalidChatRequest,
    check_tool_choice,
    check_tools,
    message_role,
    message_text,
    optional_int,
    optional_number,
    optional_string,
    stop_sequences,
)
from agentgw.upstream.llm.openai import post, read_json
from agentgw.upstream.llm.provider import (
    BadProviderAnswer,
    ChatChunk,
    ChatRequest,
    ChatResponse,
    ProviderError,
    ProviderUnreachable,
    token_count,
)
from agentgw.upstream.llm.sse_client import events

DEFAULT_BASE_URL = "https://api.anthropic.com/v1"
API_VERSION = "2023-06-01"
MAX_TOKENS = 1024  # the Messages API requires a limit; OpenAI's default is none
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
        return to_completion(await read_json(response, self._timeout), model)

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[ChatChunk]:
        body = {**to_messages(request, model), "stream": True}
        response = await post(self._http, self._base + "/messages", self._headers, body, self._timeout)
        translate = StreamTranslation(model)
        try:
            async for event, data in events(response, self._timeout, until_done=False):
                for chunk in translate(event.event, data):
                    yield chunk
        finally:
            response.release()
        if not translate.finished:
            raise ProviderUnreachable("provider stream ended without message_stop")

    async def models(self) -> list[str]:
        return []


def to_messages(request: ChatRequest, model: str) -> dict[str, Any]:
    """An OpenAI chat request as a Messages API request; InvalidChatRequest for a field of the wrong type."""
    check_tools(request)
    check_tool_choice(request)
    optional_string(request, "user")
    system, messages = [], []
    for index, message in enumerate(request.get("messages", [])):
        if not isinstance(message, dict):
            raise InvalidChatRequest(f"messages[{index}]", "an object")
        role, text = message_role(message, index), message_text(message, index)
        if role in ("system", "developer"):
            system.append(text)
        elif role in ("user", "assistant"):
            messages.append({"role": role, "content": text})
    # Both are read, so a wrong one is refused even when the other would win.
    limits = optional_int(request, "max_completion_tokens", 1), optional_int(request, "max_tokens", 1)
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": limits[0] or limits[1] or MAX_TOKENS}
    if system:
        body["system"] = "\n\n".join(system)
    for field, high in (("temperature", 2.0), ("top_p", 1.0)):
        value = optional_number(request, field, 0.0, high)
        if value is not None:
            body[field] = value
    stop = stop_sequences(request)
    if stop:
        body["stop_sequences"] = stop
    return body


def to_completion(answer: Any, model: str) -> ChatResponse:
    """A Messages API answer as an OpenAI chat.completion; BadProviderAnswer when it is not a message."""
    content = answer.get("content", []) if isinstance(answer, dict) else None
    if not isinstance(content, list):
        raise BadProviderAnswer("provider answered something that is not a message")
    text = "".join(_block_text(block) for block in content)
    usage = _object(answer.get("usage"), "usage")
    prompt, completion = token_count(usage.get("input_tokens")), token_count(usage.get("output_tokens"))
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


def _block_text(block: Any) -> str:
    block = _object(block, "content block")
    return _text(block) if block.get("type") == "text" else ""


def _text(block: dict[str, Any]) -> str:
    text = block.get("text", "")
    if not isinstance(text, str):
        raise BadProviderAnswer("provider sent a text whose value is not a string")
    return text


def _object(value: Any, what: str) -> dict[str, Any]:
    """An object of the Messages API; absent is empty, anything else is the provider's fault."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadProviderAnswer(f"provider sent a {what} that is not an object")
    return value


class StreamTranslation:
    """Messages API stream events to OpenAI chunks, keeping what later chunks need."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.prompt_tokens = 0
        self.finished = False

    def __call__(self, name: str, data: Any) -> list[ChatChunk]:
        event = _object(data, "stream event")
        kind = event.get("type", name)
        if kind == "message_start":
            message = _object(event.get("message"), "message")
            self.id = str(message.get("id") or self.id)
            self.prompt_tokens = token_count(_object(message.get("usage"), "usage").get("input_tokens"))
            return [self._chunk({"role": "assistant", "content": ""}, None)]
        if kind == "content_block_delta":
            delta = _object(event.get("delta"), "delta")
            return [self._chunk({"content": _text(delta)}, None)] if delta.get("type") == "text_delta" else []
        if kind == "message_delta":
            reason = FINISH_REASON.get(str(_object(event.get("delta"), "delta").get("stop_reason")), "stop")
            completion = token_count(_object(event.get("usage"), "usage").get("output_tokens"))
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
            message = _object(event.get("error"), "error").get("message", "unknown")
            raise ProviderError(f"provider error: {str(message)[:200]}")
        return []

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None) -> ChatChunk:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
