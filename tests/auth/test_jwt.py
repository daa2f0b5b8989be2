"""Bearer JWTs at the gateway (contract 5.4) and the RFC 9728 metadata that points clients at the issuer (4)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from agentgw.cli import TRUSTED_PROXIES_ENV
from tests.mcp_client import call_text
from tests.support import (
    InProcessGateway,
    Process,
    RawResponse,
    bearer,
    gateway,
    gateway_in_thread,
    in_process_gateway,
    initialize_body,
    mcp_headers,
    mcp_target,
    poll,
    raw_request,
    raw_session,
    tool_call,
    tool_text,
)

ISSUER = "https://issuer.test"
AUDIENCE = "agentgw"
SECRET = "a-test-secret-long-enough-for-hs256-and-for-hs512-which-wants-64-bytes"
METADATA = "/.well-known/oauth-protected-resource"
PROTOCOL = ("MCP-Protocol-Version", "2025-11-25")

HS256_POLICIES = f"""\
apiVersion: agentgw.dev/v1alpha1
kind: SessionAuthPolicy
metadata: {{name: auth}}
spec:
  jwtValidation: {{issuer: {ISSUER}, audience: {AUDIENCE}, secretEnv: TEST_JWT_SECRET, algorithms: [HS256]}}
---
apiVersion: agentgw.dev/v1alpha1
kind: ToolPolicy
metadata: {{name: tools}}
spec:
  defaultAction: allow
  allowedTools:
    - {{name: search_documents, allowedScopes: ["read:documents"]}}
"""


# -- tokens ---------------------------------------------------------------------


def claims(**overrides: Any) -> dict[str, Any]:
    """A valid claim set for ISSUER; an override of None drops the claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
        "scope": "read:documents",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs256(**overrides: Any) -> str:
    return jwt.encode(claims(**overrides), SECRET, algorithm="HS256")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def unsigned(alg: str) -> str:
    """A token with this `alg` and an empty signature, built by hand as an attacker would."""
    return f"{segment({'alg': alg, 'typ': 'JWT'})}.{segment(claims())}."


def hmac_signed(key: bytes, payload: dict[str, Any]) -> str:
    """An HS256 token keyed with arbitrary bytes (pyjwt refuses a PEM as an HMAC key)."""
    signing_input = f"{segment({'alg': 'HS256', 'typ': 'JWT'})}.{segment(payload)}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def tampered() -> str:
    """A good token whose payload was changed after signing; the signature is kept."""
    header, _, signature = hs256().split(".")
    return f"{header}.{segment(claims(sub='admin', scope='admin'))}.{signature}"


# -- requests -------------------------------------------------------------------


async def open_session(port: int, token: str) -> str:
    return await raw_session(port, "/mcp/v1", bearer(token))


async def call_add(port: int, session_id: str, *auth: tuple[str, str], path: str = "/mcp/v1") -> RawResponse:
    headers = mcp_headers(port, *auth, ("Mcp-Session-Id", session_id), PROTOCOL)
    return await raw_request(port, "POST", path, headers, tool_call("add", {"a": 1, "b": 2}))


def challenge(value: str | None) -> tuple[str, dict[str, str]]:
    """`Bearer k="v", k="v"` as (scheme, params)."""
    assert value is not None, "no WWW-Authenticate header"
    scheme, _, rest = value.partition(" ")
    params = {}
    for part in rest.split(","):
        key, _, quoted = part.strip().partition("=")
        params[key] = quoted.strip('"')
    return scheme, params


def assert_invalid_token(response: RawResponse, gw: InProcessGateway) -> None:
    assert response.status == 401, response.body
    scheme, params = challenge(response.header("www-authenticate"))
    assert scheme == "Bearer"
    assert params == {
        "realm": "agentgw",
        "error": "invalid_token",
        "resource_metadata": f"{gw.base}{METADATA}",
    }
    body = response.json()
    assert body["jsonrpc"] == "2.0"
    assert isinstance(body["error"]["code"], int)


# -- the HS256 gateway ------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(backends: list[Process], tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    tmp = tmp_path_factory.mktemp("jwt")
    config = {"mcp": {"targets": [mcp_target("docs", backends[0].port)]}}
    with gateway_in_thread(tmp, config, policies=HS256_POLICIES, env={"TEST_JWT_SECRET": SECRET}) as running:
        yield running


