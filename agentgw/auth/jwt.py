"""JWT verification (contract 5.4); the only module that imports `jwt`.

Every request's token is verified (MCP forbids sessions as authentication);
a verified token is remembered until it expires or its issuer's
`refreshInterval` passes, whichever comes first, so the hot path is one dict
lookup for a token already seen.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt import PyJWK, PyJWKSet

from agentgw.auth.principal import Principal
from agentgw.errors import IdentityProviderUnavailable, InvalidToken
from agentgw.policy.model import SessionAuthPolicy
from agentgw.typed_yaml import ConfigError
from agentgw.upstream.http import ConnectionPool, UpstreamConnectionError, UpstreamTimeoutError

log = logging.getLogger("agentgw.auth")

JWKS_TIMEOUT = 5.0
# A key set or OpenID configuration is small: a larger answer is an outage, not held in memory.
MAX_JWKS_BYTES = 1024 * 1024
# After a failed fetch the issuer is asked again this soon (or at its refreshInterval, if sooner).
JWKS_RETRY_INTERVAL = 5.0
# An unknown `kid` refetches the JWKS once; random kids cannot hammer the issuer, since
# each kid is refetched for once per refresh and all of them share this many per window.
JWKS_REFETCH_BUDGET = 5
JWKS_REFETCH_WINDOW = 10.0
TOKEN_CACHE_SIZE = 10_000
# What reading a document that is not a JWKS (or not an OpenID configuration) raises.
_GARBAGE = (ValueError, KeyError, TypeError, AttributeError, RecursionError, jwt.PyJWTError)


class JwksUnavailable(IdentityProviderUnavailable):
    """The JWKS that would hold a token's key cannot be fetched: the issuer's outage, not a bad token."""

    def __init__(self, issuer: str, retry_after: float) -> None:
        super().__init__(
            f"The identity provider {issuer} cannot be reached", retry_after=max(1, math.ceil(retry_after))
        )
        self.issuer = issuer


class _Jwks:
    """An issuer's JWKS: fetched, refreshed every `refresh_interval`, refetched once on an unknown kid.

    While the last fetch failed, a kid the cached set does not hold cannot be
    judged: the caller gets JwksUnavailable (503), never a 401 for the issuer's fault.
    """

    def __init__(self, url: str | None, issuer: str, refresh_interval: float, http: ConnectionPool) -> None:
        self._url = url
        self._issuer = issuer
        self._refresh_interval = refresh_interval
        self._http = http
        self._keys: dict[str, PyJWK] = {}
        self._next_fetch = 0.0
        self._failing = False
        self._fetches = 0  # lets a caller that waited for the lock see that the set it wanted was fetched
        self._lock = asyncio.Lock()
        self._refetched_for: set[str | None] = set()
        self._refetches: list[float] = []

    async def key(self, kid: str | None) -> PyJWK:
        if time.monotonic() >= self._next_fetch:
            await self._fetch()
            self._refetched_for.clear()
        key = self._find(kid)
        if key is None and self._may_refetch(kid):
            await self._fetch()  # the issuer may have rotated its keys
            key = self._find(kid)
        if key is not None:
            return key
        if self._failing:
            raise JwksUnavailable(self._issuer, self._next_fetch - time.monotonic())
        raise InvalidToken("Invalid token: unknown signing key")

    def _may_refetch(self, kid: str | None) -> bool:
        now = time.monotonic()
        self._refetches = [t for t in self._refetches if now - t < JWKS_REFETCH_WINDOW]
        if kid in self._refetched_for or len(self._refetches) >= JWKS_REFETCH_BUDGET:
            return False
        if len(self._refetched_for) < TOKEN_CACHE_SIZE:
            self._refetched_for.add(kid)
        self._refetches.append(now)
        return True

    def _find(self, kid: str | None) -> PyJWK | None:
        if kid is not None:
            return self._keys.get(kid)
        # A token without kid is acceptable only when the issuer has exactly one key.
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None

    async def _fetch(self) -> None:
        fetches = self._fetches
        async with self._lock:
            if self._fetches != fetches:
                return  # fetched while this caller waited: a dead issuer is not asked once per waiting request
            self._fetches += 1
            try:
                url = self._url or await self._discover()
                document = await self._get_json(url)
                keys = PyJWKSet.from_dict(document).keys
            except (UpstreamConnectionError, UpstreamTimeoutError, *_GARBAGE) as exc:
                # The old keys stay: tokens of a kid already known still verify during the outage.
                log.warning("cannot fetch the JWKS of %s: %s", self._issuer, exc)
                self._failing = True
                self._next_fetch = time.monotonic() + min(self._refresh_interval, JWKS_RETRY_INTERVAL)
                return
            self._keys = {key.key_id or f"key-{index}": key for index, key in enumerate(keys)}
            self._failing = False
            self._next_fetch = time.monotonic() + self._refresh_interval

    async def _discover(self) -> str:
        """Without jwksUri, the issuer's OpenID configuration names its JWKS."""
        configuration = await self._get_json(self._issuer.rstrip("/") + "/.well-known/openid-configuration")
        return str(configuration["jwks_uri"])

    async def _get_json(self, url: str) -> Any:
        response = await self._http.request("GET", url, {"accept": "application/json"}, None, JWKS_TIMEOUT)
        try:
            body = await response.read(JWKS_TIMEOUT, limit=MAX_JWKS_BYTES)
        finally:
            response.release()
        if response.status != 200:
            raise ValueError(f"{url} answered {response.status}")
        return json.loads(body)


