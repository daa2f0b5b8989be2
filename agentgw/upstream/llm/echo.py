"""The `echo` provider: offline and deterministic, for examples and tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from agentgw.config import LlmProviderConfig
from agentgw.upstream.http import ConnectionPool
from agentgw.upstream.llm.provider import ChatChunk, ChatRequest, ChatResponse, content_text

MODELS = ["echo"]


class EchoProvider:
    """Answers with the last user message, word by word when streaming; tokens are words."""

    def __init__(self, config: LlmProviderConfig, http: ConnectionPool) -> None:
        self.name = config.name

    async def complete(self, request: ChatRequest, model: str) -> ChatResponse:
        prompt, answer = _prompt_and_answer(request)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": _usage(prompt, answer),
        }

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[ChatChunk]:
        prompt, answer = _prompt_and_answer(request)
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time())}
        words = answer.split(" ")
        for index, word in enumerate(words):
            text = word if index == 0 else " " + word
            delta = {"role": "assistant", "content": text} if index == 0 else {"content": text}
            yield {**base, "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        yield {
            **base,
            "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": _usage(prompt, answer),
        }

    async def models(self) -> list[str]:
        return MODELS


def _prompt_and_answer(request: ChatRequest) -> tuple[str, str]:
    messages = request.get("messages") or []
    texts = [content_text(m.get("content"), " ") for m in messages if isinstance(m, dict)]
    users = [content_text(m.get("content"), " ") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return " ".join(texts), (users[-1] if users else "") or "(nothing to echo)"


def _usage(prompt: str, answer: str) -> dict[str, int]:
    prompt_tokens, completion_tokens = len(prompt.split()), len(answer.split())
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
