"""What the gateway refused from the server side (contract 11): one JSON log line and one count each.

A backend, agent, provider, identity provider or card that sent something the
gateway would not relay is an operator's business: the line names the target
and the reason, never the contents.
"""

from __future__ import annotations

import logging

from agentgw.observability.metrics import Metrics

log = logging.getLogger("agentgw.refusals")


class Refusals:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def record(self, target: str, reason: str, detail: str = "") -> None:
        """`detail` is the gateway's own words (a tool name at most), never what the backend sent."""
        self._metrics.backend_refusal(target, reason)
        fields = {"level": "warning", "logger": log.name, "event": "backend_refusal", "target": target}
        fields.update(reason=reason, detail=detail[:200])
        log.warning("backend refusal", extra={"fields": fields})