class IssuerVerifier:
    """Verifies the tokens of one SessionAuthPolicy issuer."""

    def __init__(self, policy: SessionAuthPolicy, env: Mapping[str, str], http: ConnectionPool) -> None:
        validation = policy.spec.jwt_validation
        self.policy_name = policy.metadata.name
        self.issuer = validation.issuer
        self.audiences = validation.audiences
        self.algorithms = validation.allowed_algorithms  # narrowed below to what a key file can verify
        self.cache_for = float(policy.spec.session_binding.refresh_interval)
        self.binds_sessions = policy.spec.session_binding.enabled
        self._static_key: Any = None
        self._jwks: _Jwks | None = None
        if validation.secret_env:
            secret = env.get(validation.secret_env)
            if not secret:
                raise ConfigError(self.policy_name, 0, f"secretEnv {validation.secret_env} is not set")
            self._static_key = secret.encode()
        elif validation.public_key_file:
            self._static_key, self.algorithms = _public_key(validation.public_key_file, validation.algorithms)
        else:
            self._jwks = _Jwks(validation.jwks_uri, self.issuer, self.cache_for, http)

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("Invalid token: malformed") from None
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise InvalidToken("Invalid token: algorithm not allowed")
        key = self._static_key if self._jwks is None else await self._jwks.key(header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                issuer=self.issuer,
                audience=self.audiences or None,
                options={"require": ["exp", "iss", "sub"], "verify_aud": bool(self.audiences)},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"Invalid token: {_reason(exc)}") from None
        except (TypeError, ValueError):  # a key that does not fit the token's algorithm
            raise InvalidToken("Invalid token: rejected") from None
        return _principal(claims, token)


class Authenticator:
    """All SessionAuthPolicy issuers; picks the verifier by the token's `iss`."""

    def __init__(self, policies: list[SessionAuthPolicy], env: Mapping[str, str], http: ConnectionPool) -> None:
        self._verifiers = {p.spec.jwt_validation.issuer: IssuerVerifier(p, env, http) for p in policies}
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    @property
    def issuers(self) -> list[str]:
        return list(self._verifiers)

    def binds_sessions(self, issuer: str | None) -> bool:
        """Whether sessions of this issuer's subjects are bound to them (sessionBinding.enabled)."""
        verifier = self._verifiers.get(issuer) if issuer is not None else None
        return verifier is None or verifier.binds_sessions

    async def authenticate(self, token: str) -> Principal:
        now = time.time()
        cached = self._cache.get(token)
        if cached is not None:
            principal, valid_until = cached
            if now < valid_until:
                return principal
            del self._cache[token]
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            raise InvalidToken("Invalid token: malformed") from None
        verifier = self._verifiers.get(issuer) if isinstance(issuer, str) else None
        if verifier is None:
            raise InvalidToken("Invalid token: unknown issuer")
        principal = await verifier.verify(token)
        self._remember(token, principal, min(principal.expires_at, now + verifier.cache_for))
        return principal

    def _remember(self, token: str, principal: Principal, valid_until: float) -> None:
        self._cache[token] = (principal, valid_until)
        if len(self._cache) > TOKEN_CACHE_SIZE:
            self._cache.popitem(last=False)


def _numeric_date(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _principal(claims: dict[str, Any], token: str) -> Principal:
    """Claim types as RFC 7519 requires them; pyjwt alone would accept `"exp": "9999999999"`."""
    for name in ("exp", "nbf", "iat"):
        if name in claims and not _numeric_date(claims[name]):
            raise InvalidToken(f"Invalid token: {name} must be a number")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise InvalidToken("Invalid token: sub must be a non-empty string")
    return Principal(
        issuer=claims["iss"],
        subject=claims["sub"],
        scopes=_scopes(claims),
        expires_at=float(claims["exp"]),
        claims=claims,
        token=token,
    )


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    """`scope` (space-separated) or `scp` (a list); a token with neither has no scopes."""
    scope = claims.get("scope")
    if isinstance(scope, str):
        return frozenset(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, list) and all(isinstance(s, str) for s in scp):
        return frozenset(scp)
    if isinstance(scp, str):
        return frozenset(scp.split())
    return frozenset()


def _public_key(path: str, algorithms: list[str] | None) -> tuple[Any, list[str]]:
    """The key in a PEM file and the algorithms it can verify (of those the policy allows)."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise ConfigError(path, 0, f"cannot read publicKeyFile: {exc}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(path, 0, f"publicKeyFile is not a PEM public key: {exc}") from None
    fitting = _algorithms_for(key)
    usable = [a for a in (algorithms or fitting[:1]) if a in fitting]
    if not usable:
        raise ConfigError(path, 0, f"publicKeyFile holds a key for {', '.join(fitting) or 'no JWT algorithm'}")
    return key, usable


def _algorithms_for(key: Any) -> list[str]:
    if isinstance(key, rsa.RSAPublicKey):
        return ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
    if isinstance(key, ec.EllipticCurvePublicKey):
        by_curve = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        return [by_curve[key.curve.name]] if key.curve.name in by_curve else []
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return ["EdDSA"]
    return []


def _reason(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "not yet valid"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bad signature"
    return "rejected"


def mint_token(
    secret: str,
    subject: str,
    scopes: list[str],
    ttl: float,
    issuer: str | None = None,
    audience: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """An HS256 token, for `agentgw token` and the dev set-up of `make run`."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "iat": now, "exp": now + int(ttl), **(extra or {})}
    if scopes:
        claims["scope"] = " ".join(scopes)
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")
