"""A small local OAuth 2.0 token endpoint, for trying the credentials agentgw presents upstream.

It issues RS256 access tokens for two grants, both with `client_secret_basic` client
authentication (RFC 6749 2.3.1) and nothing else:

- `client_credentials` (RFC 6749 4.4): a token whose `sub` is the client;
- token exchange (RFC 8693): a token whose `sub` is that of the caller's HS256 `subject_token`
  and whose `act` names the client, for a gateway acting on the caller's behalf.

`scope`, `resource` (RFC 8707) and `audience` are honoured as asked: the token's `aud` names the
resource, the audience, or both. Backends check tokens against `/.well-known/jwks.json`; the
signing key is made anew at each start.

    AGENTGW_CLIENT_SECRET=... CALLER_TOKEN_SECRET=... python examples/token_endpoint.py \\
        --port 9400 --client agentgw=AGENTGW_CLIENT_SECRET \\
        --subject-issuer https://issuer.example --subject-secret-env CALLER_TOKEN_SECRET

Flags:
  --host HOST                 address to listen on (127.0.0.1)
  --port PORT                 port to listen on (9400; 0 for one the kernel picks)
  --issuer URL                the tokens' `iss` (http://HOST:PORT)
  --client ID=ENV             a client and the environment variable holding its secret (repeatable)
  --lifetime SECONDS          lifetime of issued tokens (300)
  --subject-issuer ISSUER     `iss` of the subject tokens token exchange accepts
  --subject-secret-env ENV    environment variable holding their HS256 key; without it, only
                              client_credentials is offered

Secrets are read from the environment only, and neither they nor tokens are ever logged.
Routes: POST /oauth2/token, GET /.well-known/jwks.json, GET /.well-known/oauth-authorization-server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hmac
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus, urlsplit

import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

CLIENT_CREDENTIALS = "client_credentials"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
TOKEN_PATH = "/oauth2/token"
JWKS_PATH = "/.well-known/jwks.json"
METADATA_PATH = "/.well-known/oauth-authorization-server"
FORM = "application/x-www-form-urlencoded"
# RFC 6749 5.2 names no error for a failing server; these are what token endpoints send in practice.
FAILURE_ERRORS = {400: "invalid_request", 401: "invalid_client", 403: "access_denied"}

log = logging.getLogger("token_endpoint")


class OAuthError(Exception):
    """An RFC 6749 5.2 error answer."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


@dataclass
class TokenEndpointSettings:
    """What the endpoint is: its issuer name, its clients, and whose subject tokens it exchanges."""

    issuer: str
    clients: dict[str, str]  # client_id -> client_secret
    lifetime: int = 300
    subject_issuer: str | None = None
    subject_secret: str | None = None  # HS256 key of the subject tokens; None: no token exchange


@dataclass
class TokenRequest:
    """One request to the token endpoint, as answered: without token or secret values."""

    grant_type: str | None
    client_id: str | None = None  # once authenticated
    status: int = 200
    error: str | None = None
    subject: str | None = None  # `sub` of a verified subject token
    resource: str | None = None
    audience: str | None = None
    scope: str | None = None
    jti: str | None = None  # of the token issued


@dataclass
class _Grant:
    """What a token is issued for, once the request has been checked."""

    client_id: str
    sub: str
    expires_at: int
    aud: str | list[str] | None
    scope: str | None
    act: dict[str, str] | None = None
    extra_answer: dict[str, Any] = field(default_factory=dict)


