"""Tool-poisoning defence on the MCP path (contract 6, 7 and 11).

Every message that names a tool, prompt or resource is decided before anything
is forwarded, whatever its form (request, notification, batch element).
`tools/list` answers are trimmed to what the caller may call, and only tools
the gateway has fingerprinted and scanned are listed or called. Prompts,
resources and `initialize` instructions are scanned as they are listed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import Scope

from agentgw import jsonrpc
from agentgw.auth.middleware import challenge
from agentgw.auth.principal import Principal
from agentgw.errors import BadBackendAnswer, BatchDenied, InsufficientScope, PolicyDenied
from agentgw.inbound.relay import Rewrite
from agentgw.observability.audit import AuditLog
from agentgw.observability.metrics import Metrics
from agentgw.observability.refusals import Refusals
from agentgw.observability.requests import request_info
from agentgw.policy.catalogue import ToolCatalogue
from agentgw.policy.engine import KIND_OF_METHOD, TOOL_NAME, Decision, Kind
from agentgw.policy.live import LivePolicies
from agentgw.policy.poisoning import ToolEntry, scan

log = logging.getLogger("agentgw.inbound.mcp_policy")

# A call naming a tool the catalogue does not know has the target listed again at most this often,
# so names a client invents cost the backend one listing per interval, not one per call.
REDISCOVER_AFTER = 10.0
# Where each list answer holds its items.
_LISTED_ITEMS = {
    "prompts/list": "prompts",
    "resources/list": "resources",
    "resources/templates/list": "resourceTemplates",
}

_REASON_WORDS = {
    "deny_list": "it is on a deny list",
    "missing_scope": "the token lacks a scope that allows it",
    "not_allowed": "no policy allows it",
    "quarantined": "its definition is quarantined until an operator approves it",
    "invalid_arguments": "its arguments do not match the tool's input schema",
}


class McpGuard:
    def __init__(
        self,
        live: LivePolicies,
        catalogue: ToolCatalogue,
        audit: AuditLog,
        metrics: Metrics,
        refusals: Refusals,
        enabled: bool,
    ) -> None:
        self.live = live
        self.refusals = refusals
        self.catalogue = catalogue
        self.audit = audit
        self.metrics = metrics
        self._discoveries: dict[str, asyncio.Future[None]] = {}
        self._discovered_at: dict[str, float] = {}
        self.enabled = enabled

    async def check(
        self,
        scope: Scope,
        target: str,
        messages: list[jsonrpc.Message],
        principal: Principal | None,
        session_id: str | None,
        batch: bool,
        discover: Callable[[], Awaitable[None]],
    ) -> None:
        """Raise PolicyDenied (BatchDenied for a batch) unless every named call is allowed.

        A call to a tool this gateway has never seen listed first has the backend's
        tools listed (`discover`), so no definition reaches a model unscanned.
        """
        if not self.enabled:
            return
        calls = _named_calls(messages)
        # One catalogue lookup per named call: a second only after a discovery changed the catalogue.
        entries = self._entries(target, calls)
        unseen = any(kind == "tool" and entry is None for (_, kind, _), entry in zip(calls, entries, strict=True))
        if unseen and self._may_discover(target):
            await self._discover_once(target, discover)
            entries = self._entries(target, calls)
        denied: list[tuple[jsonrpc.Message, Decision, list[str]]] = []
        for (message, kind, name), entry in zip(calls, entries, strict=True):
            decision, errors = self._decide(target, kind, message, name, entry, principal)
            if kind == "tool":
                self._record(scope, target, name, entry is not None, decision, principal, session_id)
            if not decision.allowed:
                denied.append((message, decision, errors))
        if not denied:
            return
        if batch:
            summary = [{"tool": d.name, "reason": d.reason} for _, d, _ in denied]
            raise BatchDenied("Batch refused: it holds a denied call", data={"denied": summary})
        message, decision, errors = denied[0]
        raise _denial(scope, message, decision, errors)

    def _entries(self, target: str, calls: list[_NamedCall]) -> list[ToolEntry | None]:
        return [self.catalogue.entry(target, name) if kind == "tool" else None for _, kind, name in calls]

    async def _discover_once(self, target: str, discover: Callable[[], Awaitable[None]]) -> None:
        """Calls arriving together for unseen tools share one listing of the target."""
        running = self._discoveries.get(target)
        if running is None:
            self._discovered_at[target] = time.monotonic()
            running = self._discoveries[target] = asyncio.ensure_future(discover())
            running.add_done_callback(lambda _: self._discoveries.pop(target, None))
        await asyncio.shield(running)

    def _may_discover(self, target: str) -> bool:
        last = self._discovered_at.get(target)
        return last is None or time.monotonic() - last >= REDISCOVER_AFTER or target in self._discoveries

    def _record(
        self,
        scope: Scope,
        target: str,
        tool: str,
        known: bool,
        decision: Decision,
        principal: Principal | None,
        session: str | None,
    ) -> None:
        verdict = "allow" if decision.allowed else "deny"
        self.audit.record(
            subject=principal.subject if principal else None,
            session_id=session,
            target=target,
            tool=tool,
            decision=verdict,
            reason=decision.reason,
        )
        self.metrics.tool_call(target, tool if known else None, verdict)
        info = request_info(scope)
        info.tool, info.decision = tool, verdict

    async def observe(self, target: str, tools: list[Any], max_tools: int, complete: bool) -> list[dict[str, Any]]:
        """Record a listing; the definitions recorded (fingerprinted and scanned), in listing order."""
        named = [t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]
        return await self.catalogue.observe(target, named, max_tools=max_tools, complete=complete)

    def _decide(
        self,
        target: str,
        kind: Kind,
        message: jsonrpc.Message,
        name: str,
        entry: ToolEntry | None,
        principal: Principal | None,
    ) -> tuple[Decision, list[str]]:
        scopes = principal.scopes if principal is not None else frozenset()
        decision = self.live.engine.decide(target, kind, name, scopes)
        if not decision.allowed or kind != "tool":
            return decision, []
        if entry is None:
            # Never fingerprinted nor scanned: a tool the backend did not list is not called.
            return Decision(False, kind, name, "not_allowed", decision.policy, rule="not listed by the backend"), []
        quarantined = entry.quarantine_reason(self.live.detection(target))
        if quarantined is not None:
            return Decision(False, kind, name, "quarantined", decision.policy, rule=quarantined), []
        errors = self.catalogue.argument_errors(entry, message.get("params", {}).get("arguments", {}))
        if errors:
            return Decision(False, kind, name, "invalid_arguments", decision.policy, rule="inputSchema"), errors
        return decision, []

    def answer_rewrite(
        self, target: str, method: str, message: jsonrpc.Message, principal: Principal | None, max_tools: int
    ) -> Rewrite | None:
        """How a checked answer is changed before the client sees it; None: sent as checked."""
        if not self.enabled:
            return None
        if method == "tools/list":
            complete = "cursor" not in message.get("params", {})
            return self._tools_list_rewrite(target, principal, max_tools, complete)
        items = _LISTED_ITEMS.get(method)
        if items is not None:

            async def drop_suspicious(result: dict[str, Any]) -> None:
                self._drop_suspicious(target, result, items)

            return drop_suspicious
        if method == "server/discover":

            async def scan_instructions(result: dict[str, Any]) -> None:
                self.scan_initialize(target, result)

            return scan_instructions
        return None

    def _tools_list_rewrite(
        self, target: str, principal: Principal | None, max_tools: int, complete: bool
    ) -> Rewrite:
        scopes = principal.scopes if principal is not None else frozenset()

        async def rewrite(result: dict[str, Any]) -> None:
            tools = result.get("tools")
            if not isinstance(tools, list):
                raise BadBackendAnswer("Backend's tools/list result holds no tools array")
            # Only what was recorded: a second definition under a listed name was never checked.
            recorded = await self.observe(target, tools, max_tools, complete and result.get("nextCursor") is None)
            result["tools"] = [t for t in recorded if self._listable(target, t["name"], scopes)]

        return rewrite

    def scan_initialize(self, target: str, result: dict[str, Any]) -> None:
        """Instructions reach the model like a tool description: a hit drops them (contract 11)."""
        if not self.enabled or "instructions" not in result:
            return
        if self._suspicious(target, "instructions", result["instructions"]):
            del result["instructions"]

    def _drop_suspicious(self, target: str, result: dict[str, Any], key: str) -> None:
        items = result.get(key)
        if not isinstance(items, list):
            raise BadBackendAnswer(f"Backend's list result holds no {key} array")
        result[key] = [item for item in items if not self._suspicious(target, key, item)]

    def _suspicious(self, target: str, kind: str, value: Any) -> bool:
        """Whether scanning finds an attack on the model in `value`, and the policy removes what holds one."""
        detection = self.live.detection(target)
        if not detection.enabled:
            return False
        findings = scan(value)
        if not findings:
            return False
        name = value.get("name") or value.get("uri") if isinstance(value, dict) else None
        detail = f"{kind} {name}" if isinstance(name, str) else kind
        self.refusals.record(target, "suspicious_content", f"{detail}: {', '.join(findings)}")
        return detection.action == "quarantine"

    def _listable(self, target: str, name: str, scopes: frozenset[str]) -> bool:
        if not TOOL_NAME.fullmatch(name):
            return False
        entry = self.catalogue.entry(target, name)
        if entry is None or entry.quarantine_reason(self.live.detection(target)) is not None:
            return False  # not fingerprinted and scanned (beyond max_tools), or quarantined
        return self.live.engine.decide(target, "tool", name, scopes).allowed


_NamedCall = tuple[jsonrpc.Message, Kind, str]


def _named_calls(messages: list[jsonrpc.Message]) -> list[_NamedCall]:
    """The messages that name a tool, prompt or resource, with what they name."""
    calls = []
    for message in messages:
        kind = KIND_OF_METHOD.get(message.get("method", ""))
        if kind is not None:
            name = jsonrpc.named_target(message)
            assert name is not None  # check_message made sure of it
            calls.append((message, kind, name))
    return calls


def _denial(scope: Scope, message: jsonrpc.Message, decision: Decision, errors: list[str]) -> PolicyDenied:
    reason = decision.reason or "not_allowed"
    data: dict[str, Any] = {
        "tool": decision.name,
        "reason": reason,
        "policy": decision.policy,
        "requiredScopes": list(decision.required_scopes),
    }
    if errors:
        data["errors"] = errors
    words = f"{decision.kind.capitalize()} '{decision.name}' denied: {_REASON_WORDS.get(reason, reason)}"
    required = decision.required_scopes
    denial = (
        InsufficientScope(words, data=data, challenge=challenge(scope, "insufficient_scope", " ".join(required)))
        if reason == "missing_scope"
        else PolicyDenied(words, data=data)
    )
    denial.request_id = message.get("id")
    return denial
