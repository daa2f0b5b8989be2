"""Reading a provider's event stream: `data:` payloads as they complete."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from agentgw.upstream.http import UpstreamConnectionError, UpstreamResponse, UpstreamTimeoutError
from agentgw.upstream.llm.provider import ProviderError


async def events(
    response: UpstreamResponse, timeout: float, until_done: bool = True
) -> AsyncIterator[tuple[str | None, Any]]:
    """(event name, JSON data) for each event; `[DONE]` ends the stream.

    A stream that breaks, or (with `until_done`) ends without `[DONE]`, raises
    ProviderError: a truncated answer must never pass for a complete one.
    """
    pending = b""
    event: str | None = None
    try:
        async for chunk in response.chunks(timeout):
            pending += chunk.replace(b"\r\n", b"\n")
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.startswith(b"event:"):
                    event = line[6:].strip().decode()
                elif line.startswith(b"data:"):
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        return
                    try:
                        yield event, json.loads(data)
                    except ValueError:
                        raise ProviderError("provider sent an unreadable event") from None
                elif not line:
                    event = None
    except (UpstreamConnectionError, UpstreamTimeoutError) as exc:
        raise ProviderError(f"provider stream broke: {exc}") from exc
    if until_done:
        raise ProviderError("provider stream ended without [DONE]")
