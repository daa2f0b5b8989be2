"""The servers the upstream-credential tests run against (contract 14), over real HTTP: the example
token endpoint (examples/token_endpoint.py) and the backends that check what they are presented
(tests/token_checking_backend.py)."""

from __future__ import annotations

import base64
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import httpx  # the a2a-sdk client is built on httpx (not httpx2)
import httpx2
import jwt
import pytest
from a2a.client import A2ACardResolver, ClientConfig, create_client
from a2a.types.a2a_pb2 import Message, Part, Role, SendMessageRequest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from examples.token_endpoint import (
    ACCESS_TOKEN_TYPE,
    CLIENT_CREDENTIALS,
    TOKEN_EXCHANGE,
    TokenEndpoint,
    TokenEndpointSettings,
)
from tests.mcp_client import call_text
from tests.support import ROOT, Process
from tests.token_checking_backend import checked_a2a_agent, checked_mcp_backend, served_token_endpoint

ISSUER = "https://tokens.test"
CLIENT_ID = "agentgw"
CLIENT_SECRET = "s3cret: with+special/chars="  # form-encoding matters for these (RFC 6749 2.3.1)
CALLER_ISSUER = "https://callers.test"
CALLER_SECRET = "caller-secret-that-is-comfortably-longer-than-32-bytes"
RESOURCE = "https://billing.test/mcp"


def basic(client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET) -> dict[str, str]:
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


def caller_token(sub: str = "alice", lifetime: int = 600, secret: str = CALLER_SECRET) -> str:
    now = int(time.time())
    claims = {"iss": CALLER_ISSUER, "aud": "agentgw", "sub": sub, "iat": now, "exp": now + lifetime}
    return jwt.encode(claims, secret, algorithm="HS256")


def exchange_form(subject_token: str, **extra: str) -> dict[str, str]:
    return {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "requested_token_type": ACCESS_TOKEN_TYPE,
        **extra,
    }


@pytest.fixture
def endpoint() -> TokenEndpoint:
    settings = TokenEndpointSettings(
        issuer=ISSUER,
        clients={CLIENT_ID: CLIENT_SECRET},
        subject_issuer=CALLER_ISSUER,
        subject_secret=CALLER_SECRET,
    )
    return TokenEndpoint(settings)


@pytest.fixture
async def token_url(endpoint: TokenEndpoint) -> AsyncIterator[str]:
    async with served_token_endpoint(endpoint) as url:
        yield url


async def token_request(url: str, form: dict[str, str], headers: dict[str, str] | None = None) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=10, verify=False) as http:
        return await http.post(url, data=form, headers=basic() if headers is None else headers)


async def fetched_token(url: str, **form: str) -> str:
    answer = await token_request(url, {"grant_type": CLIENT_CREDENTIALS, **form})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


# -- the token endpoint ---------------------------------------------------------------------------


async def test_client_credentials_issue_a_token_the_endpoint_verifies(endpoint: TokenEndpoint, token_url: str) -> None:
    answer = await token_request(
        token_url, {"grant_type": CLIENT_CREDENTIALS, "scope": "billing:read", "resource": RESOURCE}
    )

    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert (body["token_type"], body["expires_in"], body["scope"]) == ("Bearer", 300, "billing:read")
    claims = endpoint.verify(body["access_token"], RESOURCE)
    assert (claims["iss"], claims["sub"], claims["aud"], claims["scope"]) == (
        ISSUER,
        CLIENT_ID,
        RESOURCE,
        "billing:read",
    )
    assert endpoint.requests[-1].jti == claims["jti"]
    assert endpoint.count(CLIENT_CREDENTIALS) == 1 and endpoint.count(TOKEN_EXCHANGE) == 0
    with pytest.raises(jwt.InvalidAudienceError):
        endpoint.verify(body["access_token"], "https://other.test/mcp")


