"""RateLimitPolicy for every kind of call (llm, mcp, a2a), against the memory store and a real Redis:
one store operation per admitted request, none where no tier applies, 429 over the limit."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from agentgw.auth.principal import Principal
from agentgw.errors import RATE_LIMITED, RateLimited
from agentgw.policy import rate_limits
from agentgw.policy.loader import load_policies
from agentgw.policy.model import RateLimitPolicy
from agentgw.sessions.redis import RedisSessionStore
from agentgw.sessions.store import SessionStore
from tests.support import poll

# Nothing listens on port 1: any store operation would fail with StoreUnavailable.
NO_REDIS = "redis://127.0.0.1:1/0"


def policy(applies_to: str, tiers: str, default: str | None = "basic") -> str:
    return f"""\
apiVersion: agentgw.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: limits-{uuid.uuid4().hex[:6]}}}
spec:
  appliesTo: {applies_to}
  tierClaim: tier
  {f"defaultTier: {default}" if default else ""}
  tiers:
{tiers}
"""


def load(tmp_path: Path, *documents: str) -> list[RateLimitPolicy]:
    path = tmp_path / f"policies-{uuid.uuid4().hex}.yaml"
    path.write_text("---\n".join(documents))
    return load_policies([str(path)]).rate_limits


def caller(**claims: str) -> Principal:
    return Principal("https://issuer.test", f"user-{uuid.uuid4().hex}", frozenset(), time.time() + 600, dict(claims))


def in_one_minute() -> None:
    """Skip past the last seconds of a clock minute: a count that crosses one starts again."""
    while time.time() % rate_limits.WINDOW > rate_limits.WINDOW - 2:
        time.sleep(0.1)


async def test_no_policy_and_no_tier_cost_no_store_operation(tmp_path: Path) -> None:
    unreachable = RedisSessionStore.for_url(NO_REDIS, "none:")
    no_default = load(tmp_path, policy("[mcp]", "    gold: {requestsPerMinute: 1}", default=None))
    llm_only = load(tmp_path, policy("[llm]", "    basic: {requestsPerMinute: 1}"))
    tokens_only = load(tmp_path, policy("[mcp]", "    basic: {tokensPerMinute: 1}"))
    try:
        for _ in range(3):  # more than any limit: nothing was counted, and nothing failed
            assert await rate_limits.admit([], unreachable, caller(), "llm") is None
            assert await rate_limits.admit(no_default, unreachable, caller(), "mcp") is None  # no claim, no default
            assert await rate_limits.admit(llm_only, unreachable, caller(), "a2a") is None
            assert await rate_limits.admit(tokens_only, unreachable, caller(), "mcp") is None  # tokens: llm only
    finally:
        await unreachable.close()


@pytest.mark.parametrize("kind", ["mcp", "a2a", "llm"])
async def test_requests_over_the_tier_limit_are_429_with_retry_after(
    tmp_path: Path, store: SessionStore, kind: rate_limits.Kind
) -> None:
    policies = load(tmp_path, policy(f"[{kind}]", "    basic: {requestsPerMinute: 3}"))
    who = caller()
    in_one_minute()

    admitted = [await rate_limits.admit(policies, store, who, kind) for _ in range(3)]
    with pytest.raises(RateLimited) as limited:
        await rate_limits.admit(policies, store, who, kind)

    assert admitted == [None] * 3  # no token limit: nothing to count after the answer
    assert limited.value.http_status == 429
    assert 1 <= int(limited.value.headers["retry-after"]) <= 61
    assert json.loads(limited.value.body())["error"]["code"] == RATE_LIMITED
    error = json.loads(limited.value.openai_body())["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert await rate_limits.admit(policies, store, caller(), kind) is None  # another subject has its own count


async def test_each_kind_a_policy_applies_to_is_counted_apart(tmp_path: Path, store: SessionStore) -> None:
    policies = load(tmp_path, policy("[llm, mcp, a2a]", "    basic: {requestsPerMinute: 2}"))
    who = caller()
    in_one_minute()

    for kind in ("llm", "mcp", "a2a"):
        for _ in range(2):
            await rate_limits.admit(policies, store, who, kind)
    for kind in ("llm", "mcp", "a2a"):
        with pytest.raises(RateLimited):
            await rate_limits.admit(policies, store, who, kind)


async def test_the_tier_claim_picks_the_tier_and_an_unknown_one_the_default(
    tmp_path: Path, store: SessionStore
) -> None:
    policies = load(tmp_path, policy("[mcp]", "    basic: {requestsPerMinute: 1}\n    gold: {requestsPerMinute: 5}"))
    gold, stranger = caller(tier="gold"), caller(tier="platinum")
    in_one_minute()

    for _ in range(5):
        await rate_limits.admit(policies, store, gold, "mcp")
    await rate_limits.admit(policies, store, stranger, "mcp")

    with pytest.raises(RateLimited):
        await rate_limits.admit(policies, store, gold, "mcp")
    with pytest.raises(RateLimited):
        await rate_limits.admit(policies, store, stranger, "mcp")


async def test_spent_tokens_refuse_the_next_chat_request(tmp_path: Path, store: SessionStore) -> None:
    policies = load(tmp_path, policy("[llm]", "    basic: {tokensPerMinute: 10}"))
    who = caller()
    in_one_minute()

    account = await rate_limits.admit(policies, store, who, "llm")
    assert account is not None
    rate_limits.spend_tokens(store, account, 12)

    async def refused() -> bool:
        try:
            await rate_limits.admit(policies, store, who, "llm")
        except RateLimited:
            return True
        return False

    assert await poll(refused, timeout=5, interval=0.01)  # written in the background, so polled for
    assert await rate_limits.admit(policies, store, caller(), "llm") is not None
