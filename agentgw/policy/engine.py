"""Decide whether a caller may use a tool, prompt or resource of a target (contract 6).

Deny wins across every policy that applies; a name on no list follows the
policy's `defaultAction`; evaluation errors deny. Decisions are pure functions
of (target, kind, name, scopes), so each is computed once and cached.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

from agentgw.policy.model import NameRule, ToolPolicy

log = logging.getLogger("agentgw.policy")

Kind = Literal["tool", "prompt", "resource"]
KIND_OF_METHOD: dict[str, Kind] = {"tools/call": "tool", "prompts/get": "prompt", "resources/read": "resource"}
# MCP's tool-name rule; a name outside it is never called and never listed.
TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")  # used with fullmatch: `$` would let a final newline in
_DECISION_CACHE_SIZE = 50_000


@dataclass(frozen=True)
class Decision:
    allowed: bool
    kind: Kind
    name: str
    reason: str | None = None  # deny_list | missing_scope | not_allowed (| quarantined | invalid_arguments)
    policy: str | None = None
    required_scopes: tuple[str, ...] = ()
    rule: str | None = None  # what decided, in words, for `agentgw policy explain` and logs


class PolicyEvaluationFailed(Exception):
    """A policy that could not be evaluated (a rule of an unexpected type, say): the call is denied."""

    def __init__(self, policy: str) -> None:
        super().__init__(f"policy {policy} could not be evaluated")
        self.policy = policy


@contextmanager
def evaluating(policy: str) -> Iterator[None]:
    """Whatever fails while a policy is evaluated becomes PolicyEvaluationFailed naming it, so the
    denial is logged with the policy an operator has to fix."""
    try:
        yield
    except Exception as exc:
        raise PolicyEvaluationFailed(policy) from exc


def evaluation_failed(exc: Exception, kind: Kind, name: str, where: str) -> Decision:
    """The denial for a failed evaluation (fail closed), logged with the policy and the cause."""
    policy = exc.policy if isinstance(exc, PolicyEvaluationFailed) else None
    log.error("policy %s failed to evaluate %s %r on %s; denying", policy or "(none)", kind, name, where, exc_info=exc)
    return Decision(False, kind, name, "not_allowed", policy, rule="evaluation failed")


def normalise(name: str) -> str:
    """NFKC then case-folded: `Exec_Shell` and full-width letters compare equal to `exec_shell`."""
    return unicodedata.normalize("NFKC", name).casefold()


def has_invisible(text: str) -> bool:
    """Format (zero-width, bidi, tag block) and control characters hide what a name says."""
    return any(unicodedata.category(char) in ("Cf", "Cc", "Co", "Cs") for char in text)


class _Rules:
    """One list of NameRules, exact names looked up before globs are tried."""

    def __init__(self, rules: list[NameRule]) -> None:
        self.exact = {r.name: r for r in rules if not _is_glob(r.name)}
        self.globs = [r for r in rules if _is_glob(r.name)]

    def match(self, name: str) -> NameRule | None:
        rule = self.exact.get(name)
        if rule is not None:
            return rule
        return next((r for r in self.globs if fnmatchcase(name, r.name)), None)


class _CompiledPolicy:
    def __init__(self, policy: ToolPolicy) -> None:
        spec = policy.spec
        self.name = policy.metadata.name
        self.target_refs = None if spec.target_refs is None else frozenset(spec.target_refs)
        self.default_allow = spec.default_action == "allow"
        self.deny = [normalise(pattern) for pattern in spec.deny_list]
        self.rules: dict[Kind, _Rules | None] = {
            "tool": _Rules(spec.allowed_tools),
            "prompt": None if spec.allowed_prompts is None else _Rules(spec.allowed_prompts),
            "resource": None if spec.allowed_resources is None else _Rules(spec.allowed_resources),
        }

    def applies_to(self, target: str, named_only: bool) -> bool:
        if self.target_refs is None:
            return not named_only
        return target in self.target_refs


class PolicyEngine:
    def __init__(self, policies: list[ToolPolicy]) -> None:
        self._policies = [_CompiledPolicy(p) for p in policies]
        self._by_target: dict[tuple[str, bool], list[_CompiledPolicy]] = {}
        self._decisions: dict[tuple[str, Kind, str, frozenset[str], bool], Decision] = {}

    def governs(self, target: str) -> bool:
        """Whether any ToolPolicy applies to the target (without one, nothing is restricted)."""
        return bool(self._applicable(target))

    def decide(self, target: str, kind: Kind, name: str, scopes: frozenset[str], named_only: bool = False) -> Decision:
        """`named_only`: only the policies whose `targetRefs` name `target` apply (a virtual server's
        exposed names: a policy for every target governs the members' own names, not these)."""
        key = (target, kind, name, scopes, named_only)
        decision = self._decisions.get(key)
        if decision is None:
            try:
                decision = self._decide(target, kind, name, scopes, named_only)
            except Exception as exc:  # a rule that cannot be evaluated denies
                decision = evaluation_failed(exc, kind, name, target)
            if len(self._decisions) >= _DECISION_CACHE_SIZE:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision

    def _applicable(self, target: str, named_only: bool = False) -> list[_CompiledPolicy]:
        policies = self._by_target.get((target, named_only))
        if policies is None:
            policies = [p for p in self._policies if p.applies_to(target, named_only)]
            self._by_target[(target, named_only)] = policies
        return policies

    def _decide(self, target: str, kind: Kind, name: str, scopes: frozenset[str], named_only: bool) -> Decision:
        policies = self._applicable(target, named_only)
        first = policies[0].name if policies else None
        # MCP's naming rule holds with or without a policy: such a name is never a tool.
        if has_invisible(name) or (kind == "tool" and not TOOL_NAME.fullmatch(name)):
            return Decision(False, kind, name, "not_allowed", first, rule="name breaks MCP's naming rule")
        if not policies:
            return Decision(True, kind, name, rule="no ToolPolicy applies to this target")
        folded = normalise(name)
        for policy in policies:
            with evaluating(policy.name):
                denied = next((p for p in policy.deny if fnmatchcase(folded, p)), None)
            if denied is not None:
                return Decision(False, kind, name, "deny_list", policy.name, rule=f"denyList {denied!r}")
        allowed_by = []
        for policy in policies:
            with evaluating(policy.name):
                decision = _verdict(policy, kind, name, scopes)
            if isinstance(decision, Decision):
                return decision
            allowed_by += decision
        return Decision(True, kind, name, policy=first, rule="; ".join(allowed_by) or "no list restricts this kind")


def _verdict(policy: _CompiledPolicy, kind: Kind, name: str, scopes: frozenset[str]) -> Decision | list[str]:
    """One policy's denial, or why it allows the name (nothing when it gives no list for this kind)."""
    rules = policy.rules[kind]
    if rules is None:
        return []  # this policy gives no list for this kind: it does not restrict it
    rule = rules.match(name)
    if rule is None:
        if not policy.default_allow:
            return Decision(False, kind, name, "not_allowed", policy.name, rule="on no list; defaultAction deny")
        return [f"{policy.name}: defaultAction allow"]
    required = tuple(rule.allowed_scopes or ())
    if required and not scopes.intersection(required):
        return Decision(False, kind, name, "missing_scope", policy.name, required, rule=f"allowed rule {rule.name!r}")
    return [f"{policy.name}: rule {rule.name!r}"]


def _is_glob(pattern: str) -> bool:
    return any(char in pattern for char in "*?[")
