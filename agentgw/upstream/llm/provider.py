"""The LLMProvider protocol, its errors, and where provider types come from."""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import AsyncIterator
from typing import Any, NamedTuple, Protocol

from agentgw.config import LlmProviderConfig
from agentgw.errors import SERVER_UNAVAILABLE, GatewayError, UpstreamUnavailable
from agentgw.upstream.faults import Faults
from agentgw.upstream.http import ConnectionPool

ENTRY_POINT_GROUP = "agentgw.llm_providers"

ChatRequest = dict[str, Any]  # the OpenAI chat-completions request body
ChatResponse = dict[str, Any]  # an OpenAI chat.completion
ChatChunk = dict[str, Any]  # an OpenAI chat.completion.chunk


class RawChunk(NamedTuple):
    """A chunk as an OpenAI-compatible provider sent it: `data` (its event's data) goes to the client
    byte for byte, and `value` (the JSON it holds) is read only for its `usage`. A provider that
    builds its chunks (a translation) yields ChatChunk instead, and the gateway serialises it."""

    data: bytes
    value: Any


StreamChunk = ChatChunk | RawChunk


class ProviderError(GatewayError):
    """A provider failed: its fault, never the client's (502). `retryable` failures (connection,
    timeout, 429, 5xx) move on to the next route; the last route's failure is NoProviderAnswered.

    A provider that `timed_out` has used up its time already: the next route is
    tried rather than the same provider again.
    """

    http_status = 502
    jsonrpc_code = SERVER_UNAVAILABLE
    openai_code = "upstream_error"
    retryable = True
    timed_out = False


class ProviderUnreachable(ProviderError):
    """The connection failed, or broke off before the answer was whole."""


class ProviderTimeout(ProviderError):
    http_status = 504
    timed_out = True


class ProviderRefused(ProviderError):
    """The provider answered the request with a 4xx: the request is at fault, so it is not tried
    elsewhere, and the client reads the provider's own status."""

    openai_type = "invalid_request_error"
    openai_code = "provider_refused"
    retryable = False

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.http_status = status


class ProviderAuthRefused(ProviderError):
    """The provider refused the gateway's own key (401/403): the gateway's fault, never the client's
    credentials, and no other request would fare better."""

    openai_code = "provider_refused"
    retryable = False


class BadProviderAnswer(ProviderError):
    """What a provider sent is not what its API promises (a usage that is no count, an event that is
    no object): never relayed as if it were, and the provider's failure like any other."""


class NoProviderAnswered(UpstreamUnavailable):
    """Every route of the chain failed, or had its circuit open."""

    openai_code = "upstream_unavailable"


PROVIDER = Faults(ProviderUnreachable, ProviderTimeout, BadProviderAnswer)


def provider_transport() -> contextlib.AbstractContextManager[None]:
    """Every read and write of a provider's connection runs inside it (`upstream/faults.py`)."""
    return PROVIDER.mapped("provider")


class LLMProvider(Protocol):
    """One configured provider (`llm.providers[]`); `model` is the part after `provider/`."""

    name: str

    async def complete(self, request: ChatRequest, model: str) -> ChatResponse: ...

    def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamChunk]:
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


def chunk_usage(chunk: StreamChunk) -> tuple[int, int]:
    """(prompt, completion) tokens a stream chunk reports; BadProviderAnswer as `usage_of`."""
    return usage_of(chunk.value if isinstance(chunk, RawChunk) else chunk)
