"""What an operator sees of the guardrails' actions, read alike by the MCP, A2A and chat guardrail
tests: the action counter on the admin port's /metrics, the guardrail decisions in the audit tail,
and the guardrail log lines."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.support import InProcessGateway, RawResponse, raw_request

GUARDRAIL_ACTIONS = "agentgw_guardrail_actions_total"
GUARDRAIL_EVENT = "guardrail"
# More entries than any test writes: the whole tail.
AUDIT_TAIL = 1000


def metric_series(page: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every series of the metric `name` on a /metrics page, by its labels."""
    series = {}
    for labels, value in re.findall(rf"^{name}\{{([^}}]*)\}} (\S+)$", page, re.M):
        series[frozenset(re.findall(r'(\w+)="([^"]*)"', labels))] = float(value)
    return series


def guardrail_actions(page: str) -> dict[tuple[str, str], float]:
    """agentgw_guardrail_actions_total by (detector, action), from a /metrics page."""
    counted = metric_series(page, GUARDRAIL_ACTIONS)
    return {(dict(labels)["detector"], dict(labels)["action"]): value for labels, value in counted.items()}


def guardrail_decisions(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The audit entries a guardrail decided."""
    return [entry for entry in entries if str(entry["decision"]).startswith("guardrail")]


async def _admin_get(gw: InProcessGateway, path: str) -> RawResponse:
    assert gw.admin_port is not None
    return await raw_request(gw.admin_port, "GET", path, [("Host", f"127.0.0.1:{gw.admin_port}")])


async def guardrail_counts(gw: InProcessGateway) -> dict[tuple[str, str], float]:
    """agentgw_guardrail_actions_total by (detector, action), scraped from the admin port of a
    gateway served in this event loop."""
    scraped = await _admin_get(gw, "/metrics")
    return guardrail_actions(scraped.body.decode())


async def audit_entries(gw: InProcessGateway) -> list[dict[str, Any]]:
    """The guardrail decisions in the audit tail, from the admin port of a gateway served in this event loop."""
    tail = await _admin_get(gw, f"/admin/audit?n={AUDIT_TAIL}")
    return guardrail_decisions(tail.json()["entries"])


def guardrail_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The fields of every guardrail log line captured."""
    fields = [getattr(record, "fields", {}) for record in caplog.records]
    return [line for line in fields if line.get("event") == GUARDRAIL_EVENT]


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record, message and fields, as one text to search for what must not be logged."""
    return "\n".join(f"{record.getMessage()} {getattr(record, 'fields', '')}" for record in caplog.records)
