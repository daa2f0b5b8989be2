"""The agent card a client sees through the gateway (contract 8)."""

from __future__ import annotations

import copy
from typing import Any

from agentgw.auth.principal import Principal


def rewrite_card(
    card: dict[str, Any], replica_url: str, gateway_url: str, principal: Principal | None
) -> dict[str, Any]:
    """The card a client sees: every endpoint the gateway, only the skills the caller may use."""
    card = _replace_urls(copy.deepcopy(card), replica_url, gateway_url)
    interfaces = card.get("supportedInterfaces")
    if isinstance(interfaces, list):
        jsonrpc_only = [
            i for i in interfaces if isinstance(i, dict) and str(i.get("protocolBinding", "")).upper() == "JSONRPC"
        ]
        card["supportedInterfaces"] = [{**i, "url": gateway_url} for i in jsonrpc_only]
    if "url" in card:
        card["url"] = gateway_url
        card["preferredTransport"] = "JSONRPC"
        card.pop("additionalInterfaces", None)
    scopes = principal.scopes if principal is not None else frozenset()
    if isinstance(card.get("skills"), list):
        card["skills"] = [s for s in card["skills"] if isinstance(s, dict) and _skill_allowed(s, scopes)]
    return card


def _replace_urls(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return new + value[len(old) :] if value.startswith(old) else value
    if isinstance(value, dict):
        return {k: _replace_urls(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_urls(v, old, new) for v in value]
    return value


def _skill_allowed(skill: dict[str, Any], scopes: frozenset[str]) -> bool:
    """A skill with security requirements shows only to a caller meeting one of them."""
    requirements = skill.get("securityRequirements") or skill.get("security") or []
    if not isinstance(requirements, list) or not requirements:
        return True
    return any(_required_scopes(r) <= scopes for r in requirements if isinstance(r, dict))


def _required_scopes(requirement: dict[str, Any]) -> set[str]:
    """v1 `{"schemes": {name: {"list": [scopes]}}}` or 0.3 `{name: [scopes]}`."""
    schemes = requirement.get("schemes", requirement)
    needed: set[str] = set()
    for listed in schemes.values() if isinstance(schemes, dict) else []:
        items = listed.get("list", []) if isinstance(listed, dict) else listed
        if isinstance(items, list):
            needed.update(s for s in items if isinstance(s, str))
    return needed
