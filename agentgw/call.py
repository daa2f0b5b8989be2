"""One call through the gateway, and the order of its steps: the one place that order is written.

Every proxied request, whatever its protocol (MCP over Streamable HTTP or
WebSocket, A2A, chat), is one `Call`, made once when the request arrives and
filled in as it goes. It takes these steps, in this order:

1. **observe, start** (`observability/requests.py`, the outermost middleware): the Call is
   made and the clock started, so that every answer, refusals included, is logged and counted.
2. **host and origin** (`inbound/origin_guard.py`): before anything else, so that a
   DNS-rebinding page learns nothing, not even whether a token is valid.
3. **authenticate** (`auth/middleware.py`): the bearer token becomes `call.caller`, before a
   byte of the body is read, so an anonymous client cannot make the gateway read or parse.
4. **read** (the endpoint): the body is parsed strictly into `call.message` and serialised
   once; what the policy checks is exactly what is forwarded.
5. **session** (`Steps.session`): the caller's MCP session (or stateless handle), and whether the
   caller owns it. Before the policy: a session of another subject is refused whatever the
   message asks, and the policy's audit line names the session. A2A and chat have none.
6. **policy** (`Steps.policy`): tool, prompt, resource and agent policies; every `tools/call`
   decision is audited (contract 6). A denied call never reaches a backend (a tool never seen
   listed has the target's tools listed first, at most once per target every 10 s).
7. **rate limit** (`CallPipeline.run`): counted after the policy, so a denied call does not use
   up the caller's limit, and before any backend is touched. One store round trip when a
   RateLimitPolicy applies to the caller, none otherwise.
8. **upstream** (`Steps.upstream`): sent to a backend (for A2A, the replica holding the task the
   call names; a task of another subject does not exist), with failover where the protocol
   allows it; a backend's failure is answered as the backend's fault (502/503/504).
9. **relay** (`Steps.relay`): the answer streamed back, read whole and checked only where the
   gateway acts on it (contract 11).
10. **observe, end**: the log line and the request metrics, from what the Call gathered.

Steps 5 to 9 are `CallPipeline.run`; each protocol says what it does at each of them
(`inbound/mcp_calls.py`, `inbound/a2a.py`, `inbound/openai_chat.py`). An MCP GET stream
and DELETE are no calls: they name a session (steps 1 to 5) and go straight to its backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from starlette.types import Receive, Scope, Send

from agentgw.auth.principal import Principal
from agentgw.policy.live import LivePolicies
from agentgw.policy.rate_limits import Kind, TokenAccount, admit
from agentgw.sessions.store import Counters

# Where the observer leaves the Call in the ASGI scope.
CALL_KEY = "agentgw.call"

A = TypeVar("A")


@dataclass(slots=True)
class Call:
    """One request on its way: who sent it, what it asks, where it went, what was decided.

    Tokens, secrets and message contents other than names never get into the log
    fields (`observability/requests.py` picks them), so they cannot reach the log.
    """

    route: str  # the endpoint template, a metrics label
    http_method: str
    request_id: str  # X-Request-Id, joining the log lines of one request across hops
    caller: Principal | None = None
    message: Any = None  # the parsed body: a JSON-RPC message or batch, or a chat request
    rpc_method: str | None = None  # the JSON-RPC method (or "batch"), when the request carries one
    target: str | None = None  # MCP target, A2A agent or LLM provider
    session_id: str | None = None  # the gateway's session or handle; logged hashed
    backend: str | None = None
    tool: str | None = None
    decision: str | None = None  # allow | deny, when a policy decided
    tokens: TokenAccount | None = None  # where a chat answer's tokens are counted
    status: int = 0

    @property
    def subject(self) -> str | None:
        return self.caller.subject if self.caller is not None else None

    @property
    def rpc_id(self) -> Any:
        """The id of the JSON-RPC request, which every error answer names; None for a batch."""
        return self.message.get("id") if isinstance(self.message, dict) else None


def call_of(scope: Scope) -> Call:
    """The scope's Call, made by the observer; one made here for a request that bypassed it."""
    call: Call | None = scope.get(CALL_KEY)
    if call is None:
        call = scope[CALL_KEY] = Call("", scope.get("method", ""), "")
    return call


class Steps(Protocol[A]):
    """What one protocol does at steps 5, 6, 8 and 9 of a call; `A` is what its upstream answered."""

    kind: Kind  # the traffic a RateLimitPolicy names

    async def session(self, call: Call) -> None: ...

    async def policy(self, call: Call) -> None: ...

    async def upstream(self, call: Call) -> A: ...

    async def relay(self, call: Call, answer: A, receive: Receive, send: Send) -> None:
        """Send `answer` to the client; it owns the answer from here (releases it whatever happens)."""
        ...


class CallPipeline:
    """Steps 5 to 9, in the order the module's docstring gives and explains, for every protocol."""

    def __init__(self, live: LivePolicies, counters: Counters) -> None:
        self.live = live
        self.counters = counters

    async def run(self, steps: Steps[A], call: Call, receive: Receive, send: Send) -> None:
        await steps.session(call)
        await steps.policy(call)
        call.tokens = await admit(self.live.policies.rate_limits, self.counters, call.caller, steps.kind)
        answer = await steps.upstream(call)
        await steps.relay(call, answer, receive, send)
