"""The verified caller of a request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.types import Scope

# Where the auth middleware leaves the verified caller in the ASGI scope.
SCOPE_KEY = "agentgw.principal"


@dataclass(frozen=True)
class Principal:
    issuer: str
    subject: str
    scopes: frozenset[str]
    expires_at: float
    claims: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def principal_of(scope: Scope) -> Principal | None:
    """The request's verified caller; None when no SessionAuthPolicy applies."""
    principal: Principal | None = scope.get(SCOPE_KEY)
    return principal