class TokenEndpoint:
    """The endpoint's key, settings and record of requests, plus failure knobs a test flips at run time.

    `fail_status`: answer every token request with this status and an OAuth error body.
    `garbage`: answer 200 with a body that is not JSON. `delay`: seconds to wait before answering.
    `lifetime`: seconds issued tokens live (from the settings until changed). `requests`: every
    token request received, in order, knobs or not.
    """

    def __init__(self, settings: TokenEndpointSettings) -> None:
        self.settings = settings
        self.lifetime = settings.lifetime
        self.fail_status: int | None = None
        self.garbage = False
        self.delay = 0.0
        self.requests: list[TokenRequest] = []
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = secrets.token_hex(8)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route(TOKEN_PATH, self._token, methods=["POST"]),
                Route(JWKS_PATH, self._jwks, methods=["GET"]),
                Route(METADATA_PATH, self._metadata, methods=["GET"]),
            ]
        )

    def jwks(self) -> dict[str, Any]:
        public = RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        return {"keys": [{**public, "kid": self._kid, "alg": "RS256", "use": "sig"}]}

    def verify(self, token: str, audience: str | None = None) -> dict[str, Any]:
        """The claims of a token this endpoint issued: signature, issuer, expiry and, when given,
        audience checked. Raises `jwt.InvalidTokenError` otherwise."""
        claims: dict[str, Any] = jwt.decode(
            token,
            self._key.public_key(),
            algorithms=["RS256"],
            issuer=self.settings.issuer,
            audience=audience,
            options={"require": ["iss", "sub", "exp", "iat", "jti"], "verify_aud": audience is not None},
        )
        return claims

    def count(self, grant_type: str | None = None) -> int:
        """How many token requests arrived, of this grant type when given."""
        return sum(grant_type is None or r.grant_type == grant_type for r in self.requests)

    def grant_types(self) -> list[str]:
        return [CLIENT_CREDENTIALS] + ([TOKEN_EXCHANGE] if self.settings.subject_secret else [])

    # -- routes ---------------------------------------------------------------------------------

    async def _jwks(self, request: Request) -> Response:
        return JSONResponse(self.jwks())

    async def _metadata(self, request: Request) -> Response:
        base = str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "issuer": self.settings.issuer,
                "token_endpoint": base + TOKEN_PATH,
                "jwks_uri": base + JWKS_PATH,
                "grant_types_supported": self.grant_types(),
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            }
        )

    async def _token(self, request: Request) -> Response:
        if self.delay:
            await asyncio.sleep(self.delay)
        form = await request.form() if request.headers.get("content-type", "").startswith(FORM) else FormData()
        grant_type = form.get("grant_type")
        record = TokenRequest(grant_type if isinstance(grant_type, str) else None)
        self.requests.append(record)
        # The failure knobs come first: a failing endpoint fails whoever asks.
        if self.garbage:
            return Response("<html>token service</html>", media_type="text/html")
        try:
            if self.fail_status is not None:
                raise OAuthError(self.fail_status, FAILURE_ERRORS.get(self.fail_status, "server_error"))
            answer = self._answer(request, form, record)
        except OAuthError as refusal:
            record.status, record.error = refusal.status, refusal.error
            log.info("refused %s request of client %s: %s", record.grant_type, record.client_id, refusal.error)
            return _error(refusal)
        log.info("issued %s token %s to client %s", record.grant_type, record.jti, record.client_id)
        return JSONResponse(answer, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    def _answer(self, request: Request, form: FormData, record: TokenRequest) -> dict[str, Any]:
        if not request.headers.get("content-type", "").startswith(FORM):
            raise OAuthError(400, "invalid_request")
        record.client_id = self._authenticated_client(request)
        if "client_secret" in form:  # RFC 6749 2.3: one authentication method, and it is Basic here
            raise OAuthError(400, "invalid_request")
        record.resource, record.audience = _resource(form), _single(form, "audience")
        record.scope = _single(form, "scope")
        if record.grant_type == CLIENT_CREDENTIALS:
            grant = self._client_credentials(record)
        elif record.grant_type == TOKEN_EXCHANGE and self.settings.subject_secret:
            grant = self._token_exchange(form, record, self.settings.subject_secret)
        else:
            raise OAuthError(400, "unsupported_grant_type")
        return self._issue(grant, record)

    def _authenticated_client(self, request: Request) -> str:
        """The client named by a valid `Authorization: Basic` header: RFC 6749 2.3.1 form-encodes the
        id and secret before RFC 7617 joins them, so `+` and `%XX` are decoded after the split."""
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        raw_id, colon, raw_secret = decoded.partition(":")
        client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
        expected = self.settings.clients.get(client_id)
        if scheme.lower() != "basic" or not colon or expected is None:
            raise OAuthError(401, "invalid_client")
        if not hmac.compare_digest(secret.encode(), expected.encode()):
            raise OAuthError(401, "invalid_client")
        return client_id

    def _client_credentials(self, record: TokenRequest) -> _Grant:
        assert record.client_id is not None
        return _Grant(
            client_id=record.client_id,
            sub=record.client_id,
            expires_at=int(time.time()) + self.lifetime,
            aud=_audience(record),
            scope=record.scope,
        )

    def _token_exchange(self, form: FormData, record: TokenRequest, subject_secret: str) -> _Grant:
        assert record.client_id is not None
        subject_token = _single(form, "subject_token")
        if not subject_token or form.get("subject_token_type") != ACCESS_TOKEN_TYPE:
            raise OAuthError(400, "invalid_request")
        if form.get("requested_token_type", ACCESS_TOKEN_TYPE) != ACCESS_TOKEN_TYPE:
            raise OAuthError(400, "invalid_request")
        try:
            subject = jwt.decode(
                subject_token,
                subject_secret,
                algorithms=["HS256"],
                issuer=self.settings.subject_issuer,
                options={"require": ["sub", "exp"], "verify_aud": False},
            )
        except jwt.InvalidTokenError as exc:
            raise OAuthError(400, "invalid_grant") from exc
        record.subject = str(subject["sub"])
        return _Grant(
            client_id=record.client_id,
            sub=record.subject,
            # The exchanged token does not outlive the caller's own.
            expires_at=min(int(time.time()) + self.lifetime, int(subject["exp"])),
            aud=_audience(record),
            scope=record.scope,
            act={"sub": record.client_id},
            extra_answer={"issued_token_type": ACCESS_TOKEN_TYPE},
        )

    def _issue(self, grant: _Grant, record: TokenRequest) -> dict[str, Any]:
        now = int(time.time())
        record.jti = secrets.token_hex(16)
        claims: dict[str, Any] = {
            "iss": self.settings.issuer,
            "sub": grant.sub,
            "iat": now,
            "exp": grant.expires_at,
            "jti": record.jti,
            "client_id": grant.client_id,
        }
        optional = {"aud": grant.aud, "scope": grant.scope, "act": grant.act}
        claims.update({name: value for name, value in optional.items() if value is not None})
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self._kid})
        answer = {"access_token": token, "token_type": "Bearer", "expires_in": grant.expires_at - now}
        if grant.scope is not None:
            answer["scope"] = grant.scope
        return {**answer, **grant.extra_answer}


