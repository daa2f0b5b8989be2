"""Reading a provider's event stream: each event's JSON data as the event completes.

The bytes are decoded by the gateway's one SSE reader (`agentgw.sse`); what is
particular to LLM providers stays here: OpenAI's `[DONE]` sentinel, and that
every event carries JSON.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from agentgw.sse import SseDecoder
from agentgw.upstream.http import UpstreamConnectionError, UpstreamResponse, UpstreamTimeoutError
from agentgw.upstream.llm.provider import BadProviderAnswer, ProviderError

DONE = "[DONE]"


async def events(response: UpstreamResponse, timeout: float, until_done: bool = True) -> AsyncIterator[tuple[str, Any]]:
    """(event name, JSON data) for each event; `[DONE]` ends the stream.

    A stream that breaks, or (with `until_done`) ends without `[DONE]`, raises
    ProviderError: a truncated answer must never pass for a complete one.
    """
    decoder = SseDecoder()
    try:
        async for chunk in response.chunks(timeout):
            for event in decoder.feed(chunk):
                if event.data == DONE:
                    return
                try:
                    data = event.json()
                except ValueError:
                    raise BadProviderAnswer("provider sent an event that is not JSON") from None
                yield event.event, data
    except (UpstreamConnectionError, UpstreamTimeoutError) as exc:
        raise ProviderError(f"provider stream broke: {exc}") from exc
    if until_done:
        raise ProviderError("provider stream ended without [DONE]")
