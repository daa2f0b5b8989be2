"""RateLimitPolicy (contract 9): requests and tokens per minute per token subject, for chat, MCP and A2A.

The counts live in the session store, so N replicas share one limit rather than
multiplying it (LiteLLM #27736). Admitting a request costs one store round trip
when a tier applies to the caller and none otherwise: the request is counted
and the subject's token count read in the same operation (`add_many`). The
tokens an answer used are written after the client has it, in the background:
nothing waits on that write, and a failed one is logged.

A counter lives per subject, kind (llm, mcp, a2a) and clock minute: a tier
applied to several kinds limits each kind by itself, so an agent's MCP calls
never spend its chat budget. Tokens are counted for chat only.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from agentgw.auth.principal import Principal
from agentgw.errors import RateLimited
from agentgw.policy.model import RateLimitPolicy, RateLimitTier
from agentgw.sessions.store import Counters

log = logging.getLogger("agentgw.policy.rate_limits")

Kind = Literal["llm", "mcp", "a2a"]
WINDOW = 60.0  # limits count per clock minute
ANONYMOUS = "anonymous"

# Background usage writes, held so they are not collected before they ran.
_writes: set[asyncio.Task[None]] = set()


@dataclass(frozen=True, slots=True)
class TokenAccount:
    """Where an admitted chat request's tokens are counted: its subject's tier limits tokens."""

    subject: str


def tier_of(policies: Sequence[RateLimitPolicy], principal: Principal | None, kind: Kind) -> RateLimitTier | None:
    """The caller's tier: from the first policy applying to `kind` that names one for the caller
    (the tier its claim names, else the policy's default); None when no tier applies."""
    for policy in policies:
        spec = policy.spec
        if kind not in spec.applies_to:
            continue
        claimed = principal.claims.get(spec.tier_claim) if principal is not None else None
        name = claimed if isinstance(claimed, str) and claimed in spec.tiers else spec.default_tier
        if name is not None:
            return spec.tiers[name]
    return None


async def admit(
    policies: Sequence[RateLimitPolicy], store: Counters, principal: Principal | None, kind: Kind
) -> TokenAccount | None:
    """Count one request of `kind`, or refuse it with RateLimited (StoreUnavailable, 503, when the
    store does not answer: a limit fails closed). The TokenAccount to count the answer's tokens in
    when the caller's tier limits chat tokens, else None."""
    if not policies:
        return None
    tier = tier_of(policies, principal, kind)
    if tier is None:
        return None
    requests_limit = tier.requests_per_minute
    tokens_limit = tier.tokens_per_minute if kind == "llm" else None
    if requests_limit is None and tokens_limit is None:
        return None
    subject = principal.subject if principal is not None else ANONYMOUS
    now = time.time()
    window = int(now // WINDOW)
    counters: list[tuple[str, int]] = []
    if requests_limit is not None:
        counters.append((_key(kind, "requests", window, subject), 1))
    if tokens_limit is not None:
        counters.append((_key(kind, "tokens", window, subject), 0))  # read, not spent: the answer spends
    totals = iter(await store.add_many(counters, WINDOW * 2))
    retry_after = int(WINDOW - now % WINDOW) + 1
    if requests_limit is not None and next(totals) > requests_limit:
        raise _limited("requests", requests_limit, retry_after)
    if tokens_limit is not None and next(totals) >= tokens_limit:
        raise _limited("tokens", tokens_limit, retry_after)
    return TokenAccount(subject) if tokens_limit is not None else None


def spend_tokens(store: Counters, account: TokenAccount | None, tokens: int) -> None:
    """Add an answer's tokens to its subject's count, in the background: the client has its answer
    already, and the next request of the subject reads the count."""
    if account is None or tokens <= 0:
        return
    key = _key("llm", "tokens", int(time.time() // WINDOW), account.subject)
    task = asyncio.get_running_loop().create_task(_spend(store, key, tokens))
    _writes.add(task)
    task.add_done_callback(_writes.discard)


async def _spend(store: Counters, key: str, tokens: int) -> None:
    try:
        await store.add_many([(key, tokens)], WINDOW * 2)
    except Exception:  # only the count is lost, and that must be known
        log.exception("the tokens of an answer could not be counted")


def _key(kind: Kind, what: str, window: int, subject: str) -> str:
    # The counters one request adds to share a hash tag, so a Redis Cluster keeps them in one slot
    # (a digest: a subject may hold braces). The subject last: whatever it holds, no two counters
    # share a key.
    tag = hashlib.sha256(f"{kind}:{window}:{subject}".encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"ratelimit:{{{tag}}}:{kind}:{what}:{window}:{subject}"


def _limited(what: str, limit: int, retry_after: int) -> RateLimited:
    return RateLimited(f"Rate limit reached: {limit} {what} per minute", retry_after=retry_after)