async def test_issued_tokens_verify_against_the_published_keys(token_url: str) -> None:
    token = await fetched_token(token_url, audience="billing")
    base = token_url.removesuffix("/oauth2/token")
    async with httpx2.AsyncClient(timeout=10, verify=False) as http:
        metadata = (await http.get(base + "/.well-known/oauth-authorization-server")).json()
        jwks = (await http.get(metadata["jwks_uri"])).json()

    assert metadata["token_endpoint"] == token_url
    assert metadata["grant_types_supported"] == [CLIENT_CREDENTIALS, TOKEN_EXCHANGE]
    key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token)["kid"]]
    assert jwt.decode(token, key, algorithms=["RS256"], audience="billing", issuer=ISSUER)["sub"] == CLIENT_ID


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic(secret="wrong"),
        basic(client_id="stranger"),
        # The secret not form-encoded: its "+" and "/" read as other characters.
        {"Authorization": "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()},
        {"Authorization": "Bearer " + CLIENT_SECRET},
    ],
    ids=["none", "wrong-secret", "unknown-client", "not-form-encoded", "not-basic"],
)
async def test_bad_client_authentication_is_invalid_client(token_url: str, headers: dict[str, str]) -> None:
    answer = await token_request(token_url, {"grant_type": CLIENT_CREDENTIALS}, headers)

    assert answer.status_code == 401
    assert answer.json() == {"error": "invalid_client"}
    assert answer.headers["www-authenticate"].startswith("Basic")


async def test_a_secret_in_the_body_is_refused(token_url: str) -> None:
    form = {"grant_type": CLIENT_CREDENTIALS, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}

    assert (await token_request(token_url, form, headers={})).status_code == 401
    assert (await token_request(token_url, form)).json() == {"error": "invalid_request"}


async def test_token_exchange_keeps_the_callers_subject_and_names_the_client_as_actor(
    endpoint: TokenEndpoint, token_url: str
) -> None:
    subject = caller_token("alice", lifetime=60)
    form = exchange_form(subject, resource=RESOURCE, audience="hr-mcp", scope="hr:read")
    answer = await token_request(token_url, form)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert body["expires_in"] <= 60  # never outlives the caller's token
    claims = endpoint.verify(body["access_token"], "hr-mcp")
    assert (claims["sub"], claims["act"], claims["scope"]) == ("alice", {"sub": CLIENT_ID}, "hr:read")
    assert claims["aud"] == [RESOURCE, "hr-mcp"]
    assert claims["exp"] <= jwt.decode(subject, options={"verify_signature": False})["exp"]
    assert (endpoint.requests[-1].subject, endpoint.count(TOKEN_EXCHANGE)) == ("alice", 1)


@pytest.mark.parametrize(
    ("form", "error"),
    [
        (exchange_form(caller_token(secret="not-the-callers-issuer-secret-at-all-000")), "invalid_grant"),
        (exchange_form(caller_token(lifetime=-60)), "invalid_grant"),
        (exchange_form("not-a-jwt"), "invalid_grant"),
        (
            exchange_form(caller_token(), subject_token_type="urn:ietf:params:oauth:token-type:id_token"),
            "invalid_request",
        ),
        (exchange_form(caller_token(), requested_token_type="urn:ietf:params:oauth:token-type:jwt"), "invalid_request"),
        ({"grant_type": TOKEN_EXCHANGE, "subject_token_type": ACCESS_TOKEN_TYPE}, "invalid_request"),
        ({"grant_type": "password", "username": "alice"}, "unsupported_grant_type"),
        ({"grant_type": CLIENT_CREDENTIALS, "resource": "billing"}, "invalid_target"),
    ],
    ids=["forged", "expired", "garbage", "wrong-type", "wrong-requested-type", "no-subject", "password", "relative"],
)
async def test_bad_grants_are_refused_with_400(token_url: str, form: dict[str, str], error: str) -> None:
    answer = await token_request(token_url, form)

    assert answer.status_code == 400
    assert answer.json() == {"error": error}


async def test_failure_knobs(endpoint: TokenEndpoint, token_url: str) -> None:
    endpoint.fail_status = 503
    failed = await token_request(token_url, {"grant_type": CLIENT_CREDENTIALS})
    endpoint.fail_status, endpoint.garbage = None, True
    garbled = await token_request(token_url, {"grant_type": CLIENT_CREDENTIALS})
    endpoint.garbage, endpoint.lifetime = False, 45
    short = await token_request(token_url, {"grant_type": CLIENT_CREDENTIALS})

    assert (failed.status_code, failed.json()) == (503, {"error": "server_error"})
    assert garbled.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(garbled.text)
    assert short.json()["expires_in"] == 45
    assert [r.status for r in endpoint.requests] == [503, 200, 200]
    assert endpoint.count() == 3