async def test_good_hs256_token_initializes_and_calls_a_tool(gw: InProcessGateway) -> None:
    session_id = await open_session(gw.port, hs256())
    response = await call_add(gw.port, session_id, bearer(hs256()))
    assert response.status == 200
    assert tool_text(response) == "3"


async def test_sdk_client_with_a_good_token_calls_tools(gw: InProcessGateway) -> None:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {hs256()}"}, timeout=30) as http:
        async with Client(streamable_http_client(gw.mcp_url, http_client=http), mode="legacy") as client:
            assert await call_text(client, "add", {"a": 20, "b": 22}) == "42"
            assert await call_text(client, "search_documents", {"query": "gateway"})


BAD_CREDENTIALS: dict[str, Callable[[], list[tuple[str, str]]]] = {
    "no_authorization_header": lambda: [],
    "bearer_garbage": lambda: [bearer("garbage")],
    "alg_none": lambda: [bearer(unsigned("none"))],
    "alg_NONE": lambda: [bearer(unsigned("NONE"))],
    "wrong_hmac_key": lambda: [bearer(jwt.encode(claims(), "another-secret-also-long-enough-for-hs256", "HS256"))],
    "algorithm_not_configured": lambda: [bearer(jwt.encode(claims(), SECRET, algorithm="HS512"))],
    "expired": lambda: [bearer(hs256(iat=int(time.time()) - 600, exp=int(time.time()) - 60))],
    "not_yet_valid": lambda: [bearer(hs256(nbf=int(time.time()) + 600))],
    "wrong_issuer": lambda: [bearer(hs256(iss="https://elsewhere.test"))],
    "wrong_audience": lambda: [bearer(hs256(aud="another-service"))],
    "exp_as_string": lambda: [bearer(hs256(exp="9999999999"))],
    "tampered_payload": lambda: [bearer(tampered())],
    "basic_scheme": lambda: [("Authorization", "Basic " + base64.b64encode(b"alice:password").decode())],
}


@pytest.mark.parametrize("case", list(BAD_CREDENTIALS))
async def test_rejected_credentials_are_401_and_the_session_carries_on(gw: InProcessGateway, case: str) -> None:
    session_id = await open_session(gw.port, hs256())
    refused = await call_add(gw.port, session_id, *BAD_CREDENTIALS[case]())
    assert_invalid_token(refused, gw)
    # Nothing about the refusal touched the gateway or the session: the owner's next call works.
    answered = await call_add(gw.port, session_id, bearer(hs256()))
    assert answered.status == 200
    assert tool_text(answered) == "3"


@pytest.mark.parametrize("case", list(BAD_CREDENTIALS))
async def test_rejected_credentials_cannot_initialize(gw: InProcessGateway, case: str) -> None:
    headers = mcp_headers(gw.port, *BAD_CREDENTIALS[case]())
    response = await raw_request(gw.port, "POST", "/mcp/v1", headers, initialize_body())
    assert_invalid_token(response, gw)
    assert response.header("mcp-session-id") is None


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/mcp/v1/"), ("POST", "/mcp/v1/docs"), ("GET", "/mcp/v1"), ("DELETE", "/mcp/v1/docs")],
)
async def test_every_mcp_path_and_method_needs_a_token(gw: InProcessGateway, method: str, path: str) -> None:
    session_id = await open_session(gw.port, hs256())
    headers = mcp_headers(gw.port, ("Mcp-Session-Id", session_id), PROTOCOL)
    body = initialize_body() if method == "POST" else b""
    response = await raw_request(gw.port, method, path, headers, body)
    assert_invalid_token(response, gw)


@pytest.mark.parametrize("parameter", ["access_token", "token"])
async def test_token_in_the_query_string_is_401_even_with_a_valid_header(gw: InProcessGateway, parameter: str) -> None:
    token = hs256()
    path = f"/mcp/v1?{parameter}={token}"
    response = await raw_request(gw.port, "POST", path, mcp_headers(gw.port, bearer(token)), initialize_body())
    assert_invalid_token(response, gw)
    # The same request without the query string is fine.
    response = await raw_request(gw.port, "POST", "/mcp/v1", mcp_headers(gw.port, bearer(token)), initialize_body())
    assert response.status == 200


