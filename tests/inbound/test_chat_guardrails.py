"""Guardrails on what an LLM provider answers (contract 15), through `/v1/chat/completions` with the
OpenAI SDK as the client: whole answers, and streams whose secrets are split across chunks.

Every secret is assembled at run time from harmless parts, so no file of the repository holds
anything a secret scanner would take for a credential.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest

from agentgw.errors import GuardrailBlocked
from agentgw.inbound.chat_guardrails import LOOKAHEAD, MAX_HELD_CHUNKS, ScreenedChunks
from agentgw.observability.guardrail_actions import GuardrailActions, Where
from agentgw.policy.guardrails import HOLDBACK, Guard, Guardrails
from agentgw.policy.model import GuardrailPolicy, GuardrailPolicySpec, Metadata
from agentgw.upstream.llm.provider import RawChunk, StreamChunk
from tests.guardrail_checks import guardrail_actions, guardrail_decisions, guardrail_lines, logged_text, metric_series
from tests.stub_providers import StubProvider, client, llm_config, openai_provider, sse_data
from tests.support import InProcessGateway

ALNUM = "A1b2C3d4E5f6G7h8J9k0"
AWS_KEY_ID = "AKIA" + "IOSFODNN7" + "EXAMPLE"
GITHUB_TOKEN = "ghp" + "_" + ALNUM + ALNUM[:16]
SECRETS = (AWS_KEY_ID, GITHUB_TOKEN)
# Near-misses: a card number that fails the Luhn check, words that merely contain "token".
LUHN_INVALID = "4111 " + "1111 " * 2 + "1112"
TOKEN_WORDS = "a token of thanks, the tokenizer and max_tokens"
JWT = (
    base64.urlsafe_b64encode(b'{"alg":"RS256"}').rstrip(b"=").decode()
    + "."
    + base64.urlsafe_b64encode(json.dumps({"claims": ALNUM * 12}).encode()).rstrip(b"=").decode()
    + "."
    + ALNUM * 4
)
AWS_SECRET_LABEL = "aws_secret_access_key = "
AWS_SECRET_KEY = ALNUM * 2

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


def cut(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def holds_no_secret(text: str) -> bool:
    return not any(secret in text for secret in SECRETS)


def metrics_page(gw: InProcessGateway) -> str:
    """The admin port's /metrics, read with a blocking client: the gateways here are served from threads."""
    return httpx2.get(f"http://127.0.0.1:{gw.admin_port}/metrics", timeout=10).text


def guardrail_counts(gw: InProcessGateway) -> dict[tuple[str, str], float]:
    return guardrail_actions(metrics_page(gw))


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


