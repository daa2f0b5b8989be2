"""Reading a provider's event stream: each event with its JSON data as the event completes.

The bytes are decoded by the gateway's one SSE reader (`agentgw.sse`); what is
particular to LLM providers stays here: OpenAI's `[DONE]` sentinel, and that
every event carries JSON.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from agentgw.sse import Event, SseDecoder
from agentgw.upstream.http import UpstreamResponse
from agentgw.upstream.llm.provider import BadProviderAnswer, ProviderUnreachable, provider_transport

DONE = "[DONE]"


async def events(
    response: UpstreamResponse, timeout: float, until_done: bool = True
) -> AsyncIterator[tuple[Event, Any]]:
    """Each event and its data as JSON; `[DONE]` ends the stream.

    A stream that breaks, or (with `until_done`) ends without `[DONE]`, raises
    ProviderError: a truncated answer must never pass for a complete one.
    """
    decoder = SseDecoder()
    chunks = response.chunks(timeout)
    while True:
        with provider_transport():
            chunk = await anext(chunks, None)
        if chunk is None:
            break
        for event in decoder.feed(chunk):
            if event.data == DONE:
                return
            try:
                data = event.json()
            except (ValueError, RecursionError):
                raise BadProviderAnswer("provider sent an event that is not JSON") from None
            yield event, data
    if until_done:
        raise ProviderUnreachable("provider stream ended without [DONE]")
