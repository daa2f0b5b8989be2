"""An OpenAI-compatible provider's stream chunks reach the client byte for byte: the gateway reads only
their `usage` and never serialises them again (a proxy re-serialising what it does not change breaks
clients that rely on fields, order or number formats it does not know)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx2
import openai
import pytest

from tests.stub_providers import AUTH_POLICY, StubProvider, client, llm_config, openai_provider, token
from tests.support import InProcessGateway

# What json.loads + json.dumps would each change: spacing, key order kept as sent, escaped and
# unescaped non-ASCII, number forms, a vendor's own field, a null where a default would be dropped.
CHUNKS = [
    '{"id":"chatcmpl-p",  "object": "chat.completion.chunk","created":1700000000,"model":"x",'
    '"choices":[{"index":0,"delta":{"role":"assistant","content":"caf\\u00e9"},"finish_reason":null}]}',
    '{"choices": [{"delta": {"content": " naïve 😀"}, "index": 0, "finish_reason": null,'
    ' "logprobs": null}], "id": "chatcmpl-p", "object": "chat.completion.chunk", "created": 1.7e9,'
    ' "model": "x", "x_vendor": {"latency_ms": 12.50}}',
    '{"id":"chatcmpl-p","object":"chat.completion.chunk","created":1700000000,"model":"x",'
    '"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
    '"usage":{"prompt_tokens":8,"completion_tokens":4,"total_tokens":12,"prompt_tokens_details":null}}',
]
LIMITS = (
    AUTH_POLICY
    + """\
---
apiVersion: agentgw.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: llm-limits}
spec:
  appliesTo: [llm]
  defaultTier: tiny
  tiers:
    tiny: {tokensPerMinute: 10}
"""
)


def stream(gw: InProcessGateway, bearer: str | None = None) -> httpx2.Response:
    body = {"model": "a/x", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    headers = {"authorization": f"Bearer {bearer}"} if bearer else {}
    with httpx2.Client(timeout=10) as http:
        return http.post(f"{gw.base}/v1/chat/completions", json=body, headers=headers)


def test_openai_compatible_chunks_reach_the_client_byte_for_byte(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    upstream = stub("name=a")
    upstream.script(raw_events=[*(f"data: {chunk}\n\n" for chunk in CHUNKS), "data: [DONE]\n\n"])
    gw = serve(llm_config(openai_provider("a", upstream)))

    response = stream(gw)

    assert response.status_code == 200
    assert response.content == "".join(f"data: {chunk}\n\n" for chunk in CHUNKS).encode() + b"data: [DONE]\n\n"
    assert len(upstream.chat_requests()) == 1


def test_a_chunk_spread_over_data_lines_stays_data_lines(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    upstream = stub("name=a")
    # One pretty-printed chunk: its lines joined, it is one JSON object; relayed, each line is a data line.
    lines = ['{"id": "chatcmpl-p", "object": "chat.completion.chunk",', ' "choices": [{"index": 0,', ' "delta": {}}]}']
    event = "".join(f"data: {line}\n" for line in lines) + "\n"
    upstream.script(raw_events=[event, "data: [DONE]\n\n"])
    gw = serve(llm_config(openai_provider("a", upstream)))

    response = stream(gw)
    chunks = list(
        client(gw).chat.completions.create(model="a/x", messages=[{"role": "user", "content": "hi"}], stream=True)
    )

    assert response.status_code == 200
    assert response.content == event.encode() + b"data: [DONE]\n\n"
    assert [c.id for c in chunks] == ["chatcmpl-p"]
    assert json.loads("\n".join(lines)) == {
        "id": "chatcmpl-p",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {}}],
    }


def test_the_usage_of_a_relayed_chunk_counts_towards_the_token_limit(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    upstream = stub("name=a")
    upstream.script(raw_events=[*(f"data: {chunk}\n\n" for chunk in CHUNKS), "data: [DONE]\n\n"])
    gw = serve(llm_config(openai_provider("a", upstream)), policies=LIMITS)
    bearer = token()

    first = stream(gw, bearer)  # 8 + 4 tokens, 12 of the tier's 10
    with pytest.raises(openai.RateLimitError):
        for attempt in range(50):  # the count is written after the answer: a bounded wait for it
            list(
                client(gw, api_key=bearer).chat.completions.create(
                    model="a/x", messages=[{"role": "user", "content": "hi"}], stream=True
                )
            )
            assert attempt < 49

    assert first.status_code == 200
    assert first.content.endswith(b"data: [DONE]\n\n")