# -- RFC 9728 metadata and health need no token ---------------------------------


@pytest.mark.parametrize("path", [METADATA, f"{METADATA}/mcp/v1"])
async def test_protected_resource_metadata_names_issuer_and_scopes_without_a_token(
    gw: InProcessGateway, path: str
) -> None:
    response = await raw_request(gw.port, "GET", path, [("Host", f"127.0.0.1:{gw.port}")])
    assert response.status == 200
    metadata = response.json()
    assert metadata["resource"].startswith(gw.base)
    assert metadata["authorization_servers"] == [ISSUER]
    assert "read:documents" in metadata["scopes_supported"]


async def test_protected_resource_metadata_for_a_path_names_that_resource(gw: InProcessGateway) -> None:
    response = await raw_request(gw.port, "GET", f"{METADATA}/mcp/v1", [("Host", f"127.0.0.1:{gw.port}")])
    assert response.json()["resource"] == gw.mcp_url


async def test_forwarded_proto_is_ignored_unless_the_proxy_is_trusted(gw: InProcessGateway) -> None:
    headers = [("Host", f"127.0.0.1:{gw.port}"), ("X-Forwarded-Proto", "https")]
    response = await raw_request(gw.port, "GET", f"{METADATA}/mcp/v1", headers)
    assert response.json()["resource"] == gw.mcp_url  # http: nobody said this client may speak for a proxy


async def test_behind_a_trusted_tls_proxy_urls_say_https(tmp: Path) -> None:
    # A process: uvicorn reads the trusted proxies from the environment of `agentgw serve`.
    config = {"server": {"allowed_hosts": ["agentgw.example.com"]}, "mcp": {"enabled": False}}
    env = {"TEST_JWT_SECRET": SECRET, TRUSTED_PROXIES_ENV: "127.0.0.1"}
    trusted = gateway(tmp, config, policies=HS256_POLICIES, env=env)
    try:
        headers = [("Host", "agentgw.example.com"), ("X-Forwarded-Proto", "https")]
        response = await raw_request(trusted.port, "GET", f"{METADATA}/mcp/v1", headers)
        assert response.json()["resource"] == "https://agentgw.example.com/mcp/v1"
        refused = await raw_request(trusted.port, "POST", "/v1/chat/completions", headers)
        assert 'resource_metadata="https://agentgw.example.com/' in (refused.header("www-authenticate") or "")
    finally:
        trusted.stop()


async def test_healthz_needs_no_token(gw: InProcessGateway) -> None:
    response = await raw_request(gw.port, "GET", "/healthz", [("Host", f"127.0.0.1:{gw.port}")])
    assert response.status == 200


# -- RS256 and ES256 from a public key file -------------------------------------

RS_ISSUER = "https://rs.issuer.test"
ES_ISSUER = "https://es.issuer.test"
# No `algorithms` given: a publicKeyFile issuer then takes RS256 and ES256.
DEFAULT_ALGORITHMS_ISSUER = "https://default-algorithms.issuer.test"


