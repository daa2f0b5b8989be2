"""Guardrails on what an LLM provider answers (contract 15), through `/v1/chat/completions` with the
OpenAI SDK as the client: whole answers, and streams whose secrets are split across chunks.

Every secret is assembled at run time from harmless parts, so no file of the repository holds
anything a secret scanner would take for a credential.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest

from tests.stub_providers import StubProvider, client, llm_config, openai_provider, sse_data
from tests.support import InProcessGateway

ALNUM = "A1b2C3d4E5f6G7h8J9k0"
AWS_KEY_ID = "AKIA" + "IOSFODNN7" + "EXAMPLE"
GITHUB_TOKEN = "ghp" + "_" + ALNUM + ALNUM[:16]
SECRETS = (AWS_KEY_ID, GITHUB_TOKEN)
# Near-misses: a card number that fails the Luhn check, words that merely contain "token".
LUHN_INVALID = "4111 " + "1111 " * 2 + "1112"
TOKEN_WORDS = "a token of thanks, the tokenizer and max_tokens"

# The AWS key id split across three chunks, the GitHub token across two.
PIECES = [
    "Here is the key ",
    AWS_KEY_ID[:6],
    AWS_KEY_ID[6:13],
    AWS_KEY_ID[13:] + " and the token ",
    GITHUB_TOKEN[:19],
    GITHUB_TOKEN[19:] + f"; not a card: {LUHN_INVALID}, {TOKEN_WORDS}.",
]
TEXT = "".join(PIECES)
REDACTED = TEXT.replace(AWS_KEY_ID, "[REDACTED:aws_access_key_id]").replace(GITHUB_TOKEN, "[REDACTED:github_token]")
USAGE = {"prompt_tokens": 5, "completion_tokens": 17, "total_tokens": 22}
BASE = {"id": "chatcmpl-g", "object": "chat.completion.chunk", "created": 1700000000, "model": "x"}
QUESTION = [{"role": "user", "content": "what do you know?"}]


def guardrails(action: str, provider: str = "a") -> str:
    return f"""\
apiVersion: agentgw.dev/v1alpha1
kind: GuardrailPolicy
metadata: {{name: guardrails}}
spec:
  targetRefs: [{provider}]
  appliesTo: [llm]
  secrets: {action}
"""


def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
    return {**BASE, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}


def content_chunks(pieces: list[str]) -> list[dict[str, Any]]:
    """A stream as OpenAI sends it: the role, a chunk per piece, then the finish with the usage."""
    return [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": piece}) for piece in pieces),
        chunk({}, "stop", usage=USAGE),
    ]


def completion(message: dict[str, Any]) -> dict[str, Any]:
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return {**BASE, "object": "chat.completion", "choices": [choice], "usage": USAGE}


def gateway(serve: Callable[..., InProcessGateway], upstream: StubProvider, policies: str) -> InProcessGateway:
    config = {**llm_config(openai_provider("a", upstream)), "server": {"metrics_listen": "127.0.0.1:0"}}
    return serve(config, policies=policies)


def streamed(gw: InProcessGateway) -> list[Any]:
    return list(client(gw).chat.completions.create(model="a/x", messages=QUESTION, stream=True))


def streamed_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def raw_stream(gw: InProcessGateway) -> httpx2.Response:
    body = {"model": "a/x", "messages": QUESTION, "stream": True}
    with httpx2.Client(timeout=10) as http:
        return http.post(f"{gw.base}/v1/chat/completions", json=body)


def holds_no_secret(text: str) -> bool:
    return not any(secret in text for secret in SECRETS)


def metric(gw: InProcessGateway, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every series of `name` on the admin port, by its labels."""
    scraped = httpx2.get(f"http://127.0.0.1:{gw.admin_port}/metrics", timeout=10).text
    series = {}
    for labels, value in re.findall(rf"^{name}\{{([^}}]*)\}} (\S+)$", scraped, re.M):
        series[frozenset(re.findall(r'(\w+)="([^"]*)"', labels))] = float(value)
    return series


def guardrail_counts(gw: InProcessGateway) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["detector"], dict(labels)["action"]): value
        for labels, value in metric(gw, "agentgw_guardrail_actions_total").items()
    }


