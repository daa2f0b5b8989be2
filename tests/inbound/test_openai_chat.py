"""`/v1/chat/completions` and `/v1/models` through the gateway, with the OpenAI SDK as the client (contract 9)."""

from __future__ import annotations

import json
from collections.abc import Callable

import openai
import pytest

from tests.stub_providers import AUTH_POLICY, PROVIDER_KEY, StubProvider, client, llm_config, openai_provider, token
from tests.support import InProcessGateway

ECHO = {"name": "echo", "type": "echo"}


def test_echo_provider_answers_with_the_last_user_message(serve: Callable[..., InProcessGateway]) -> None:
    gw = serve(llm_config(ECHO))

    answer = client(gw).chat.completions.create(
        model="echo/echo",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello brave new world"}],
    )

    assert answer.object == "chat.completion"
    assert answer.model == "echo"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == "hello brave new world"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (6, 4, 10)


def test_echo_provider_streams_one_chunk_per_word_then_a_closing_chunk(serve: Callable[..., InProcessGateway]) -> None:
    gw = serve(llm_config(ECHO))

    chunks = list(
        client(gw).chat.completions.create(
            model="echo/echo", messages=[{"role": "user", "content": "hello brave new world"}], stream=True
        )
    )

    assert len(chunks) == 5
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "hello brave new world"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks] == [None, None, None, None, "stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_openai_provider_relays_the_upstream_completion(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    upstream = stub("name=a")
    gw = serve(llm_config(openai_provider("a", upstream)))

    answer = client(gw).chat.completions.create(
        model="a/x", messages=[{"role": "user", "content": "hello there"}], temperature=0.5
    )

    assert answer.choices[0].message.content == "a says hello there"
    assert answer.id == "chatcmpl-a"
    assert answer.usage is not None and answer.usage.completion_tokens == 4
    [seen] = upstream.chat_requests()
    assert seen["body"]["model"] == "x"  # the provider's own model name, without `a/`
    assert seen["body"]["messages"] == [{"role": "user", "content": "hello there"}]
    assert seen["body"]["temperature"] == 0.5
    assert seen["body"].get("stream") is False


def test_openai_provider_stream_is_relayed_chunk_by_chunk(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    upstream = stub("name=a")
    gw = serve(llm_config(openai_provider("a", upstream)))

    chunks = list(
        client(gw).chat.completions.create(
            model="a/x", messages=[{"role": "user", "content": "hello there"}], stream=True
        )
    )

    # "a says hello there": four word chunks as the stub sent them, then its closing chunk with usage.
    assert [c.choices[0].delta.content for c in chunks] == ["a", " says", " hello", " there", None]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 7
    [seen] = upstream.chat_requests()
    assert seen["body"]["stream"] is True
    assert seen["body"]["model"] == "x"


def test_models_lists_aliases_and_every_provider_model(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    upstream = stub("name=a", "models=x,y")
    gw = serve(llm_config(openai_provider("a", upstream), ECHO, models={"default": ["a/x", "echo/echo"]}))

    listed = {m.id: m.owned_by for m in client(gw).models.list()}

    assert listed == {"default": "agentgw", "a/x": "a", "a/y": "a", "echo/echo": "echo"}


def test_unknown_model_is_404_with_an_openai_shaped_error(serve: Callable[..., InProcessGateway]) -> None:
    gw = serve(llm_config(ECHO))

    with pytest.raises(openai.NotFoundError) as refused:
        client(gw).chat.completions.create(model="nobody/nothing", messages=[{"role": "user", "content": "hi"}])

    assert refused.value.status_code == 404
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["code"] == "model_not_found"
    assert refused.value.body["type"] == "invalid_request_error"


def test_provider_sees_its_configured_key_and_never_the_client_token(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    upstream = stub("name=a")
    gw = serve(llm_config(openai_provider("a", upstream)), policies=AUTH_POLICY)
    bearer = token()
    sdk = client(gw, api_key=bearer)

    sdk.chat.completions.create(model="a/x", messages=[{"role": "user", "content": "one"}])
    list(sdk.chat.completions.create(model="a/x", messages=[{"role": "user", "content": "two"}], stream=True))
    sdk.models.list()

    seen = upstream.requests()
    assert [r["path"] for r in seen] == ["/v1/chat/completions", "/v1/chat/completions", "/v1/models"]
    for request in seen:
        assert request["headers"]["authorization"] == f"Bearer {PROVIDER_KEY}"
        assert bearer not in json.dumps(request)


def test_chat_without_a_token_is_401_when_a_session_auth_policy_applies(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    upstream = stub("name=a")
    gw = serve(llm_config(openai_provider("a", upstream)), policies=AUTH_POLICY)

    with pytest.raises(openai.AuthenticationError) as refused:
        client(gw, api_key="not-a-jwt").chat.completions.create(
            model="a/x", messages=[{"role": "user", "content": "hi"}]
        )

    assert refused.value.status_code == 401
    assert refused.value.response.headers["www-authenticate"].startswith('Bearer realm="agentgw"')
    # OpenAI's shape, which the SDK unwraps into `body`, not JSON-RPC's.
    assert isinstance(refused.value.body, dict)
    assert (refused.value.body["type"], refused.value.body["code"]) == ("invalid_request_error", "invalid_api_key")
    assert upstream.chat_requests() == []
