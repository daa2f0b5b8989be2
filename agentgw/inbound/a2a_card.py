"""The agent card a client sees through the gateway (contracts 8 and 11).

Every URL in it points at the gateway or is gone: a URL under the backend's
base is rewritten onto the gateway, any other (documentation, icons, the
provider's site, another host's endpoint) is removed, so a client that follows
the card never leaves the gateway.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import SplitResult, urlsplit

from agentgw.auth.principal import Principal

# Read as a browser or a URL library would: with tabs and newlines dropped, backslashes as
# slashes, an authority (`//host`) or a scheme that names a host of its own (`http:evil`).
_URL_LIKE = re.compile(r"^(?:[a-z][a-z0-9+.\-]*:)?//|^(?:https?|wss?|ftp|file):", re.IGNORECASE)
_IGNORED_IN_URLS = str.maketrans("", "", "\t\n\r")
_C0_AND_SPACE = "".join(chr(c) for c in range(0x21))


class _Removed:
    """Marks a value the served card leaves out."""


_REMOVED = _Removed()


def rewrite_card(
    card: dict[str, Any], replica_url: str, gateway_url: str, principal: Principal | None
) -> dict[str, Any]:
    """The card a client sees: every endpoint the gateway, only the skills the caller may use."""
    legacy = "url" in card  # 0.3 names its endpoint in `url`, v1 in `supportedInterfaces`
    confined = _confine(card, _Urls(replica_url, gateway_url))
    served: dict[str, Any] = confined if isinstance(confined, dict) else {}
    interfaces = served.get("supportedInterfaces")
    if isinstance(interfaces, list):
        jsonrpc_only = [
            i for i in interfaces if isinstance(i, dict) and str(i.get("protocolBinding", "")).upper() == "JSONRPC"
        ]
        served["supportedInterfaces"] = [{**i, "url": gateway_url} for i in jsonrpc_only]
    if legacy:
        served["url"] = gateway_url
        served["preferredTransport"] = "JSONRPC"
        served.pop("additionalInterfaces", None)
    scopes = principal.scopes if principal is not None else frozenset()
    if isinstance(served.get("skills"), list):
        served["skills"] = [s for s in served["skills"] if isinstance(s, dict) and _skill_allowed(s, scopes)]
    return served


class _Urls:
    """Decides what becomes of each URL-looking string of a card."""

    def __init__(self, replica_url: str, gateway_url: str) -> None:
        self._replica = urlsplit(replica_url.rstrip("/"))
        self._gateway_url = gateway_url.rstrip("/")
        self._gateway = urlsplit(self._gateway_url)

    def served(self, value: str) -> str | _Removed:
        normalised = value.translate(_IGNORED_IN_URLS).strip(_C0_AND_SPACE).replace("\\", "/")
        if not _URL_LIKE.match(normalised):
            return value
        if normalised != value:
            return _REMOVED  # a URL written to be read differently by different readers
        try:
            parts = urlsplit(value)
            if parts.username is not None or parts.password is not None:
                return _REMOVED
            if _origin(parts) == _origin(self._gateway):
                return value
            if _origin(parts) == _origin(self._replica) and _under(parts.path, self._replica.path):
                served = self._gateway_url + parts.path[len(self._replica.path) :]
                return (
                    served
                    + (f"?{parts.query}" if parts.query else "")
                    + (f"#{parts.fragment}" if parts.fragment else "")
                )
        except ValueError:  # an invalid port, say
            pass
        return _REMOVED


def _origin(parts: SplitResult) -> tuple[str, str, int]:
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


def _under(path: str, base: str) -> bool:
    return base == "" or path == base or path.startswith(base.rstrip("/") + "/")


def _confine(value: Any, urls: _Urls) -> Any:
    if isinstance(value, str):
        return urls.served(value)
    if isinstance(value, dict):
        kept = {k: _confine(v, urls) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not _REMOVED}
    if isinstance(value, list):
        return [v for v in (_confine(v, urls) for v in value) if v is not _REMOVED]
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