# -- streamed answers -----------------------------------------------------------------------


def test_secrets_split_across_chunks_are_redacted_and_the_rest_kept(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    upstream = stub("name=a")
    upstream.script(chunks=content_chunks(PIECES))
    gw = gateway(serve, upstream, guardrails("redact"))

    chunks = streamed(gw)

    assert streamed_text(chunks) == REDACTED
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 17
    assert all(c.id == "chatcmpl-g" and c.model == "x" for c in chunks)
    assert holds_no_secret("".join(c.model_dump_json() for c in chunks))


def test_a_long_answer_is_released_as_it_goes_not_only_at_its_end(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    words = [f"word{n:03d} " for n in range(200)]
    pieces = [*words[:100], *PIECES, *words[100:]]
    upstream = stub("name=a")
    upstream.script(chunks=content_chunks(pieces))
    gw = gateway(serve, upstream, guardrails("redact"))

    chunks = streamed(gw)

    assert streamed_text(chunks) == "".join(pieces).replace(TEXT, REDACTED)
    carrying = [c for c in chunks if c.choices and c.choices[0].delta.content]
    # Held back at most 256 characters: most chunks still carry text of their own, none carries it all.
    assert len(carrying) > len(pieces) // 2
    assert max(len(c.choices[0].delta.content) for c in carrying) < 256 + 64


def test_what_is_held_back_is_sent_when_a_stream_ends_without_finishing(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    upstream = stub("name=a")
    upstream.script(chunks=content_chunks(PIECES)[:-1])  # no finishing chunk, then [DONE]
    gw = gateway(serve, upstream, guardrails("redact"))

    chunks = streamed(gw)

    assert streamed_text(chunks) == REDACTED
    assert chunks[-1].id == "chatcmpl-g" and chunks[-1].choices[0].finish_reason is None


def test_tool_call_arguments_split_across_chunks_are_redacted(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    arguments = json.dumps({"repo": "docs", "token": GITHUB_TOKEN})
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "clone", "arguments": ""}}
    chunks = [
        chunk({"role": "assistant", "content": None, "tool_calls": [call]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[:30]}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[30:]}}]}),
        chunk({}, "tool_calls", usage=USAGE),
    ]
    upstream = stub("name=a")
    upstream.script(chunks=chunks)
    gw = gateway(serve, upstream, guardrails("redact"))

    received = streamed(gw)

    calls = [t for c in received if c.choices for t in c.choices[0].delta.tool_calls or ()]
    assert calls[0].id == "call_1" and calls[0].function.name == "clone"
    sent = "".join(t.function.arguments or "" for t in calls)
    assert json.loads(sent) == {"repo": "docs", "token": "[REDACTED:github_token]"}
    assert received[-1].choices[0].finish_reason == "tool_calls"