async def test_the_example_runs_from_the_command_line_with_its_secret_from_the_environment(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "examples" / "token_endpoint.py"), "--port", "0", "--lifetime", "120"]
    command += ["--client", f"{CLIENT_ID}=TEST_TOKEN_CLIENT_SECRET"]
    process = Process(command, env={"TEST_TOKEN_CLIENT_SECRET": CLIENT_SECRET}, log=tmp_path / "tokens.log").start()
    try:
        base = f"http://127.0.0.1:{process.port}"
        answer = await token_request(base + "/oauth2/token", {"grant_type": CLIENT_CREDENTIALS})
    finally:
        process.stop()

    assert answer.status_code == 200
    claims = jwt.decode(answer.json()["access_token"], options={"verify_signature": False})
    assert (claims["iss"], claims["sub"], answer.json()["expires_in"]) == (base, CLIENT_ID, 120)
    written = (tmp_path / "tokens.log").read_text()
    assert claims["jti"] in written
    assert CLIENT_SECRET not in written and answer.json()["access_token"] not in written


# -- the backends that check what they are presented ----------------------------------------------


async def test_the_check_refuses_a_missing_wrong_or_revoked_token(endpoint: TokenEndpoint, token_url: str) -> None:
    token = await fetched_token(token_url, resource=RESOURCE)
    wrong_audience = await fetched_token(token_url, resource="https://other.test/mcp")
    async with checked_mcp_backend(endpoint=endpoint, audience=RESOURCE) as backend:
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        async with httpx2.AsyncClient(timeout=10, verify=False, headers=headers) as http:
            missing = await http.post(backend.url, content=b"{}")
            wrong = await http.post(backend.url, content=b"{}", headers={"Authorization": f"Bearer {wrong_audience}"})
            accepted = await http.post(backend.url, content=b"{}", headers={"Authorization": f"Bearer {token}"})
            backend.check.revoke(endpoint.verify(token)["jti"])
            revoked = await http.post(backend.url, content=b"{}", headers={"Authorization": f"Bearer {token}"})

    for refused in (missing, wrong, revoked):
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert accepted.status_code == 400  # past the check: the MCP server's own answer to a bad body
    assert (backend.check.accepted, backend.check.refused) == (1, 3)
    assert backend.check.presented == [None, f"Bearer {wrong_audience}", f"Bearer {token}", f"Bearer {token}"]


async def test_the_mcp_sdk_client_sees_the_verified_claims_through_the_check(
    endpoint: TokenEndpoint, token_url: str
) -> None:
    answer = await token_request(token_url, exchange_form(caller_token("alice"), resource=RESOURCE, scope="hr:read"))
    token = answer.json()["access_token"]
    async with checked_mcp_backend(endpoint=endpoint, audience=RESOURCE) as backend:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx2.AsyncClient(timeout=30, verify=False, headers=headers) as http:
            async with Client(streamable_http_client(backend.url, http_client=http), mode="legacy") as client:
                whoami = json.loads(await call_text(client, "whoami"))
                echoed = await call_text(client, "echo", {"text": "hello"})

    assert (whoami["sub"], whoami["act"], whoami["aud"], whoami["scope"]) == (
        "alice",
        {"sub": CLIENT_ID},
        RESOURCE,
        "hr:read",
    )
    assert whoami["jti"] == endpoint.requests[-1].jti
    assert echoed == "hello"
    assert backend.check.refused == 0
    assert all(seen["jti"] == whoami["jti"] for seen in backend.check.seen)


@pytest.mark.parametrize(
    ("accepts", "headers", "expected"),
    [
        ({"bearer": "static-token"}, {"Authorization": "Bearer static-token"}, "Bearer static-token"),
        ({"header": ("X-API-Key", "k-123")}, {"X-API-Key": "k-123"}, "k-123"),
    ],
    ids=["bearer", "header"],
)
async def test_the_a2a_agent_answers_with_the_static_credential_it_was_given(
    accepts: dict[str, Any], headers: dict[str, str], expected: str
) -> None:
    async with checked_a2a_agent(**accepts) as agent:
        async with httpx.AsyncClient(timeout=10, headers=headers) as http:
            card = await A2ACardResolver(http, agent.url).get_agent_card()
            client = await create_client(card, client_config=ClientConfig(streaming=False, httpx_client=http))
            message = Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=[Part(text="who?")])
            replies = [event async for event in client.send_message(SendMessageRequest(message=message))]
        async with httpx.AsyncClient(timeout=10) as http:
            refused = await http.get(agent.url + "/.well-known/agent-card.json")

    assert json.loads(replies[-1].message.parts[0].text)["value"] == expected
    assert refused.status_code == 401
    assert agent.check.accepted == 2 and agent.check.refused == 1
