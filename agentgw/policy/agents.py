"""Decide whether a caller may use a method of an A2A agent (AgentPolicy, contract 8).

v1.0 and 0.3 name the same methods differently; both are folded to the v1
name first, so a rule on `CancelTask` also covers `tasks/cancel`.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from agentgw.policy.engine import Decision, evaluating, evaluation_failed
from agentgw.policy.model import AgentPolicy

V1_NAME_OF = {
    "message/send": "SendMessage",
    "message/stream": "SendStreamingMessage",
    "tasks/get": "GetTask",
    "tasks/list": "ListTasks",
    "tasks/cancel": "CancelTask",
    "tasks/resubscribe": "SubscribeToTask",
    "tasks/pushNotificationConfig/set": "CreateTaskPushNotificationConfig",
    "tasks/pushNotificationConfig/get": "GetTaskPushNotificationConfig",
    "tasks/pushNotificationConfig/list": "ListTaskPushNotificationConfigs",
    "tasks/pushNotificationConfig/delete": "DeleteTaskPushNotificationConfig",
    "agent/getAuthenticatedExtendedCard": "GetExtendedAgentCard",
}
_FOLDED = {name.lower(): v1 for name, v1 in V1_NAME_OF.items()} | {v1.lower(): v1 for v1 in V1_NAME_OF.values()}


def v1_method(method: str) -> str:
    """The v1.0 name of an A2A method, whichever generation (or letter case) named it."""
    return _FOLDED.get(method.lower(), method)


class AgentPolicyEngine:
    def __init__(self, policies: list[AgentPolicy]) -> None:
        self._policies = policies

    def decide(self, agent: str, method: str, scopes: frozenset[str]) -> Decision:
        try:
            return self._decide(agent, v1_method(method), scopes)
        except Exception as exc:  # a rule that cannot be evaluated denies
            return evaluation_failed(exc, "tool", method, agent)

    def _decide(self, agent: str, method: str, scopes: frozenset[str]) -> Decision:
        policies = [p for p in self._policies if p.spec.target_refs is None or agent in p.spec.target_refs]
        if not policies:
            return Decision(True, "tool", method, rule="no AgentPolicy applies to this agent")
        for policy in policies:
            with evaluating(policy.metadata.name):
                denied = any(v1_method(denied) == method for denied in policy.spec.deny_list)
            if denied:
                return Decision(False, "tool", method, "deny_list", policy.metadata.name, rule="denyList")
        for policy in policies:
            with evaluating(policy.metadata.name):
                decision = _verdict(policy, agent, method, scopes)
            if decision is not None:
                return decision
        return Decision(True, "tool", method, policy=policies[0].metadata.name, rule="allowed")


def _verdict(policy: AgentPolicy, agent: str, method: str, scopes: frozenset[str]) -> Decision | None:
    """One policy's denial, or None when it lets the call through."""
    spec, name = policy.spec, policy.metadata.name
    if spec.allowed_methods is not None and method not in {v1_method(m) for m in spec.allowed_methods}:
        return Decision(False, "tool", method, "not_allowed", name, rule="allowedMethods")
    rule = next((r for r in spec.allowed_agents if fnmatchcase(agent, r.name)), None)
    if rule is None:
        return (
            Decision(False, "tool", method, "not_allowed", name, rule="no rule")
            if spec.default_action == "deny"
            else None
        )
    required = tuple(rule.allowed_scopes or ())
    if required and not scopes.intersection(required):
        return Decision(False, "tool", method, "missing_scope", name, required)
    if rule.allowed_methods is not None and method not in {v1_method(m) for m in rule.allowed_methods}:
        return Decision(False, "tool", method, "not_allowed", name, rule="allowedMethods")
    return None
