"""The `anthropic` provider: OpenAI chat requests become Messages API requests, and answers come back in
the OpenAI shape, streams included (contract 9). Golden pairs, written out in full."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx2
import pytest

from tests.stub_providers import (
    PROVIDER_KEY,
    PROVIDER_KEY_ENV,
    StubProvider,
    client,
    llm_config,
    openai_provider,
    sse_data,
)
from tests.support import InProcessGateway

CLIENT_KEY = "client-side-key-that-must-stay-here"

# -- golden pairs: what the client sends -> what the provider receives ----------------------------

FULL_REQUEST = {
    "model": "claude/claude-test",
    "messages": [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Bonjour."},
        {"role": "user", "content": [{"type": "text", "text": "Again, "}, {"type": "text", "text": "louder."}]},
    ],
    "max_tokens": 64,
    "temperature": 0.3,
    "top_p": 0.9,
    "stop": ["\n\n"],
}
FULL_MESSAGES_REQUEST = {
    "model": "claude-test",
    "system": "You answer in French.",
    "messages": [
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Bonjour."},
        {"role": "user", "content": "Again, louder."},
    ],
    "max_tokens": 64,
    "temperature": 0.3,
    "top_p": 0.9,
    "stop_sequences": ["\n\n"],
}

MINIMAL_REQUEST = {
    "model": "claude/claude-test",
    "messages": [
        {"role": "developer", "content": "Be terse."},
        {"role": "system", "content": "No emoji."},
        {"role": "user", "content": "Hi"},
    ],
    "max_completion_tokens": 200,
    "stop": "END",
}
MINIMAL_MESSAGES_REQUEST = {
    "model": "claude-test",
    "system": "Be terse.\n\nNo emoji.",
    "messages": [{"role": "user", "content": "Hi"}],
    "max_tokens": 200,
    "stop_sequences": ["END"],
}

NO_LIMIT_REQUEST = {"model": "claude/claude-test", "messages": [{"role": "user", "content": "Hi"}]}
NO_LIMIT_MESSAGES_REQUEST = {
    "model": "claude-test",
    "messages": [{"role": "user", "content": "Hi"}],
    "max_tokens": 1024,  # the Messages API requires one; the client gave none
}

REQUEST_PAIRS = [
    pytest.param(FULL_REQUEST, FULL_MESSAGES_REQUEST, id="system-history-parameters"),
    pytest.param(MINIMAL_REQUEST, MINIMAL_MESSAGES_REQUEST, id="developer-and-system-joined"),
    pytest.param(NO_LIMIT_REQUEST, NO_LIMIT_MESSAGES_REQUEST, id="default-max-tokens"),
]

# -- golden pairs: what the provider answers -> what the client receives --------------------------

MESSAGE = {
    "id": "msg_01golden",
    "type": "message",
    "role": "assistant",
    "model": "claude-test-20250101",
    "content": [{"type": "text", "text": "BONJOUR "}, {"type": "text", "text": "!"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 21, "output_tokens": 5},
}
COMPLETION = {
    "id": "msg_01golden",
    "object": "chat.completion",
    "model": "claude-test",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "BONJOUR !"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 21, "completion_tokens": 5, "total_tokens": 26},
}

TRUNCATED_MESSAGE = {
    **MESSAGE,
    "id": "msg_01cut",
    "content": [{"type": "text", "text": "BONJ"}],
    "stop_reason": "max_tokens",
    "usage": {"input_tokens": 21, "output_tokens": 2},
}
TRUNCATED_COMPLETION = {
    "id": "msg_01cut",
    "object": "chat.completion",
    "model": "claude-test",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "BONJ"}, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 21, "completion_tokens": 2, "total_tokens": 23},
}

ANSWER_PAIRS = [
    pytest.param(MESSAGE, COMPLETION, id="end_turn"),
    pytest.param(TRUNCATED_MESSAGE, TRUNCATED_COMPLETION, id="max_tokens"),
]

EVENTS = [
    [
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_01stream",
                "type": "message",
                "role": "assistant",
                "model": "claude-test-20250101",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 21, "output_tokens": 1},
            },
        },
    ],
    ["content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}],
    ["ping", {"type": "ping"}],
    [
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "BON"}},
    ],
    [
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "JOUR !"}},
    ],
    ["content_block_stop", {"type": "content_block_stop", "index": 0}],
    [
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 5},
        },
    ],
    ["message_stop", {"type": "message_stop"}],
]


def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "msg_01stream",
        "object": "chat.completion.chunk",
        "model": "claude-test",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        **extra,
    }


CHUNKS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "BON"}),
    chunk({"content": "JOUR !"}),
    chunk({}, "stop", usage={"prompt_tokens": 21, "completion_tokens": 5, "total_tokens": 26}),
]


# -- the tests ------------------------------------------------------------------------------------


def anthropic_provider(stub: StubProvider, **options: Any) -> dict[str, Any]:
    return {
        "name": "claude",
        "type": "anthropic",
        "base_url": stub.base_url,
        "api_key_env": PROVIDER_KEY_ENV,
        **options,
    }


def post(gw: InProcessGateway, body: dict[str, Any]) -> httpx2.Response:
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    with httpx2.Client(timeout=10) as http:
        return http.post(f"{gw.base}/v1/chat/completions", json=body, headers=headers)


def without_created(value: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(value.pop("created"), int)
    return value


def assert_messages_api_headers(request: dict[str, Any]) -> None:
    headers = request["headers"]
    assert headers["x-api-key"] == PROVIDER_KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["content-type"] == "application/json"
    assert "authorization" not in headers
    assert all(CLIENT_KEY not in value for value in headers.values())


@pytest.mark.parametrize(("sent", "received"), REQUEST_PAIRS)
def test_chat_request_becomes_a_messages_api_request(
    serve: Callable[..., InProcessGateway],
    stub: Callable[..., StubProvider],
    sent: dict[str, Any],
    received: dict[str, Any],
) -> None:
    upstream = stub("name=claude")
    gw = serve(llm_config(anthropic_provider(upstream)))

    assert post(gw, sent).status_code == 200
    assert post(gw, {**sent, "stream": True}).status_code == 200

    complete, streamed = upstream.requests("/v1/messages")
    assert complete["body"] == received
    assert streamed["body"] == {**received, "stream": True}
    assert_messages_api_headers(complete)
    assert_messages_api_headers(streamed)


@pytest.mark.parametrize(("message", "completion"), ANSWER_PAIRS)
def test_messages_api_answer_becomes_a_chat_completion(
    serve: Callable[..., InProcessGateway],
    stub: Callable[..., StubProvider],
    message: dict[str, Any],
    completion: dict[str, Any],
) -> None:
    upstream = stub("name=claude")
    upstream.script(message=message)
    gw = serve(llm_config(anthropic_provider(upstream)))

    response = post(gw, NO_LIMIT_REQUEST)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert without_created(response.json()) == completion


def test_messages_api_answer_reads_as_a_completion_in_the_openai_sdk(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    upstream = stub("name=claude")
    upstream.script(message=MESSAGE)
    gw = serve(llm_config(anthropic_provider(upstream)))

    answer = client(gw, api_key=CLIENT_KEY).chat.completions.create(
        model="claude/claude-test", messages=[{"role": "user", "content": "Hi"}]
    )

    assert answer.choices[0].message.content == "BONJOUR !"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (21, 5, 26)


def test_messages_api_stream_becomes_chat_completion_chunks(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    upstream = stub("name=claude")
    upstream.script(events=EVENTS)
    gw = serve(llm_config(anthropic_provider(upstream)))

    response = post(gw, {**NO_LIMIT_REQUEST, "stream": True})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    *chunks, done = sse_data(response.content)
    assert [without_created(c) for c in chunks] == CHUNKS
    assert done == "[DONE]"


def test_messages_api_stream_reads_as_chunks_in_the_openai_sdk(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    upstream = stub("name=claude")
    upstream.script(events=EVENTS)
    gw = serve(llm_config(anthropic_provider(upstream)))

    chunks = list(
        client(gw, api_key=CLIENT_KEY).chat.completions.create(
            model="claude/claude-test", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    )

    assert len(chunks) == 4
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "BONJOUR !"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 26


def test_anthropic_stream_opening_with_an_error_event_falls_back(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    claude, b = stub("name=claude"), stub("name=b")
    claude.script(events=[["error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}]])
    gw = serve(
        llm_config(anthropic_provider(claude), openai_provider("b", b), models={"smart": ["claude/claude-test", "b/y"]})
    )

    chunks = list(
        client(gw).chat.completions.create(model="smart", messages=[{"role": "user", "content": "hi"}], stream=True)
    )

    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "b says hi"
    assert len(claude.requests("/v1/messages")) == 1


def test_anthropic_error_event_mid_stream_ends_the_stream_with_an_error_event(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    upstream = stub("name=claude")
    overloaded = ["error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}]
    upstream.script(events=[*EVENTS[:4], overloaded])
    gw = serve(llm_config(anthropic_provider(upstream)))

    *chunks, error, done = sse_data(post(gw, {**NO_LIMIT_REQUEST, "stream": True}).content)

    assert [without_created(c) for c in chunks] == CHUNKS[:2]
    assert error["error"]["code"] == "upstream_error"
    assert done == "[DONE]"
