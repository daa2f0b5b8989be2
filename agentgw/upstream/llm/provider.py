"""The LLMProvider protocol, its errors, and where provider types come from."""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator
from typing import Any, Protocol

from agentgw.config import LlmProviderConfig
from agentgw.upstream.http import ConnectionPool

ENTRY_POINT_GROUP = "agentgw.llm_providers"

ChatRequest = dict[str, Any]  # the OpenAI chat-completions request body
ChatResponse = dict[str, Any]  # an OpenAI chat.completion
ChatChunk = dict[str, Any]  # an OpenAI chat.completion.chunk


class ProviderError(Exception):
    """A provider failed. `retryable` failures (connection, timeout, 429, 5xx) move on to the next route.

    A provider that `timed_out` has used up its time already: the next route is
    tried rather than the same provider again.
    """

    def __init__(self, message: str, *, status: int = 502, retryable: bool = True, timed_out: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.timed_out = timed_out


class BadProviderAnswer(ProviderError):
    """What a provider sent is not what its API promises (a usage that is no count, an event that is
    no object): never relayed as if it were, and the provider's failure like any other."""


class LLMProvider(Protocol):
    """One configured provider (`llm.providers[]`); `model` is the part after `provider/`."""

    name: str

    async def complete(self, request: ChatRequest, model: str) -> ChatResponse: ...

    def stream(self, request: ChatRequest, model: str) -> AsyncIterator[ChatChunk]:
        """Chunks as the provider sends them; raises ProviderError before or during the stream."""
        ...

    async def models(self) -> list[str]: ...


class ProviderFactory(Protocol):
    def __call__(self, config: LlmProviderConfig, http: ConnectionPool) -> LLMProvider: ...


def provider_types() -> dict[str, ProviderFactory]:
    """Built-in provider types, then any registered under the `agentgw.llm_providers` entry-point group."""
    from agentgw.upstream.llm.anthropic import AnthropicProvider
    from agentgw.upstream.llm.echo import EchoProvider
    from agentgw.upstream.llm.openai import OpenAIProvider

    types: dict[str, ProviderFactory] = {"openai": OpenAIProvider, "anthropic": AnthropicProvider, "echo": EchoProvider}
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        types.setdefault(entry_point.name, entry_point.load())
    return types


def content_text(content: Any, separator: str = "") -> str:
    """The text of a chat message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return separator.join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def usage_of(response: Any) -> tuple[int, int]:
    """(prompt, completion) tokens of an OpenAI-shaped completion or chunk; BadProviderAnswer when the
    answer is no object or its usage holds something other than counts (token limits read these)."""
    if not isinstance(response, dict):
        raise BadProviderAnswer("provider sent something that is not a JSON object")
    usage = response.get("usage")
    if usage is None:
        return 0, 0
    if not isinstance(usage, dict):
        raise BadProviderAnswer("provider sent a usage that is not an object")
    return token_count(usage.get("prompt_tokens")), token_count(usage.get("completion_tokens"))


def token_count(value: Any) -> int:
    """A token count a provider reported: absent is 0; anything but a non-negative integer is its fault."""
    if value is None:
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadProviderAnswer("provider sent a token count that is not a non-negative integer")
    return value
