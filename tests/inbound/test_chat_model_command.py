"""`/model provider,model` on the first line of the first user message switches the model (contract 9)."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest

from tests.stub_providers import StubProvider, client, llm_config, openai_provider
from tests.support import InProcessGateway


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_model_command_switches_the_model_and_is_stripped(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider], stream: bool
) -> None:
    a, b = stub("name=a"), stub("name=b")
    gw = serve(llm_config(openai_provider("a", a), openai_provider("b", b), models={"default": ["a/x"]}))
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "/model b,y\nwhat is up"},
    ]

    answer = client(gw).chat.completions.create(model="default", messages=messages, stream=stream)
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in answer)
    else:
        text = answer.choices[0].message.content

    assert text == "b says what is up"
    assert a.chat_requests() == []
    [seen] = b.chat_requests()
    assert seen["body"]["model"] == "y"
    assert seen["body"]["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is up"},
    ]


def test_model_command_in_a_first_text_part_switches_the_model_and_is_stripped(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    a, b = stub("name=a"), stub("name=b")
    gw = serve(llm_config(openai_provider("a", a), openai_provider("b", b), models={"default": ["a/x"]}))
    parts = [{"type": "text", "text": "/model b,y\nwhat is up"}, {"type": "text", "text": "and more"}]

    answer = client(gw).chat.completions.create(model="default", messages=[{"role": "user", "content": parts}])

    assert answer.choices[0].message.content == "b says what is up and more"
    [seen] = b.chat_requests()
    assert seen["body"]["model"] == "y"
    assert seen["body"]["messages"][0]["content"][0] == {"type": "text", "text": "what is up"}


def test_model_command_in_a_later_user_message_is_plain_text(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    a, b = stub("name=a"), stub("name=b")
    gw = serve(llm_config(openai_provider("a", a), openai_provider("b", b)))
    messages = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "/model b,y\nstill a"},
    ]

    answer = client(gw).chat.completions.create(model="a/x", messages=messages)

    assert answer.choices[0].message.content == "a says /model b,y\nstill a"
    assert b.chat_requests() == []


def test_model_command_naming_an_unknown_provider_is_404(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    a = stub("name=a")
    gw = serve(llm_config(openai_provider("a", a)))

    with pytest.raises(openai.NotFoundError) as refused:
        client(gw).chat.completions.create(
            model="a/x", messages=[{"role": "user", "content": "/model nobody,thing\nhi"}]
        )

    assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "model_not_found"
    assert a.chat_requests() == []