def _single(form: FormData, name: str) -> str | None:
    """A parameter sent at most once (RFC 6749 3.1): repeating one is an invalid request."""
    values = form.getlist(name)
    if len(values) > 1:
        raise OAuthError(400, "invalid_request")
    value = values[0] if values else None
    return value if isinstance(value, str) else None


def _resource(form: FormData) -> str | None:
    """The RFC 8707 resource indicator: one absolute URI without a fragment (one is all we accept)."""
    values = form.getlist("resource")
    if not values:
        return None
    parts = urlsplit(str(values[0]))
    if len(values) > 1 or not parts.scheme or not parts.netloc or parts.fragment:
        raise OAuthError(400, "invalid_target")
    return str(values[0])


def _audience(record: TokenRequest) -> str | list[str] | None:
    named = [value for value in (record.resource, record.audience) if value]
    return named[0] if len(named) == 1 else (named or None)


def _error(refusal: OAuthError) -> Response:
    headers = {"Cache-Control": "no-store"}
    if refusal.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="token"'
    return JSONResponse({"error": refusal.error}, status_code=refusal.status, headers=headers)


# -- command line -------------------------------------------------------------------------------


def _secret(parser: argparse.ArgumentParser, variable: str) -> str:
    value = os.environ.get(variable)
    if not value:
        parser.error(f"environment variable {variable} is not set")
    return value


def _clients(parser: argparse.ArgumentParser, pairs: list[str]) -> dict[str, str]:
    clients = {}
    for pair in pairs:
        client_id, equals, variable = pair.rpartition("=")
        if not equals or not client_id or not variable:
            parser.error(f"--client takes ID=ENV, not {pair!r}")
        clients[client_id] = _secret(parser, variable)
    return clients


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9400)
    parser.add_argument("--issuer", help="the tokens' iss (default: http://HOST:PORT)")
    parser.add_argument("--client", action="append", required=True, metavar="ID=ENV")
    parser.add_argument("--lifetime", type=int, default=300)
    parser.add_argument("--subject-issuer")
    parser.add_argument("--subject-secret-env", metavar="ENV")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    clients = _clients(parser, args.client)
    subject_secret = _secret(parser, args.subject_secret_env) if args.subject_secret_env else None
    # Bound before the issuer is named, so that port 0 yields an issuer naming the port it got.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    base_url = f"http://{args.host}:{sock.getsockname()[1]}"
    settings = TokenEndpointSettings(
        issuer=args.issuer or base_url,
        clients=clients,
        lifetime=args.lifetime,
        subject_issuer=args.subject_issuer,
        subject_secret=subject_secret,
    )
    server = uvicorn.Server(uvicorn.Config(TokenEndpoint(settings).app(), log_level="warning"))
    print(f"token endpoint running on {base_url} (token URL {base_url}{TOKEN_PATH})", flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
