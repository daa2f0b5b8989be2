"""The verified caller of a request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Principal:
    issuer: str
    subject: str
    scopes: frozenset[str]
    expires_at: float
    claims: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # The verified bearer token itself: the subject token of a token exchange (contract 14), never shown.
    token: str = field(default="", compare=False, hash=False, repr=False)
