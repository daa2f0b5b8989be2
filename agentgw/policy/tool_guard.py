"""The policy step of an MCP call (contracts 6, 7 and 11), and the tool-poisoning defence.

Every message that names a tool, prompt or resource is decided before anything
is forwarded, whatever its form (request, notification, batch element).
`tools/list` answers are trimmed to what the caller may call, and only tools
the gateway has fingerprinted and scanned are listed or called. Prompts,
resources and `initialize` instructions are scanned as they are listed.

A call is decided in two moves, so that the guard never calls a backend
itself: `lookup` finds what the catalogue knows of the tools a message names
(one lookup per named call), and when it names a tool never listed the caller
has the target's tools listed and looks again; `decide` then rules.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agentgw import jsonrpc
from agentgw.auth.principal import Principal
from agentgw.call import Call
from agentgw.errors import BadBackendAnswer, BatchDenied, InsufficientScope, PolicyDenied
from agentgw.observability.audit import AuditLog
from agentgw.observability.metrics import Metrics
from agentgw.observability.refusals import Refusals
from agentgw.policy.catalogue import ToolCatalogue
from agentgw.policy.engine import KIND_OF_METHOD, TOOL_NAME, Decision, Kind
from agentgw.policy.live import LivePolicies
from agentgw.policy.poisoning import ToolEntry, scan

log = logging.getLogger("agentgw.policy.tool_guard")

# How an answer the gateway checks is changed before the client sees it (in place).
Rewrite = Callable[[dict[str, Any]], Awaitable[None]]
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


@dataclass(frozen=True, slots=True)
class NamedCall:
    """A message naming a tool, prompt or resource; for a tool, what the catalogue knows of it."""

    message: jsonrpc.Message
    kind: Kind
    name: str
    entry: ToolEntry | None


class ToolGuard:
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
        self.enabled = enabled

    def lookup(self, target: str, messages: list[jsonrpc.Message]) -> list[NamedCall]:
        """The messages that name a tool, prompt or resource, each with its catalogue entry."""
        if not self.enabled:
            return []
        named = []
        for message in messages:
            kind = KIND_OF_METHOD.get(message.get("method", ""))
            if kind is not None:
                name = jsonrpc.named_target(message)
                assert name is not None  # check_message made sure of it
                entry = self.catalogue.entry(target, name) if kind == "tool" else None
                named.append(NamedCall(message, kind, name, entry))
        return named

    @staticmethod
    def unseen(named: list[NamedCall]) -> bool:
        """Whether a tool is named that the backend was never seen listing: to be listed first, so
        that no definition reaches a model unscanned (and the decision's metric names a tool the
        backend has, not whatever a client sent)."""
        return any(n.kind == "tool" and n.entry is None for n in named)

    def decide(self, call: Call, target: str, named: list[NamedCall], batch: bool) -> None:
        """Raise PolicyDenied (BatchDenied for a batch) unless every named call is allowed; every
        tool call's decision is audited and counted, and noted on `call`."""
        denied: list[tuple[Decision, list[str]]] = []
        for one in named:
            decision, errors = self._decide(target, one, call.caller)
            if one.kind == "tool":
                self._record(call, target, one, decision)
            if not decision.allowed:
                denied.append((decision, errors))
        if not denied:
            return
        if batch:
            summary = [{"tool": d.name, "reason": d.reason} for d, _ in denied]
            raise BatchDenied("Batch refused: it holds a denied call", data={"denied": summary})
        raise _denial(*denied[0])

    def decide_exposed(self, call: Call, server: str, kind: Kind, exposed: str, target: str, name: str) -> None:
        """Raise PolicyDenied unless the ToolPolicies naming virtual server `server` allow the name it
        exposes (contract 12); a tool's denial is audited under the member `target` and its own `name`."""
        if not self.enabled:
            return
        scopes = call.caller.scopes if call.caller is not None else frozenset()
        decision = self.live.engine.decide(server, kind, exposed, scopes, named_only=True)
        if decision.allowed:
            return
        if kind == "tool":
            self._record(call, target, NamedCall({}, kind, name, self.catalogue.entry(target, name)), decision)
        raise _denial(decision, [])

    def _record(self, call: Call, target: str, named: NamedCall, decision: Decision) -> None:
        verdict = "allow" if decision.allowed else "deny"
        self.audit.record(
            subject=call.subject,
            session_id=call.session_id,
            target=target,
            tool=named.name,
            decision=verdict,
            reason=decision.reason,
        )
        self.metrics.tool_call(target, named.name if named.entry is not None else None, verdict)
        call.tool, call.decision = named.name, verdict

    async def observe(self, target: str, tools: list[Any], max_tools: int, complete: bool) -> list[dict[str, Any]]:
        """Record a listing; the definitions recorded (fingerprinted and scanned), in listing order."""
        named = [t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]
        return await self.catalogue.observe(target, named, max_tools=max_tools, complete=complete)

    def _decide(self, target: str, named: NamedCall, principal: Principal | None) -> tuple[Decision, list[str]]:
        scopes = principal.scopes if principal is not None else frozenset()
        kind, name, entry = named.kind, named.name, named.entry
        decision = self.live.engine.decide(target, kind, name, scopes)
        if not decision.allowed or kind != "tool":
            return decision, []
        if entry is None:
            # Never fingerprinted nor scanned: a tool the backend did not list is not called.
            return Decision(False, kind, name, "not_allowed", decision.policy, rule="not listed by the backend"), []
        quarantined = entry.quarantine_reason(self.live.detection(target))
        if quarantined is not None:
            return Decision(False, kind, name, "quarantined", decision.policy, rule=quarantined), []
        errors = self.catalogue.argument_errors(entry, named.message.get("params", {}).get("arguments", {}))
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

    def _tools_list_rewrite(self, target: str, principal: Principal | None, max_tools: int, complete: bool) -> Rewrite:
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


def _denial(decision: Decision, errors: list[str]) -> PolicyDenied:
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
    if reason == "missing_scope":
        return InsufficientScope(words, data=data, required_scopes=list(decision.required_scopes))
    return PolicyDenied(words, data=data)
