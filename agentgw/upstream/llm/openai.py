"""The `openai` provider: any OpenAI-compatible base URL (OpenAI, vLLM, Ollama, OpenRouter, ...)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

from agentgw.config import LlmProviderConfig
from agentgw.upstream.http import ConnectionPool, UpstreamResponse
from agentgw.upstream.llm.provider import (
    BadProviderAnswer,
    ChatRequest,
    ChatResponse,
    ProviderAuthRefused,
    ProviderError,
    ProviderRefused,
    RawChunk,
    provider_transport,
)
from agentgw.upstream.llm.sse_client import events

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAIProvider:
    def __init__(self, config: LlmProviderConfig, http: ConnectionPool) -> None:
        self.name = config.name
        self._base = (config.base_url or DEFAULT_BASE_URL).rstrip("/")
        self._timeout = float(config.timeout)
        self._http = http
        key = os.environ.get(config.api_key_env) if config.api_key_env else None
        self._headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        if key:
            self._headers["authorization"] = f"Bearer {key}"

    async def complete(self, request: ChatRequest, model: str) -> ChatResponse:
        response = await self._post("/chat/completions", {**request, "model": model, "stream": False})
        answer: ChatResponse = await read_json(response, self._timeout)
        return answer

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[RawChunk]:
        body = {**request, "model": model, "stream": True}
        response = await self._post("/chat/completions", body)
        try:
            # The provider speaks OpenAI already: its chunks reach the client as it sent them.
            async for event, chunk in events(response, self._timeout):
                yield RawChunk(event.data.encode(), chunk)
        finally:
            response.release()

    async def models(self) -> list[str]:
        try:
            with provider_transport():
                response = await self._http.request("GET", self._base + "/models", self._headers, None, self._timeout)
            listed = await read_json(response, self._timeout)
        except ProviderError:
            return []
        data = listed.get("data") if isinstance(listed, dict) else None
        return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m] if isinstance(data, list) else []

    async def _post(self, path: str, body: dict[str, Any]) -> UpstreamResponse:
        return await post(self._http, self._base + path, self._headers, body, self._timeout)


async def post(
    http: ConnectionPool, url: str, headers: dict[str, str], body: dict[str, Any], timeout: float
) -> UpstreamResponse:
    """POST and check the status: connection errors, timeouts, 408, 429 and 5xx are retryable ProviderErrors."""
    with provider_transport():
        response = await http.request("POST", url, headers, json.dumps(body).encode(), timeout)
    if response.status >= 400:
        raise await _refusal(response, timeout)
    return response


async def _refusal(response: UpstreamResponse, timeout: float) -> ProviderError:
    try:
        with provider_transport():
            detail = (await response.read(timeout))[:300].decode("utf-8", "replace")
    except ProviderError:
        detail = ""
    finally:
        response.release()
    message = f"provider answered {response.status}: {detail}"
    if response.status in (401, 403):
        return ProviderAuthRefused(message)
    if response.status in (408, 429) or response.status >= 500:
        return ProviderError(message)
    return ProviderRefused(message, status=response.status)


# A whole provider answer larger than this is refused, not held in memory.
MAX_PROVIDER_ANSWER = 64 * 1024 * 1024


async def read_json(response: UpstreamResponse, timeout: float) -> Any:
    """The whole body as JSON, released after; ProviderError when it breaks off or is not JSON."""
    try:
        with provider_transport():
            body = await response.read(timeout, limit=MAX_PROVIDER_ANSWER)
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting no answer needs
        raise BadProviderAnswer("provider answered something that is not JSON") from None
    finally:
        response.release()
