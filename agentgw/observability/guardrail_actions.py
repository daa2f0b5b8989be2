"""Every guardrail action and decision (contract 15): counted in agentgw_guardrail_actions_total,
logged as one JSON line without the matched text, and appended to the audit stream."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from agentgw.observability.audit import AuditLog
from agentgw.observability.metrics import Metrics
from agentgw.policy.guardrails import Finding

log = logging.getLogger("agentgw.guardrails")


@dataclass(frozen=True, slots=True)
class Where:
    """What a guarded message belongs to: its traffic's target, the caller, the session, and what
    carried it (a JSON-RPC method, or `answer`)."""

    target: str
    subject: str | None
    session_id: str | None
    carrier: str


class GuardrailActions:
    def __init__(self, metrics: Metrics, audit: AuditLog) -> None:
        self._metrics = metrics
        self._audit = audit

    def found(self, findings: Iterable[Finding], where: Where) -> None:
        """Secrets redacted, blocked or reported in what a server sent."""
        for finding in findings:
            self._metrics.guardrail_action(finding.detector, finding.action)
            self._record(where, f"guardrail_{finding.action}", finding.detector)

    def refused(self, where: Where, reason: str) -> None:
        """A server-to-client request kept from the client (sampling denied, an elicitation asking
        for a secret): `reason` (sampling, elicitation) is the detector it is counted under."""
        self._metrics.guardrail_action(reason, "block")
        self._record(where, "guardrail_block", reason)

    def relayed(self, where: Where) -> None:
        """A server-to-client request the policies let through: audited too (contract 15)."""
        self._record(where, "guardrail_allow", None)

    def _record(self, where: Where, decision: str, reason: str | None) -> None:
        fields: dict[str, str | None] = {"level": "warning", "logger": log.name, "event": "guardrail"}
        fields["target"] = where.target
        fields.update(method=where.carrier, decision=decision, reason=reason)
        log.warning("guardrail action", extra={"fields": fields})
        self._audit.record(
            subject=where.subject,
            session_id=where.session_id,
            target=where.target,
            tool="",
            decision=decision,
            reason=reason,
            method=where.carrier,
        )
