"""What a provider sends that is not what its API promises is the provider's failure, at every point of an
answer (contract 9 and 11): before the first chunk it falls back, after it the stream ends with an error event
and `[DONE]`, and either way it is logged naming the provider; never a 500, never a silent cut."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import httpx2
import pytest

from agentgw.observability.logs import JsonFormatter
from tests.stub_providers import StubProvider, llm_config, openai_provider, sse_data
from tests.support import InProcessGateway
from tests.upstream.llm.test_anthropic import EVENTS, NO_LIMIT_REQUEST, anthropic_provider

BASE = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1700000000, "model": "x"}


def chunk(content: str | None = None, **extra: Any) -> dict[str, Any]:
    delta = {"content": content} if content is not None else {}
    return {**BASE, "choices": [{"index": 0, "delta": delta, "finish_reason": None}], **extra}


def post(gw: InProcessGateway, model: str, stream: bool) -> httpx2.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    with httpx2.Client(timeout=10) as http:
        return http.post(f"{gw.base}/v1/chat/completions", json=body)


@pytest.fixture(autouse=True)
def gateway_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """What the gateway logs, from INFO up, as `agentgw serve` logs it."""
    caplog.set_level(logging.INFO)
    return caplog


def logged(caplog: pytest.LogCaptureFixture, *words: str) -> bool:
    """Whether one JSON line of the gateway's log holds every word."""
    lines = [JsonFormatter().format(record) for record in caplog.records]
    return any(all(word in line for word in words) for line in lines)


def assert_ends_with_an_error_event(response: httpx2.Response, chunks_before: int) -> list[Any]:
    assert response.status_code == 200
    payloads = sse_data(response.content)
    *chunks, error, done = payloads
    assert len(chunks) == chunks_before, payloads
    assert error["error"]["type"] == "server_error"
    assert error["error"]["code"] == "upstream_error"
    assert done == "[DONE]"
    return chunks


BAD_USAGES = [
    {"prompt_tokens": "lots", "completion_tokens": 1},
    {"completion_tokens": [1]},
    "ten",
    {"prompt_tokens": -3},
]


@pytest.mark.parametrize("usage", BAD_USAGES, ids=["string", "list", "not-an-object", "negative"])
def test_bad_usage_mid_stream_ends_it_with_an_error_event_and_done(
    serve: Callable[..., InProcessGateway],
    stub: Callable[..., StubProvider],
    gateway_log: pytest.LogCaptureFixture,
    usage: Any,
) -> None:
    upstream = stub("name=alpha")
    upstream.script(chunks=[chunk("one"), chunk(" two"), chunk(None, usage=usage), chunk(" never")])
    gw = serve(llm_config(openai_provider("alpha", upstream)))

    relayed = assert_ends_with_an_error_event(post(gw, "alpha/x", stream=True), chunks_before=2)

    assert [c["choices"][0]["delta"]["content"] for c in relayed] == ["one", " two"]
    assert len(upstream.chat_requests()) == 1
    assert logged(gateway_log, "mid-stream", "alpha")


def test_chunk_that_is_not_an_object_mid_stream_ends_it_with_an_error_event(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    upstream = stub("name=a")
    upstream.script(chunks=[chunk("one"), [1, 2, 3], chunk(" never")])
    gw = serve(llm_config(openai_provider("a", upstream)))

    assert_ends_with_an_error_event(post(gw, "a/x", stream=True), chunks_before=1)


def test_anthropic_bad_usage_mid_stream_ends_it_with_an_error_event(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider], gateway_log: pytest.LogCaptureFixture
) -> None:
    upstream = stub("name=claude")
    bad_delta = ["message_delta", {"type": "message_delta", "delta": {}, "usage": {"output_tokens": "many"}}]
    upstream.script(events=[*EVENTS[:4], bad_delta, EVENTS[-1]])
    gw = serve(llm_config(anthropic_provider(upstream)))

    with httpx2.Client(timeout=10) as http:
        response = http.post(f"{gw.base}/v1/chat/completions", json={**NO_LIMIT_REQUEST, "stream": True})

    assert_ends_with_an_error_event(response, chunks_before=2)
    assert logged(gateway_log, "mid-stream", "claude")


def test_bad_first_chunk_falls_back_before_the_client_saw_anything(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    a, b = stub("name=a"), stub("name=b")
    a.script(chunks=[chunk("one", usage={"prompt_tokens": "x"})])
    gw = serve(llm_config(openai_provider("a", a), openai_provider("b", b), models={"smart": ["a/x", "b/y"]}))

    response = post(gw, "smart", stream=True)

    *chunks, done = sse_data(response.content)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "b says hi"
    assert done == "[DONE]"
    assert (len(a.chat_requests()), len(b.chat_requests())) == (1, 1)


@pytest.mark.parametrize(
    "answer",
    [
        {"choices": [], "usage": {"prompt_tokens": "x"}},
        [1, 2],
        "a string",
    ],
    ids=["string-usage", "list", "string"],
)
def test_malformed_completion_falls_back_and_alone_is_503_not_500(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider], answer: Any
) -> None:
    a, b = stub("name=a"), stub("name=b")
    a.script(completion=answer)
    gw = serve(llm_config(openai_provider("a", a), openai_provider("b", b), models={"smart": ["a/x", "b/y"]}))

    fallen_back = post(gw, "smart", stream=False)
    alone = post(gw, "a/x", stream=False)

    assert fallen_back.status_code == 200
    assert fallen_back.json()["choices"][0]["message"]["content"] == "b says hi"
    assert alone.status_code == 503, alone.text
    assert alone.json()["error"]["type"] == "server_error"
    assert len(b.chat_requests()) == 1


@pytest.mark.parametrize(
    "message",
    [
        {"content": "text"},
        {"content": [5]},
        {"content": [{"type": "text", "text": 5}]},
        {"usage": {"input_tokens": "x"}},
    ],
    ids=["content-string", "block-number", "text-number", "usage-string"],
)
def test_malformed_anthropic_message_is_the_providers_failure_not_a_500(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider], message: dict[str, Any]
) -> None:
    upstream = stub("name=claude")
    upstream.script(message={"id": "msg_x", "type": "message", "content": [], **message})
    gw = serve(llm_config(anthropic_provider(upstream)))

    with httpx2.Client(timeout=10) as http:
        response = http.post(f"{gw.base}/v1/chat/completions", json=NO_LIMIT_REQUEST)

    assert response.status_code == 503, response.text
    assert response.json()["error"]["type"] == "server_error"


@pytest.mark.parametrize("line_end", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "bare-cr"])
def test_provider_streams_are_read_whatever_the_line_ending(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider], line_end: str
) -> None:
    a, claude = stub("name=a"), stub("name=claude")
    a.script(chunks=[chunk("one"), chunk(" two")], line_end=line_end)
    claude.script(events=EVENTS, line_end=line_end)
    gw = serve(llm_config(openai_provider("a", a), anthropic_provider(claude)))

    openai_chunks = sse_data(post(gw, "a/x", stream=True).content)
    with httpx2.Client(timeout=10) as http:
        response = http.post(f"{gw.base}/v1/chat/completions", json={**NO_LIMIT_REQUEST, "stream": True})
    anthropic_chunks = sse_data(response.content)

    assert [c["choices"][0]["delta"]["content"] for c in openai_chunks[:-1]] == ["one", " two"]
    assert openai_chunks[-1] == "[DONE]"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in anthropic_chunks[:-1]) == "BONJOUR !"
    assert anthropic_chunks[-1] == "[DONE]"
    assert json.dumps(anthropic_chunks).count('"error"') == 0
