"""RateLimitPolicy on chat: requests and tokens per minute per subject, shared across replicas (contract 9)."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

import openai
import pytest
import redis

from tests.stub_providers import AUTH_POLICY, client, llm_config, token
from tests.support import InProcessGateway

T = TypeVar("T")
ECHO = {"name": "echo", "type": "echo"}
LIMITS = (
    AUTH_POLICY
    + """\
---
apiVersion: agentgw.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: llm-limits}
spec:
  appliesTo: [llm]
  tierClaim: tier
  defaultTier: free
  tiers:
    free: {requestsPerMinute: 5}
    pro: {requestsPerMinute: 50}
    tiny: {tokensPerMinute: 10}
"""
)


def within_one_window(attempt: Callable[[], T]) -> T:
    """Run `attempt` (which uses a fresh subject) until one run falls inside a single rate-limit minute."""
    for _ in range(3):
        window = int(time.time() // 60)
        result = attempt()
        if int(time.time() // 60) == window:
            return result
    raise AssertionError("three attempts in a row crossed a minute boundary")


def status_of(gw: InProcessGateway, bearer: str, stream: bool = False, text: str = "hi") -> int:
    try:
        answer = client(gw, api_key=bearer).chat.completions.create(
            model="echo/echo", messages=[{"role": "user", "content": text}], stream=stream
        )
        if stream:
            list(answer)
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


def assert_rate_limited(error: openai.RateLimitError) -> None:
    assert error.status_code == 429
    retry_after = error.response.headers["retry-after"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 61
    assert error.response.headers["content-type"].startswith("application/json")
    body = error.response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["code"] == "rate_limit_exceeded"


def test_sixth_request_in_a_minute_is_429_with_retry_after(serve: Callable[..., InProcessGateway]) -> None:
    gw = serve(llm_config(ECHO), policies=LIMITS)

    def attempt() -> tuple[list[int], openai.RateLimitError]:
        bearer = token()
        statuses = [status_of(gw, bearer) for _ in range(5)]
        with pytest.raises(openai.RateLimitError) as limited:
            client(gw, api_key=bearer).chat.completions.create(
                model="echo/echo", messages=[{"role": "user", "content": "one more"}]
            )
        return statuses, limited.value

    statuses, error = within_one_window(attempt)

    assert statuses == [200] * 5
    assert_rate_limited(error)


def test_request_limit_counts_streams_and_is_per_subject(serve: Callable[..., InProcessGateway]) -> None:
    gw = serve(llm_config(ECHO), policies=LIMITS)

    def attempt() -> tuple[list[int], int]:
        alice, bob = token(), token()
        statuses = [status_of(gw, alice, stream=True) for _ in range(6)]
        return statuses, status_of(gw, bob)

    alice_statuses, bob_status = within_one_window(attempt)

    assert alice_statuses == [200] * 5 + [429]
    assert bob_status == 200


def test_tier_claim_selects_the_callers_tier(serve: Callable[..., InProcessGateway]) -> None:
    gw = serve(llm_config(ECHO), policies=LIMITS)

    statuses = within_one_window(lambda: [status_of(gw, token(tier="pro")) for _ in range(8)])

    assert statuses == [200] * 8


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_tokens_per_minute_refuses_once_the_usage_reaches_the_limit(
    serve: Callable[..., InProcessGateway], stream: bool
) -> None:
    gw = serve(llm_config(ECHO), policies=LIMITS)

    def attempt() -> list[int]:
        bearer = token(tier="tiny")
        # The echo provider counts words: 6 prompt + 6 completion tokens, 12 of the tier's 10.
        first = status_of(gw, bearer, stream=stream, text="one two three four five six")
        return [first, status_of(gw, bearer, stream=stream)]

    assert within_one_window(attempt) == [200, 429]


def test_limit_is_shared_by_two_gateways_on_one_redis(serve: Callable[..., InProcessGateway], redis_url: str) -> None:
    config = {
        **llm_config(ECHO),
        "session_store": {"type": "redis", "url": redis_url, "key_prefix": f"llm-{uuid.uuid4().hex}:"},
    }
    first, second = serve(config, policies=LIMITS, name="first"), serve(config, policies=LIMITS, name="second")

    def attempt() -> tuple[list[int], openai.RateLimitError, openai.RateLimitError]:
        bearer = token()
        statuses = [status_of(first if i % 2 == 0 else second, bearer) for i in range(5)]
        refused = []
        for gw in (second, first):  # the sixth and seventh, one through each replica
            with pytest.raises(openai.RateLimitError) as limited:
                client(gw, api_key=bearer).chat.completions.create(
                    model="echo/echo", messages=[{"role": "user", "content": "more"}]
                )
            refused.append(limited.value)
        return statuses, refused[0], refused[1]

    statuses, *errors = within_one_window(attempt)

    assert statuses == [200] * 5
    for error in errors:
        assert_rate_limited(error)


def commands_run(server: redis.Redis) -> Counter[str]:
    """Calls per command Redis has run since it started (INFO commandstats)."""
    stats = server.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(calls["calls"]) for name, calls in stats.items()})


ROOMY = (
    AUTH_POLICY
    + """\
---
apiVersion: agentgw.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: roomy}
spec:
  appliesTo: [llm]
  defaultTier: requests
  tiers:
    requests: {requestsPerMinute: 100000}
    both: {requestsPerMinute: 100000, tokensPerMinute: 100000000}
"""
)


@pytest.mark.parametrize(
    ("policies", "tier", "per_request"),
    [
        (AUTH_POLICY, "none", {}),
        (ROOMY, "requests", {"evalsha": 1, "set": 1, "incrby": 1}),
        (ROOMY, "both", {"evalsha": 2, "set": 3, "incrby": 3}),
    ],
    ids=["no-rate-limit", "requests-limit", "requests-and-tokens-limit"],
)
def test_chat_store_round_trips_are_none_without_a_rate_limit_and_one_with_it(
    serve: Callable[..., InProcessGateway], redis_url: str, policies: str, tier: str, per_request: dict[str, int]
) -> None:
    """Admission is one script call (EVALSHA: the round trip) counting the request and reading the
    tokens; with a token limit the answer's tokens are one more, written after the client has its
    answer (not waited for). INFO counts the SET and INCRBY each script runs too, per counter."""
    config = {
        **llm_config(ECHO),
        "session_store": {"type": "redis", "url": redis_url, "key_prefix": f"trips-{uuid.uuid4().hex}:"},
    }
    gw = serve(config, policies=policies)
    bearer = token(tier=tier)
    assert status_of(gw, bearer) == 200  # the first loads the script (EVALSHA, NOSCRIPT, EVAL)
    requests = 20

    with redis.Redis.from_url(redis_url) as server:  # one connection: its own commands are only INFO
        before = commands_run(server)
        statuses = [status_of(gw, bearer, stream=i % 2 == 1) for i in range(requests)]
        expected = Counter({name: calls * requests for name, calls in per_request.items()})

        def spent() -> Counter[str]:
            used = commands_run(server) - before
            del used["info"]
            return used

        # The tokens an answer used are written after the client has it: polled for, within a bound.
        deadline = time.monotonic() + 5
        while spent() != expected and time.monotonic() < deadline:
            time.sleep(0.05)

        assert statuses == [200] * requests
        assert spent() == expected