def test_a_redacting_guard_relays_the_chunks_no_secret_touches_byte_for_byte(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    words = [f"word{n:03d} " for n in range(120)]
    pieces = [*words[:60], *PIECES[:-1], *cut(PIECES[-1], 20), *words[60:]]
    chunks = content_chunks(pieces)
    upstream = stub("name=a")
    upstream.script(chunks=chunks)
    gw = gateway(serve, upstream, guardrails("redact"))

    response = raw_stream(gw)

    # The stub writes its JSON with spaces after separators: the gateway's own serialisation has none.
    provided = [f"data: {json.dumps(c)}\n\n".encode() for c in chunks]
    events = [event + b"\n\n" for event in response.content.split(b"\n\n") if event]
    relayed = [event for event in events if event in provided]
    assert relayed == [event for event in provided if event in relayed]  # in order
    assert len(provided) - len(relayed) == len(touched(pieces, SECRETS))
    text = "".join(text_of(c) for c in sse_data(response.content) if c != "[DONE]")
    assert text == "".join(pieces).replace(TEXT, REDACTED)


def touched(pieces: list[str], secrets: tuple[str, ...]) -> list[str]:
    """The pieces some of a secret is in."""
    text = "".join(pieces)
    spans = [(text.index(secret), text.index(secret) + len(secret)) for secret in secrets]
    starts = itertools.accumulate([0, *map(len, pieces[:-1])])
    return [p for p, at in zip(pieces, starts, strict=True) if any(a < at + len(p) and b > at for a, b in spans)]


def test_every_redaction_is_counted_logged_without_the_secret_and_audited_and_usage_counted(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    upstream = stub("name=a")
    upstream.script(chunks=content_chunks(PIECES))
    gw = gateway(serve, upstream, guardrails("redact"))

    streamed(gw)

    assert guardrail_counts(gw) == {("aws_access_key_id", "redact"): 1.0, ("github_token", "redact"): 1.0}
    token_series = metric_series(metrics_page(gw), "agentgw_llm_tokens_total")
    tokens = {dict(labels)["kind"]: value for labels, value in token_series.items()}
    assert tokens == {"prompt": 5.0, "completion": 17.0}
    lines = guardrail_lines(caplog)
    assert sorted((line["reason"], line["decision"], line["target"]) for line in lines) == [
        ("aws_access_key_id", "guardrail_redact", "a"),
        ("github_token", "guardrail_redact", "a"),
    ]
    assert holds_no_secret(logged_text(caplog))
    audit = httpx2.get(f"http://127.0.0.1:{gw.admin_port}/admin/audit?n=100", timeout=10).json()["entries"]
    guarded = guardrail_decisions(audit)
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


# -- the chunks of a stream, one by one (ScreenedChunks) ----------------------------------------

PROSE = "The answer, in plain words and with no secret at all, goes on for a while. "
WHERE = Where("a", None, None, "answer")


class RecordedActions(GuardrailActions):
    """What the screen reports, kept instead of counted, logged and audited."""

    def __init__(self) -> None:
        self.detectors: list[str] = []

    def found(self, findings: Any, where: Where) -> None:
        self.detectors += [finding.detector for finding in findings]


def guard(action: str = "redact") -> Guard:
    policy = GuardrailPolicy(
        "agentgw.dev/v1alpha1", "GuardrailPolicy", Metadata("g"), GuardrailPolicySpec(secrets=action)
    )
    made = Guardrails([policy]).guard("llm", "a")
    assert made is not None
    return made


def raw(value: dict[str, Any]) -> RawChunk:
    return RawChunk(json.dumps(value).encode(), value)


def text_of(chunk: StreamChunk) -> str:
    value = chunk.value if isinstance(chunk, RawChunk) else chunk
    return "".join(choice["delta"].get("content") or "" for choice in value["choices"])


class Relay:
    """A stream through ScreenedChunks as the gateway relays it: what went out, and the most text
    ever held back (received and not sent)."""

    def __init__(self, action: str = "redact") -> None:
        self.actions = RecordedActions()
        self.screen = ScreenedChunks(guard(action), self.actions, WHERE)
        self.sent: list[StreamChunk] = []
        self.most_held = 0
        self._received = 0

    def run(self, chunks: list[RawChunk], finish: bool = True) -> list[StreamChunk]:
        for chunk in chunks:
            self.sent += self.screen.chunk(chunk)
            self._received += len(text_of(chunk))
            self.most_held = max(self.most_held, self._received - sum(len(text_of(c)) for c in self.sent))
        self.sent += self.screen.closing()
        return self.sent

    def text(self) -> str:
        return "".join(text_of(chunk) for chunk in self.sent)


def stream_of(pieces: list[str]) -> list[RawChunk]:
    return [raw(c) for c in content_chunks(pieces)]


@pytest.mark.parametrize("size", [1, 4, 20, HOLDBACK - LOOKAHEAD + 1])
def test_chunks_no_secret_touches_go_out_as_the_provider_sent_them(size: int) -> None:
    chunks = stream_of(cut(PROSE * 12, size))
    relay = Relay()

    sent = relay.run(chunks)

    assert len(sent) == len(chunks) and all(out is came for out, came in zip(sent, chunks, strict=True))
    assert relay.most_held <= HOLDBACK


@pytest.mark.parametrize("size", [1, 5, 64, 65, 66, 100, 255, 256, 257, 1000])
def test_no_more_than_256_characters_are_held_back_whatever_the_chunks(size: int) -> None:
    text = PROSE * 14
    relay = Relay()

    relay.run(stream_of(cut(text, size)))

    assert relay.text() == text
    assert relay.most_held <= HOLDBACK == 256


@pytest.mark.parametrize("secret", [AWS_KEY_ID, GITHUB_TOKEN, JWT, AWS_SECRET_LABEL + AWS_SECRET_KEY])
def test_a_secret_split_over_many_small_chunks_is_caught(secret: str) -> None:
    text = PROSE * 4 + secret + " and the end. " + PROSE * 4
    relay = Relay()

    relay.run(stream_of(cut(text, 1)))

    assert relay.text() == guard().scan(text).value != text
    assert len(relay.actions.detectors) == 1


@pytest.mark.parametrize("secret", [AWS_KEY_ID, GITHUB_TOKEN])
def test_a_secret_split_in_three_chunks_is_caught_at_every_pair_of_split_points(secret: str) -> None:
    text = PROSE * 4 + secret + " and the end."
    expected = guard().scan(text).value
    start = len(PROSE * 4)
    for first, second in itertools.combinations(range(start - 1, start + len(secret) + 1), 2):
        pieces = [text[:first], text[first:second], text[second:]]
        relay = Relay()
        relay.run(stream_of(pieces))
        assert relay.text() == expected, (first, second)


def test_a_secret_across_the_edge_of_what_is_held_is_caught_and_only_its_chunks_rewritten() -> None:
    # Small chunks: text is settled LOOKAHEAD characters behind the end, and sent at most
    # HOLDBACK behind it. Moving the secret a character at a time puts it across both edges.
    for shift in range(HOLDBACK - LOOKAHEAD + len(GITHUB_TOKEN)):
        text = PROSE * 4 + "x" * shift + " " + GITHUB_TOKEN + " " + PROSE * 4
        chunks = stream_of(cut(text, 3))
        relay = Relay()

        sent = relay.run(chunks)

        assert relay.text() == guard().scan(text).value, shift
        # Chunks are 3 characters: the 40-character token touches at most 15 of them.
        rewritten = [chunk for chunk in sent if not any(chunk is came for came in chunks)]
        assert 1 <= len(rewritten) <= 15, shift


def test_the_label_of_an_aws_secret_key_held_apart_from_the_key_still_counts() -> None:
    # The key is told by the label before it: wherever what is settled ends between the two.
    secret = AWS_SECRET_LABEL + AWS_SECRET_KEY
    for shift in range(HOLDBACK - LOOKAHEAD + 1):
        text = "x" * shift + " " + PROSE * 4 + secret + " and the end. " + PROSE * 4
        relay = Relay()
        relay.run(stream_of(cut(text, 1)))
        assert AWS_SECRET_KEY not in relay.text(), shift
        assert AWS_SECRET_LABEL + "[REDACTED:aws_secret_access_key]" in relay.text(), shift


def test_a_long_jwt_cut_before_its_signature_is_redacted_whole() -> None:
    header_and_payload, signature = JWT.rsplit(".", 1)
    assert len(header_and_payload) > LOOKAHEAD
    # The stream is settled while its text ends at the dot: the signature may still follow.
    pieces = [PROSE * 4, header_and_payload + ".", signature + " and the end."]
    relay = Relay()

    relay.run(stream_of(pieces))

    assert relay.text() == PROSE * 4 + "[REDACTED:jwt] and the end."


def test_a_blocked_chunk_raises_and_nothing_of_the_secret_went_out() -> None:
    text = PROSE * 4 + GITHUB_TOKEN + " and the end. " + PROSE * 4
    relay = Relay("block")

    with pytest.raises(GuardrailBlocked):
        relay.run(stream_of(cut(text, 2)))

    assert GITHUB_TOKEN[:8] not in relay.text() and relay.text() == text[: len(relay.text())]
    assert relay.actions.detectors == ["github_token"]


def test_a_guard_that_only_warns_sends_every_chunk_at_once() -> None:
    chunks = stream_of(cut(PROSE * 4 + GITHUB_TOKEN + PROSE * 4, 5))
    screen = ScreenedChunks(guard("warn"), RecordedActions(), WHERE)

    assert all(screen.chunk(chunk) == [chunk] for chunk in chunks)
    assert screen.closing() == []


def test_chunks_of_no_text_are_not_held_without_bound() -> None:
    # Text not yet settled holds the chunks behind it; a provider sending chunks of no text does not
    # make the gateway hold them all.
    choice = {"index": 0, "delta": {"content": ""}, "logprobs": {"content": []}, "finish_reason": None}
    textless = [raw({**BASE, "choices": [choice]}) for _ in range(3 * MAX_HELD_CHUNKS)]
    screen = ScreenedChunks(guard(), RecordedActions(), WHERE)
    sent = [*screen.chunk(raw(chunk({"content": "Hello"})))]

    for came in textless:
        sent += screen.chunk(came)

    assert len(sent) >= len(textless) - MAX_HELD_CHUNKS
    sent += screen.chunk(raw(chunk({}, "stop")))
    assert "".join(text_of(c) for c in sent) == "Hello"


def test_each_text_of_a_chunk_is_held_to_the_bound_content_and_tool_call_arguments() -> None:
    arguments = json.dumps({"repo": "docs", "token": GITHUB_TOKEN, "notes": PROSE * 3})
    content = PROSE * 4 + AWS_KEY_ID + PROSE * 2
    chunks = [
        raw(chunk({"content": a, "tool_calls": [{"index": 0, "function": {"arguments": b}}]}))
        for a, b in itertools.zip_longest(cut(content, 7), cut(arguments, 5), fillvalue="")
    ]
    relay = Relay()

    sent = relay.run([*chunks, raw(chunk({}, "tool_calls", usage=USAGE))])

    values = [c.value if isinstance(c, RawChunk) else c for c in sent]
    calls = [call for v in values for call in v["choices"][0]["delta"].get("tool_calls") or ()]
    assert json.loads("".join(call["function"]["arguments"] for call in calls))["token"] == "[REDACTED:github_token]"
    assert relay.text() == guard().scan(content).value
    assert values[-1]["choices"][0]["finish_reason"] == "tool_calls" and values[-1]["usage"] == USAGE