def public_pem(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_policy(name: str, issuer: str, pem: Path, algorithms: str | None) -> str:
    listed = f", algorithms: [{algorithms}]" if algorithms else ""
    return f"""\
apiVersion: agentgw.dev/v1alpha1
kind: SessionAuthPolicy
metadata: {{name: {name}}}
spec:
  jwtValidation: {{issuer: {issuer}, audience: {AUDIENCE}, publicKeyFile: {pem}{listed}}}
"""


class AsymmetricIssuers:
    def __init__(self, tmp: Path) -> None:
        self.rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec_key = ec.generate_private_key(ec.SECP256R1())
        self.rsa_pem_file = tmp / "rs256.pem"
        self.rsa_pem_file.write_bytes(public_pem(self.rsa_key))
        self.ec_pem_file = tmp / "es256.pem"
        self.ec_pem_file.write_bytes(public_pem(self.ec_key))

    def policies(self) -> str:
        return "---\n".join(
            [
                public_key_policy("rs", RS_ISSUER, self.rsa_pem_file, "RS256"),
                public_key_policy("es", ES_ISSUER, self.ec_pem_file, "ES256"),
                public_key_policy("default-algorithms", DEFAULT_ALGORITHMS_ISSUER, self.rsa_pem_file, None),
            ]
        )


@pytest.fixture(scope="module")
def issuers(tmp_path_factory: pytest.TempPathFactory) -> AsymmetricIssuers:
    return AsymmetricIssuers(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def asymmetric_gw(
    backends: list[Process], issuers: AsymmetricIssuers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessGateway]:
    tmp = tmp_path_factory.mktemp("asymmetric")
    config = {"mcp": {"targets": [mcp_target("docs", backends[0].port)]}}
    with gateway_in_thread(tmp, config, policies=issuers.policies()) as running:
        yield running


async def test_rs256_token_checked_against_the_public_key_file_is_accepted(
    asymmetric_gw: InProcessGateway, issuers: AsymmetricIssuers
) -> None:
    token = jwt.encode(claims(iss=RS_ISSUER), issuers.rsa_key, algorithm="RS256")
    session_id = await open_session(asymmetric_gw.port, token)
    response = await call_add(asymmetric_gw.port, session_id, bearer(token))
    assert response.status == 200
    assert tool_text(response) == "3"


async def test_es256_token_checked_against_the_public_key_file_is_accepted(
    asymmetric_gw: InProcessGateway, issuers: AsymmetricIssuers
) -> None:
    token = jwt.encode(claims(iss=ES_ISSUER), issuers.ec_key, algorithm="ES256")
    session_id = await open_session(asymmetric_gw.port, token)
    response = await call_add(asymmetric_gw.port, session_id, bearer(token))
    assert response.status == 200
    assert tool_text(response) == "3"


async def test_hs256_token_keyed_with_the_rsa_public_key_pem_is_401(
    asymmetric_gw: InProcessGateway, issuers: AsymmetricIssuers
) -> None:
    # Algorithm confusion: the public key is public, so an HMAC over it proves nothing.
    forged = hmac_signed(issuers.rsa_pem_file.read_bytes(), claims(iss=RS_ISSUER))
    headers = mcp_headers(asymmetric_gw.port, bearer(forged))
    response = await raw_request(asymmetric_gw.port, "POST", "/mcp/v1", headers, initialize_body())
    assert_invalid_token(response, asymmetric_gw)


async def test_rs256_token_of_another_key_is_401(asymmetric_gw: InProcessGateway) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(iss=RS_ISSUER), stranger, algorithm="RS256")
    headers = mcp_headers(asymmetric_gw.port, bearer(token))
    response = await raw_request(asymmetric_gw.port, "POST", "/mcp/v1", headers, initialize_body())
    assert_invalid_token(response, asymmetric_gw)


async def test_es256_token_presented_to_the_rs256_issuer_is_401(
    asymmetric_gw: InProcessGateway, issuers: AsymmetricIssuers
) -> None:
    token = jwt.encode(claims(iss=RS_ISSUER), issuers.ec_key, algorithm="ES256")
    headers = mcp_headers(asymmetric_gw.port, bearer(token))
    response = await raw_request(asymmetric_gw.port, "POST", "/mcp/v1", headers, initialize_body())
    assert_invalid_token(response, asymmetric_gw)


async def test_rs256_token_for_a_public_key_file_without_algorithms_is_accepted(
    asymmetric_gw: InProcessGateway, issuers: AsymmetricIssuers
) -> None:
    token = jwt.encode(claims(iss=DEFAULT_ALGORITHMS_ISSUER), issuers.rsa_key, algorithm="RS256")
    session_id = await open_session(asymmetric_gw.port, token)
    response = await call_add(asymmetric_gw.port, session_id, bearer(token))
    assert response.status == 200


async def test_es256_token_for_an_rsa_public_key_file_without_algorithms_is_401(
    asymmetric_gw: InProcessGateway, issuers: AsymmetricIssuers
) -> None:
    token = jwt.encode(claims(iss=DEFAULT_ALGORITHMS_ISSUER), issuers.ec_key, algorithm="ES256")
    headers = mcp_headers(asymmetric_gw.port, bearer(token))
    response = await raw_request(asymmetric_gw.port, "POST", "/mcp/v1", headers, initialize_body())
    assert_invalid_token(response, asymmetric_gw)


async def test_ec_public_key_file_without_algorithms_accepts_es256_tokens(
    backends: list[Process], issuers: AsymmetricIssuers, tmp: Path
) -> None:
    policies = public_key_policy("es-default", ES_ISSUER, issuers.ec_pem_file, None)
    config = {"mcp": {"targets": [mcp_target("docs", backends[0].port)]}}
    async with in_process_gateway(tmp, config, policies=policies) as running:
        token = jwt.encode(claims(iss=ES_ISSUER), issuers.ec_key, algorithm="ES256")
        session_id = await open_session(running.port, token)
        response = await call_add(running.port, session_id, bearer(token))
        assert response.status == 200


# -- JWKS: fetched, and refetched on an unknown kid ------------------------------

JWKS_SERVER = Path(__file__).with_name("jwks_server.py")


class Jwks:
    """A JWKS file served on loopback, and the private keys behind it by kid."""

    def __init__(self, tmp: Path) -> None:
        self.file = tmp / "jwks.json"
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.publish("k1")
        self.server = Process(
            lambda port: [sys.executable, str(JWKS_SERVER), str(port), str(self.file)], log=tmp / "jwks.log"
        ).start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/jwks.json"

    def publish(self, *kids: str) -> None:
        """Serve exactly these keys from now on (a rotation drops the others)."""
        entries = []
        for kid in kids:
            key = self.keys.setdefault(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            entries.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
        staged = self.file.with_suffix(".tmp")
        staged.write_text(json.dumps({"keys": entries}))
        os.replace(staged, self.file)  # the server never reads a half-written file

    def token(self, kid: str, **overrides: Any) -> str:
        return jwt.encode(claims(**overrides), self.keys[kid], algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def jwks(tmp: Path) -> Iterator[Jwks]:
    served = Jwks(tmp)
    yield served
    served.server.stop()


@pytest.fixture
async def jwks_gw(backends: list[Process], jwks: Jwks, tmp: Path) -> AsyncIterator[InProcessGateway]:
    # A long refreshInterval: only an unknown kid can make the gateway fetch the JWKS again.
    policies = f"""\
apiVersion: agentgw.dev/v1alpha1
kind: SessionAuthPolicy
metadata: {{name: auth}}
spec:
  jwtValidation: {{issuer: {ISSUER}, audience: {AUDIENCE}, jwksUri: "{jwks.uri}", algorithms: [RS256]}}
  sessionBinding: {{refreshInterval: 10m}}
"""
    config = {"mcp": {"targets": [mcp_target("docs", backends[0].port)]}}
    async with in_process_gateway(tmp, config, policies=policies) as running:
        yield running


async def test_jwks_token_with_a_known_kid_is_accepted(jwks_gw: InProcessGateway, jwks: Jwks) -> None:
    session_id = await open_session(jwks_gw.port, jwks.token("k1"))
    response = await call_add(jwks_gw.port, session_id, bearer(jwks.token("k1")))
    assert response.status == 200
    assert tool_text(response) == "3"


async def test_jwks_token_with_an_unpublished_kid_is_401(jwks_gw: InProcessGateway, jwks: Jwks) -> None:
    jwks.keys["unpublished"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    headers = mcp_headers(jwks_gw.port, bearer(jwks.token("unpublished")))
    response = await raw_request(jwks_gw.port, "POST", "/mcp/v1", headers, initialize_body())
    assert_invalid_token(response, jwks_gw)


async def test_rotated_jwks_key_is_accepted_without_a_restart(jwks_gw: InProcessGateway, jwks: Jwks) -> None:
    session_id = await open_session(jwks_gw.port, jwks.token("k1"))
    jwks.publish("k2")

    async def k2_accepted() -> bool:
        response = await call_add(jwks_gw.port, session_id, bearer(jwks.token("k2")))
        return response.status == 200

    # The gateway rate-limits refetches on unknown kids, so the new key is picked up within a bound.
    await poll(k2_accepted, timeout=20, interval=0.25)
    # k1 left the set: a token of k1 the gateway has never seen is refused now.
    refused = await call_add(jwks_gw.port, session_id, bearer(jwks.token("k1", jti="never-seen")))
    assert_invalid_token(refused, jwks_gw)
