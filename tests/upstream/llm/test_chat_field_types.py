"""Chat fields of the wrong type or value for a translating provider are the client's 400 in OpenAI's shape,
never the gateway's 500, and never reach the provider (contract 9)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import httpx2

from tests.stub_providers import StubProvider, llm_config
from tests.support import InProcessGateway
from tests.upstream.llm.test_anthropic import anthropic_provider

HI = {"role": "user", "content": "Hi"}

# field -> values of the wrong type or value; `param` is what the 400 names.
WRONG: dict[str, list[Any]] = {
    "stop": [5, True, 1.5, {"a": 1}, [5], ["ok", None], [""], [["x"]]],
    "max_tokens": ["10", 0, -5, 1.5, True, [10], {}],
    "max_completion_tokens": ["10", 0, 2.5, False, {}],
    "temperature": ["hot", -0.1, 2.5, True, [0.3], {}],
    "top_p": ["x", 1.5, -1, False, [], {"p": 1}],
    "tools": ["search", 5, {}, [5], [{"type": "function"}], [{"type": "function", "function": {"name": 5}}]],
    "tool_choice": [5, True, "sometimes", [], {"a": 1}, {"type": "function"}, {"type": "function", "function": {}}],
    "user": [5, True, [], {"id": "u"}],
    "stream": ["yes", 1, 0, [], {}],
}
# Messages the translation cannot carry as the client meant them.
WRONG_MESSAGES: list[tuple[dict[str, Any], str]] = [
    ({"role": "user", "content": 5}, "messages[0].content"),
    ({"role": "user", "content": {"text": "hi"}}, "messages[0].content"),
    ({"role": "user", "content": None}, "messages[0].content"),
    ({"role": "user", "content": [5]}, "messages[0].content[0]"),
    ({"role": "user", "content": [{"type": "text", "text": 5}]}, "messages[0].content[0]"),
    ({"role": "user", "content": [{"type": "text"}]}, "messages[0].content[0]"),
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x"}}]}, "messages[0].content[0]"),
    ({"role": 5, "content": "hi"}, "messages[0].role"),
    ({"role": "wizard", "content": "hi"}, "messages[0].role"),
    ({"content": "hi"}, "messages[0].role"),
]
# Values of every kind, sent in every field: whatever a client sends, the answer is never a 500.
JUNK: list[Any] = [None, 0, -1, 7, 1.5, "", "x", True, False, [], [None], [{}], {}, {"type": "function"}, [[]]]
# Right values must still pass: a check that refuses everything cannot fail this test.
RIGHT: dict[str, list[Any]] = {
    "stop": [None, "", "END", ["a", "b"]],
    "max_tokens": [None, 1, 4096],
    "max_completion_tokens": [None, 7],
    "temperature": [None, 0, 0.5, 2],
    "top_p": [None, 0, 1, 0.25],
    "tools": [None, [], [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]],
    "tool_choice": [None, "auto", "none", "required", {"type": "function", "function": {"name": "f"}}],
    "user": [None, "user-1"],
    "stream": [None, False],
}


def post(gw: InProcessGateway, body: dict[str, Any]) -> httpx2.Response:
    # verify=False: plain HTTP on loopback, so no CA bundle to load (60 ms a client otherwise).
    with httpx2.Client(timeout=10, verify=False) as http:
        return http.post(f"{gw.base}/v1/chat/completions", json=body)


def request(**fields: Any) -> dict[str, Any]:
    return {"model": "claude/claude-test", "messages": [HI], **fields}


def assert_invalid_request(response: httpx2.Response, param: str, case: str) -> None:
    assert response.status_code == 400, (case, response.status_code, response.text)
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error", case
    assert error["code"] == "invalid_request", case
    assert error["param"] == param or error["param"].startswith(param + "["), case  # tools[0] is a part of tools


def test_wrong_field_types_are_400_and_never_reach_the_provider(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    upstream = stub("name=claude")
    gw = serve(llm_config(anthropic_provider(upstream)))

    for (field, values), stream in itertools.product(WRONG.items(), (False, True)):
        for value in values:
            body = request(**{field: value}) if field == "stream" else request(**{field: value}, stream=stream)
            assert_invalid_request(post(gw, body), field, f"{field}={value!r} stream={stream}")
    for (message, param), stream in itertools.product(WRONG_MESSAGES, (False, True)):
        assert_invalid_request(post(gw, {**request(stream=stream), "messages": [message]}), param, repr(message))

    assert upstream.requests("/v1/messages") == []


def test_right_field_values_still_reach_the_provider(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    upstream = stub("name=claude")
    gw = serve(llm_config(anthropic_provider(upstream)))

    sent = 0
    for field, values in RIGHT.items():
        for value in values:
            response = post(gw, request(**{field: value}))
            assert response.status_code == 200, (field, value, response.text)
            sent += 1
    assistant_called_tools = {"role": "assistant", "content": None, "tool_calls": []}
    assert post(gw, {**request(), "messages": [HI, assistant_called_tools, HI]}).status_code == 200

    received = [r["body"] for r in upstream.requests("/v1/messages")]
    assert len(received) == sent + 1
    # 0 is a value, not "none given": it reaches the provider.
    assert any(body.get("temperature") == 0 for body in received)
    assert any(body.get("top_p") == 0 for body in received)


def test_any_value_in_any_field_is_never_a_500(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    upstream = stub("name=claude")
    gw = serve(llm_config(anthropic_provider(upstream)))

    statuses = set()
    for field, value in itertools.product([*WRONG, "messages[0].content", "messages[0].role"], JUNK):
        if field == "stream" and value is True:
            continue  # a stream answers in events; the streamed cases are above
        if field.startswith("messages"):
            key = field.rpartition(".")[2]
            body = {**request(), "messages": [{**HI, key: value}]}
        else:
            body = request(**{field: value})
        response = post(gw, body)
        assert response.status_code in (200, 400), (field, value, response.status_code, response.text)
        assert "error" in response.json() if response.status_code == 400 else "choices" in response.json()
        statuses.add(response.status_code)

    assert statuses == {200, 400}