def test_a_blocked_stream_ends_with_an_error_event_then_done(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    upstream = stub("name=a")
    upstream.script(chunks=content_chunks(PIECES))
    gw = gateway(serve, upstream, guardrails("block"))

    response = raw_stream(gw)

    assert response.status_code == 200
    *chunks, error, done = sse_data(response.content)
    assert error["error"]["code"] == "guardrail"
    assert error["error"]["type"] == "server_error"
    assert done == "[DONE]"
    assert all("choices" in c for c in chunks)
    assert holds_no_secret(response.text)
    assert guardrail_counts(gw) == {("aws_access_key_id", "block"): 1.0}


def test_the_openai_sdk_raises_on_a_blocked_stream(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    upstream = stub("name=a")
    upstream.script(chunks=content_chunks(PIECES))
    gw = gateway(serve, upstream, guardrails("block"))

    received = []
    with pytest.raises(openai.APIError) as blocked:
        for c in client(gw).chat.completions.create(model="a/x", messages=QUESTION, stream=True):
            received.append(c)

    assert not isinstance(blocked.value, openai.APIConnectionError)  # an error event, not a cut
    assert isinstance(blocked.value.body, dict) and blocked.value.body["code"] == "guardrail"
    assert holds_no_secret(streamed_text(received))


@pytest.mark.parametrize("policies", [guardrails("warn"), guardrails("block", provider="b")], ids=["warn", "other"])
def test_warn_or_no_guard_relays_the_chunks_byte_for_byte(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider], policies: str
) -> None:
    upstream = stub("name=a")
    chunks = content_chunks(PIECES)
    upstream.script(chunks=chunks)
    gw = gateway(serve, upstream, policies)

    response = raw_stream(gw)

    # The stub writes its JSON with spaces after separators: the gateway's own serialisation has none.
    assert response.content == b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"
    warned = {("aws_access_key_id", "warn"): 1.0, ("github_token", "warn"): 1.0}
    assert guardrail_counts(gw) == (warned if "warn" in policies else {})


def test_every_redaction_is_counted_logged_without_the_secret_and_audited_and_usage_counted(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    upstream = stub("name=a")
    upstream.script(chunks=content_chunks(PIECES))
    gw = gateway(serve, upstream, guardrails("redact"))

    streamed(gw)

    assert guardrail_counts(gw) == {("aws_access_key_id", "redact"): 1.0, ("github_token", "redact"): 1.0}
    tokens = {dict(labels)["kind"]: value for labels, value in metric(gw, "agentgw_llm_tokens_total").items()}
    assert tokens == {"prompt": 5.0, "completion": 17.0}
    lines = [r.fields for r in caplog.records if getattr(r, "fields", {}).get("event") == "guardrail"]
    assert sorted((line["reason"], line["decision"], line["target"]) for line in lines) == [
        ("aws_access_key_id", "guardrail_redact", "a"),
        ("github_token", "guardrail_redact", "a"),
    ]
    assert holds_no_secret("\n".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records))
    audit = httpx2.get(f"http://127.0.0.1:{gw.admin_port}/admin/audit?n=100", timeout=10).json()["entries"]
    guarded = [entry for entry in audit if str(entry["decision"]).startswith("guardrail")]
    assert sorted((entry["reason"], entry["decision"], entry["target"]) for entry in guarded) == [
        ("aws_access_key_id", "guardrail_redact", "a"),
        ("github_token", "guardrail_redact", "a"),
    ]
    assert holds_no_secret(json.dumps(audit))


# -- whole answers --------------------------------------------------------------------------


def test_a_whole_answer_is_redacted_in_its_content_and_tool_call_arguments(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    arguments = json.dumps({"token": GITHUB_TOKEN})
    call = {"id": "call_1", "type": "function", "function": {"name": "clone", "arguments": arguments}}
    upstream = stub("name=a")
    upstream.script(completion=completion({"role": "assistant", "content": TEXT, "tool_calls": [call]}))
    gw = gateway(serve, upstream, guardrails("redact"))

    answer = client(gw).chat.completions.create(model="a/x", messages=QUESTION)

    message = answer.choices[0].message
    assert message.content == REDACTED
    assert message.tool_calls is not None
    assert json.loads(message.tool_calls[0].function.arguments) == {"token": "[REDACTED:github_token]"}
    assert answer.usage is not None and answer.usage.total_tokens == 22
    assert holds_no_secret(answer.model_dump_json())
    assert guardrail_counts(gw) == {("aws_access_key_id", "redact"): 1.0, ("github_token", "redact"): 2.0}


def test_a_blocked_whole_answer_is_an_openai_shaped_502(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    upstream = stub("name=a")
    upstream.script(completion=completion({"role": "assistant", "content": TEXT}))
    gw = gateway(serve, upstream, guardrails("block"))

    with pytest.raises(openai.APIStatusError) as blocked:
        client(gw).chat.completions.create(model="a/x", messages=QUESTION)

    assert blocked.value.status_code == 502
    assert isinstance(blocked.value.body, dict)
    assert (blocked.value.body["type"], blocked.value.body["code"]) == ("server_error", "guardrail")
    assert holds_no_secret(blocked.value.response.text)


def test_near_misses_pass_where_secrets_are_blocked(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    harmless = f"not a card: {LUHN_INVALID}, {TOKEN_WORDS}."
    upstream = stub("name=a")
    upstream.script(completion=completion({"role": "assistant", "content": harmless}))
    gw = gateway(serve, upstream, guardrails("block"))

    answer = client(gw).chat.completions.create(model="a/x", messages=QUESTION)

    assert answer.choices[0].message.content == harmless
    assert guardrail_counts(gw) == {}
