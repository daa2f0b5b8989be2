"""Authentication of every protected request (contract 5.4), as pure ASGI middleware.

Step 3 of a call (`agentgw/call.py`). It passes through what it does not
protect, and when no SessionAuthPolicy is in force. The verified caller
becomes the call's `caller`.
"""

from __future__ import annotations

import logging
import re
import urllib.parse

from starlette.types import ASGIApp, Receive, Scope, Send

from agentgw.auth.jwt import Authenticator, JwksUnavailable
from agentgw.auth.principal import Principal
from agentgw.call import call_of
from agentgw.errors import InvalidToken
from agentgw.observability.refusals import Refusals
from agentgw.policy.live import LivePolicies

log = logging.getLogger("agentgw.auth")

OPENAI_PREFIX = "/v1/"  # OpenAI SDKs read errors in OpenAI's shape
PROTECTED_PREFIXES = ("/mcp/v1", "/a2a/v1", OPENAI_PREFIX)
# A bearer token in a URL ends up in logs and browser history (RFC 6750 section 5.3): refused.
_TOKEN_IN_QUERY = re.compile(rb"(?:^|&)(?:access_token|token|id_token|jwt|bearer)=|eyJ[\w-]+\.eyJ", re.IGNORECASE)


def protected(path: str) -> bool:
    return any(path == p.rstrip("/") or path.startswith(p.rstrip("/") + "/") for p in PROTECTED_PREFIXES)


class AuthMiddleware:
    def __init__(self, app: ASGIApp, live: LivePolicies, refusals: Refusals) -> None:
        self.app = app
        self.live = live
        self.refusals = refusals

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        authenticator = self.live.authenticator
        if authenticator is None or scope["type"] not in ("http", "websocket") or not protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        openai = scope["path"].startswith(OPENAI_PREFIX)
        try:
            call_of(scope).caller = await _authenticate(scope, authenticator)
        except InvalidToken as exc:
            await exc.refuse(scope, receive, send, openai=openai)
            return
        except JwksUnavailable as exc:
            # No challenge: the token may well be good, and a client told `invalid_token` would drop it.
            self.refusals.record(exc.issuer, "identity_provider_unavailable", "JWKS unreachable; answered 503")
            await exc.refuse(scope, receive, send, openai=openai)
            return
        await self.app(scope, receive, send)


async def _authenticate(scope: Scope, authenticator: Authenticator) -> Principal:
    if scope["type"] == "websocket":
        token = _websocket_token(scope)
    elif _TOKEN_IN_QUERY.search(scope.get("query_string", b"")):
        raise InvalidToken("Invalid token: credentials in the query string are refused")
    else:
        token = _bearer_token(scope)
    try:
        return await authenticator.authenticate(token)
    except (InvalidToken, JwksUnavailable):  # the identity provider's outage is answered as such, not as 401
        raise
    except Exception as exc:  # fail closed: whatever went wrong, the token is not accepted
        log.exception("token verification failed unexpectedly")
        raise InvalidToken("Invalid token: rejected") from exc


def _websocket_token(scope: Scope) -> str:
    """The Authorization header, or else `?access_token=` (RFC 6750 2.3): mcp 1.x's
    websocket_client, like a browser, cannot set headers on the handshake. Query
    strings are never logged."""
    if any(k == b"authorization" for k, _ in scope["headers"]):
        return _bearer_token(scope)
    tokens = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1")).get("access_token", [])
    if len(tokens) != 1 or not tokens[0]:
        raise InvalidToken("Invalid token: a bearer token is required (Authorization header or access_token)")
    return str(tokens[0])


def _bearer_token(scope: Scope) -> str:
    values = [v for k, v in scope["headers"] if k == b"authorization"]
    if len(values) != 1:
        raise InvalidToken("Invalid token: one Authorization header with a bearer token is required")
    scheme, _, token = values[0].decode("latin-1").partition(" ")
    token = str(token).strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise InvalidToken("Invalid token: the Authorization header must be 'Bearer <token>'")
    return token
