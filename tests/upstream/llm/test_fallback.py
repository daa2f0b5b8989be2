"""An alias's route is a fallback chain; a stream falls back only before its first chunk (contract 9)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest

from tests.stub_providers import StubProvider, client, llm_config, openai_provider, sse_data
from tests.support import InProcessGateway, poll

QUESTION = [{"role": "user", "content": "what now"}]


def chain(first: dict[str, Any], second: StubProvider) -> dict[str, Any]:
    """Alias `smart` = [a/x, b/y], `a` given a one-second timeout."""
    return llm_config({**first, "timeout": "1s"}, openai_provider("b", second), models={"smart": ["a/x", "b/y"]})


def answer_text(gw: InProcessGateway, stream: bool) -> str:
    sdk = client(gw)
    if not stream:
        return sdk.chat.completions.create(model="smart", messages=QUESTION).choices[0].message.content or ""
    chunks = list(sdk.chat.completions.create(model="smart", messages=QUESTION, stream=True))
    assert chunks and chunks[-1].choices[0].finish_reason == "stop"
    return "".join(c.choices[0].delta.content or "" for c in chunks)


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(
    "failure",
    ["status=500", "status=503", "status=429", "delay=3"],
    ids=["500", "503", "429", "timeout"],
)
def test_alias_answers_from_the_next_route_when_the_first_fails(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider], failure: str, stream: bool
) -> None:
    a, b = stub("name=a", failure), stub("name=b")
    gw = serve(chain(openai_provider("a", a), b))

    assert answer_text(gw, stream) == "b says what now"

    assert len(a.chat_requests()) == 1
    [seen] = b.chat_requests()
    assert seen["body"]["model"] == "y"
    assert seen["body"]["stream"] is stream


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_alias_answers_from_the_next_route_when_the_first_refuses_connections(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider], dead_port: int, stream: bool
) -> None:
    b = stub("name=b")
    dead = {"name": "a", "type": "openai", "base_url": f"http://127.0.0.1:{dead_port}/v1"}
    gw = serve(chain(dead, b))

    assert answer_text(gw, stream) == "b says what now"


def test_stream_cut_before_its_first_chunk_falls_back(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    a, b = stub("name=a", "cut=0"), stub("name=b")  # a answers 200, then drops the connection before any event
    gw = serve(chain(openai_provider("a", a), b))

    assert answer_text(gw, stream=True) == "b says what now"
    assert len(a.chat_requests()) == 1


def test_provider_refusing_the_request_is_not_retried_elsewhere(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    a, b = stub("name=a", "status=400"), stub("name=b")
    gw = serve(chain(openai_provider("a", a), b))

    with pytest.raises(openai.BadRequestError) as refused:
        client(gw).chat.completions.create(model="smart", messages=QUESTION)

    assert refused.value.status_code == 400
    assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "provider_refused"
    assert b.chat_requests() == []


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_every_route_failing_is_503_with_an_openai_shaped_error(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider], stream: bool
) -> None:
    a, b = stub("name=a", "status=500"), stub("name=b", "status=502")
    gw = serve(chain(openai_provider("a", a), b))

    with pytest.raises(openai.APIStatusError) as failed:
        client(gw).chat.completions.create(model="smart", messages=QUESTION, stream=stream)

    assert failed.value.status_code == 503
    assert isinstance(failed.value.body, dict)
    assert failed.value.body["type"] == "server_error"
    assert failed.value.body["code"] == "upstream_unavailable"
    # The last route of a chain is retried once by default (llm.retry.attempts: 2).
    assert len(a.chat_requests()) == 1 and len(b.chat_requests()) == 2


def test_provider_dying_mid_stream_ends_the_stream_with_an_error_event(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    a, b = stub("name=a", "cut=2"), stub("name=b")  # two chunks, then the connection drops
    gw = serve(chain(openai_provider("a", a), b))

    body = {"model": "smart", "messages": QUESTION, "stream": True}
    with httpx2.Client(timeout=10) as http:  # a hang would fail here, not block the run
        response = http.post(f"{gw.base}/v1/chat/completions", json=body)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    *chunks, error, done = sse_data(response.content)
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["a", " says"]
    assert error["error"]["type"] == "server_error"
    assert error["error"]["code"] == "upstream_error"
    assert done == "[DONE]"
    # The client already had part of a's answer: b is not asked to start another one.
    assert b.chat_requests() == []


def test_provider_dying_mid_stream_raises_an_api_error_in_the_openai_sdk(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    a, b = stub("name=a", "cut=2"), stub("name=b")
    gw = serve(chain(openai_provider("a", a), b))

    received = []
    with pytest.raises(openai.APIError) as broken:
        for chunk in client(gw).chat.completions.create(model="smart", messages=QUESTION, stream=True):
            received.append(chunk.choices[0].delta.content)

    assert not isinstance(broken.value, openai.APIConnectionError)  # an error event, not a timeout or a cut
    assert received == ["a", " says"]
    assert isinstance(broken.value.body, dict) and broken.value.body["code"] == "upstream_error"


def test_stream_stalling_before_its_first_chunk_falls_back(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    a, b = stub("name=a", "stall=0"), stub("name=b")  # a answers 200, then sends nothing within its 1s timeout
    gw = serve(chain(openai_provider("a", a), b))

    assert answer_text(gw, stream=True) == "b says what now"


def test_provider_stalling_mid_stream_ends_the_stream_with_an_error_event(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    a, b = stub("name=a", "stall=2"), stub("name=b")  # two chunks, then silence past a's 1s timeout
    gw = serve(chain(openai_provider("a", a), b))

    body = {"model": "smart", "messages": QUESTION, "stream": True}
    with httpx2.Client(timeout=10) as http:
        response = http.post(f"{gw.base}/v1/chat/completions", json=body)

    *chunks, error, done = sse_data(response.content)
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["a", " says"]
    assert error["error"]["code"] == "upstream_error"
    assert done == "[DONE]"
    assert b.chat_requests() == []


def test_stream_ending_without_done_before_any_chunk_falls_back(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    a, b = stub("name=a", "end=0"), stub("name=b")  # 200, then the body ends with no event at all
    gw = serve(chain(openai_provider("a", a), b))

    assert answer_text(gw, stream=True) == "b says what now"


def test_stream_ending_without_done_mid_answer_ends_with_an_error_event(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    a, b = stub("name=a", "end=2"), stub("name=b")  # two chunks, then the body ends: no closing chunk, no [DONE]
    gw = serve(chain(openai_provider("a", a), b))

    body = {"model": "smart", "messages": QUESTION, "stream": True}
    with httpx2.Client(timeout=10) as http:
        response = http.post(f"{gw.base}/v1/chat/completions", json=body)

    *chunks, error, done = sse_data(response.content)
    assert done == "[DONE]"
    assert "error" in error, error  # today: a's second chunk, as if the answer were complete
    assert error["error"]["code"] == "upstream_error"
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["a", " says"]


async def test_a_client_leaving_mid_stream_ends_the_providers_stream(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    a = stub("name=a", "stall=2")  # two chunks, then silence with the connection open
    gw = serve(llm_config(openai_provider("a", a)))
    request = {"model": "a/x", "messages": QUESTION, "stream": True}
    async with (
        httpx2.AsyncClient(timeout=10) as http,
        http.stream(
            "POST", f"{gw.base}/v1/chat/completions", json=request, headers={"Authorization": "Bearer x"}
        ) as response,
    ):
        assert response.status_code == 200
        lines = response.aiter_lines()
        assert (await anext(lines)).startswith("data: ")
        assert a.open_streams() == 1
    # The client is gone: the gateway lets go of the provider's stream instead of waiting on it.

    async def released() -> bool:
        return a.open_streams() == 0

    assert await poll(released, timeout=5)
