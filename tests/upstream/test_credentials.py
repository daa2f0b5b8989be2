"""Credentials the gateway presents upstream (contract 14), end to end: the real MCP SDK client and
a2a-sdk client through the gateway, a real OAuth 2.0 token endpoint on loopback
(examples/token_endpoint.py) and SDK-built backends that verify every credential they receive
(tests/token_checking_backend.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from a2a.client import A2ACardResolver, ClientConfig, create_client
from a2a.types.a2a_pb2 import Message, Part, Role, SendMessageRequest

from examples.token_endpoint import CLIENT_CREDENTIALS, TOKEN_EXCHANGE, TokenEndpoint, TokenEndpointSettings
from tests.inbound.test_hostile_agents import refusals
from tests.mcp_client import call_text, sdk_client
from tests.support import (
    InProcessGateway,
    RawResponse,
    bearer,
    closed_port,
    hs256_auth_policy,
    in_process_gateway,
    initialize_body,
    mcp_headers,
    poll,
    raw_request,
    raw_session,
    tool_call,
)
from tests.token_checking_backend import CheckedServer, checked_a2a_agent, checked_mcp_backend, served_token_endpoint

ISSUER = "https://tokens.test"
CLIENT_ID = "agentgw"
CLIENT_SECRET = "client-secret: with+special/chars="
CALLER_ISSUER = "https://callers.test"
CALLER_SECRET = "caller-secret-that-is-comfortably-longer-than-32-bytes"
STATIC_TOKEN = "static-upstream-token-0123456789"
RESOURCE = "https://billing.test/mcp"
ENV = {"CLIENT_SECRET": CLIENT_SECRET, "CALLER_SECRET": CALLER_SECRET, "STATIC_TOKEN": STATIC_TOKEN}
AUTH_POLICY = hs256_auth_policy(CALLER_ISSUER, "CALLER_SECRET")
REQUEST_IDS = itertools.count(100)


def caller_token(sub: str, lifetime: int = 600) -> str:
    now = int(time.time())
    claims = {"iss": CALLER_ISSUER, "aud": "agentgw", "sub": sub, "iat": now, "exp": now + lifetime, "jti": sub + "x"}
    return jwt.encode(claims, CALLER_SECRET, algorithm="HS256")


@pytest.fixture
def endpoint() -> TokenEndpoint:
    settings = TokenEndpointSettings(
        issuer=ISSUER, clients={CLIENT_ID: CLIENT_SECRET}, subject_issuer=CALLER_ISSUER, subject_secret=CALLER_SECRET
    )
    return TokenEndpoint(settings)


@pytest.fixture
async def token_url(endpoint: TokenEndpoint) -> AsyncIterator[str]:
    async with served_token_endpoint(endpoint) as url:
        yield url


def oauth(kind: str, token_url: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "tokenUrl": token_url, "clientId": CLIENT_ID, "clientSecretEnv": "CLIENT_SECRET", **extra}


def one_target(url: str, auth: dict[str, Any]) -> dict[str, Any]:
    return {"mcp": {"targets": [{"name": "billing", "backends": [{"url": url}], "auth": auth}]}}


async def whoami(gw: InProcessGateway, token: str, path: str = "/mcp/v1/billing", tool: str = "whoami") -> Any:
    async with sdk_client(gw.base + path, headers={"Authorization": f"Bearer {token}"}) as client:
        return json.loads(await call_text(client, tool))


async def call_raw(gw: InProcessGateway, token: str, session_id: str, tool: str = "whoami") -> RawResponse:
    headers = mcp_headers(
        gw.port, bearer(token), ("Mcp-Session-Id", session_id), ("MCP-Protocol-Version", "2025-11-25")
    )
    # An id of its own: a server answers the concurrent requests of one session by their ids.
    return await raw_request(gw.port, "POST", "/mcp/v1/billing", headers, tool_call(tool, {}, next(REQUEST_IDS)))


def refused_only_anonymous(backend: CheckedServer) -> bool:
    """Whether every request the backend refused carried no credential: the gateway's health checks
    carry none, and any answer below 500 tells them the backend serves."""
    return backend.check.refused == backend.check.presented.count(None)


# -- each type, end to end -----------------------------------------------------------------------


async def test_a_bearer_token_from_the_environment_is_presented_and_the_callers_is_not(tmp: Path) -> None:
    async with checked_mcp_backend(bearer=STATIC_TOKEN) as backend:
        auth = {"type": "bearer", "tokenEnv": "STATIC_TOKEN"}
        async with in_process_gateway(tmp, one_target(backend.url, auth), AUTH_POLICY, env=ENV) as gw:
            token = caller_token("alice")
            seen = await whoami(gw, token)

    assert seen == {"header": "authorization", "value": f"Bearer {STATIC_TOKEN}"}
    assert refused_only_anonymous(backend)
    assert not any(token in (presented or "") for presented in backend.check.presented)


async def test_a_header_from_a_file_is_read_again_when_the_file_changes(tmp: Path) -> None:
    secret_file = tmp / "crm-key"
    secret_file.write_text("first-key\n")
    async with checked_mcp_backend(header=("X-API-Key", "first-key")) as backend:
        auth = {"type": "header", "name": "X-API-Key", "valueFile": str(secret_file)}
        async with in_process_gateway(tmp, one_target(backend.url, auth), AUTH_POLICY, env=ENV) as gw:
            token = caller_token("alice")
            assert (await whoami(gw, token))["value"] == "first-key"

            # Rotated as Kubernetes does it: a new file swapped in under the same name.
            rotated = tmp / "crm-key.new"
            rotated.write_text("second-key")
            rotated.replace(secret_file)
            backend.check.accepts["header"] = ("X-API-Key", "second-key")
            started = time.monotonic()

            async def rotated_in() -> bool:
                opened = await raw_request(
                    gw.port, "POST", "/mcp/v1/billing", mcp_headers(gw.port, bearer(token)), initialize_body()
                )
                return opened.status == 200

            assert await poll(rotated_in, timeout=10.0, interval=0.2)
            assert time.monotonic() - started < 10.0
            assert (await whoami(gw, token))["value"] == "second-key"


async def test_client_credentials_one_token_for_every_concurrent_call(
    tmp: Path, endpoint: TokenEndpoint, token_url: str
) -> None:
    async with checked_mcp_backend(endpoint=endpoint, audience=RESOURCE) as backend:
        auth = oauth("oauth2_client_credentials", token_url, scopes=["billing:read"], resource=RESOURCE)
        async with in_process_gateway(tmp, one_target(backend.url, auth), AUTH_POLICY, env=ENV) as gw:
            tokens = [caller_token("alice"), caller_token("bob")]
            sessions = [await raw_session(gw.port, "/mcp/v1/billing", bearer(t)) for t in tokens]
            answers = await asyncio.gather(*(call_raw(gw, tokens[i % 2], sessions[i % 2]) for i in range(20)))

    assert all(answer.status == 200 and "result" in answer.message() for answer in answers)
    assert endpoint.count(CLIENT_CREDENTIALS) == 1
    claims = [seen for seen in backend.check.seen if "jti" in seen]
    assert {c["jti"] for c in claims} == {endpoint.requests[0].jti}
    assert claims[0]["sub"] == CLIENT_ID and claims[0]["aud"] == RESOURCE and claims[0]["scope"] == "billing:read"


async def test_a_client_credentials_token_is_fetched_again_before_it_expires(
    tmp: Path, endpoint: TokenEndpoint, token_url: str
) -> None:
    endpoint.lifetime = 2  # refreshed at half its lifetime, since 30 s before it would be before it was issued
    async with checked_mcp_backend(endpoint=endpoint, audience=RESOURCE) as backend:
        auth = oauth("oauth2_client_credentials", token_url, resource=RESOURCE)
        async with in_process_gateway(tmp, one_target(backend.url, auth), AUTH_POLICY, env=ENV) as gw:
            token = caller_token("alice")
            session_id = await raw_session(gw.port, "/mcp/v1/billing", bearer(token))
            fetched = endpoint.count(CLIENT_CREDENTIALS)
            assert (await call_raw(gw, token, session_id)).status == 200
            assert endpoint.count(CLIENT_CREDENTIALS) == fetched
            await asyncio.sleep(1.2)
            assert (await call_raw(gw, token, session_id)).status == 200

    assert endpoint.count(CLIENT_CREDENTIALS) == fetched + 1
    assert refused_only_anonymous(backend)


async def test_token_exchange_keeps_one_token_per_caller_and_never_crosses_callers(
    tmp: Path, endpoint: TokenEndpoint, token_url: str
) -> None:
    async with checked_mcp_backend(endpoint=endpoint, audience=RESOURCE) as backend:
        auth = oauth("token_exchange", token_url, resource=RESOURCE, audience="hr-mcp", scopes=["hr:read"])
        async with in_process_gateway(tmp, one_target(backend.url, auth), AUTH_POLICY, env=ENV) as gw:
            callers = {sub: caller_token(sub) for sub in ("alice", "bob", "carol")}
            sessions = {sub: await raw_session(gw.port, "/mcp/v1/billing", bearer(t)) for sub, t in callers.items()}
            rounds = [sub for sub in callers for _ in range(6)]
            answers = await asyncio.gather(*(call_raw(gw, callers[sub], sessions[sub]) for sub in rounds))

    for sub, answer in zip(rounds, answers, strict=True):
        claims = json.loads(answer.message()["result"]["content"][0]["text"])
        assert claims["sub"] == sub and claims["act"] == {"sub": CLIENT_ID}
        assert claims["aud"] == [RESOURCE, "hr-mcp"] and claims["scope"] == "hr:read"
    exchanges = [r for r in endpoint.requests if r.grant_type == TOKEN_EXCHANGE]
    assert sorted(r.subject for r in exchanges) == ["alice", "bob", "carol"]
    owner_of = {r.jti: r.subject for r in exchanges}
    # Every token the backend saw, on every request (initialize, notifications, calls), was its caller's.
    assert all(owner_of[c["jti"]] == c["sub"] for c in backend.check.seen)


async def test_token_exchange_without_a_verified_caller_is_502_not_401(
    tmp: Path, endpoint: TokenEndpoint, token_url: str
) -> None:
    async with checked_mcp_backend(endpoint=endpoint, audience=RESOURCE) as backend:
        auth = oauth("token_exchange", token_url, resource=RESOURCE)
        async with in_process_gateway(tmp, one_target(backend.url, auth), env=ENV) as gw:
            answer = await raw_request(gw.port, "POST", "/mcp/v1/billing", mcp_headers(gw.port), initialize_body())

    assert answer.status == 502
    assert answer.message()["error"]["data"] == {"reason": "upstream_auth"}
    assert set(backend.check.presented) <= {None}


# -- a backend that refuses the token, a token endpoint that fails ---------------------------------


async def test_a_backend_401_drops_the_token_and_the_call_is_retried_once_with_a_fresh_one(
    tmp: Path, endpoint: TokenEndpoint, token_url: str
) -> None:
    async with checked_mcp_backend(endpoint=endpoint, audience=RESOURCE) as backend:
        auth = oauth("oauth2_client_credentials", token_url, resource=RESOURCE)
        async with in_process_gateway(tmp, one_target(backend.url, auth), AUTH_POLICY, env=ENV) as gw:
            token = caller_token("alice")
            session_id = await raw_session(gw.port, "/mcp/v1/billing", bearer(token))
            backend.check.revoke(endpoint.requests[-1].jti)
            retried = await call_raw(gw, token, session_id)
            fetched = endpoint.count(CLIENT_CREDENTIALS)
            backend.check.refuse_all = True
            refused_before = backend.check.refused
            refused = await call_raw(gw, token, session_id)

    assert retried.status == 200 and "result" in retried.message()
    assert fetched == 2
    assert refused.status == 502
    assert refused.message()["error"]["code"] == -32052
    assert refused.message()["error"]["data"] == {"reason": "backend_auth"}
    # Once with the cached token, once with a fresh one; never a third time.
    assert backend.check.refused - refused_before == 2
    assert endpoint.count(CLIENT_CREDENTIALS) == 3
    assert "www-authenticate" not in dict(refused.headers)


@pytest.mark.parametrize("failure", ["server_error", "refusal", "not_json", "unreachable"])
async def test_a_failing_token_endpoint_is_the_gateways_502_upstream_auth(
    tmp: Path, endpoint: TokenEndpoint, token_url: str, failure: str
) -> None:
    if failure == "server_error":
        endpoint.fail_status = 500
    elif failure == "refusal":
        endpoint.fail_status = 400
    elif failure == "not_json":
        endpoint.garbage = True
    async with checked_mcp_backend(endpoint=endpoint, audience=RESOURCE) as backend:
        with closed_port() as dead:
            url = f"http://127.0.0.1:{dead}/oauth2/token" if failure == "unreachable" else token_url
            auth = oauth("oauth2_client_credentials", url, resource=RESOURCE)
            config = {"server": {"metrics_listen": "127.0.0.1:0"}, **one_target(backend.url, auth)}
            async with in_process_gateway(tmp, config, AUTH_POLICY, env=ENV) as gw:
                answer = await raw_request(
                    gw.port,
                    "POST",
                    "/mcp/v1/billing",
                    mcp_headers(gw.port, bearer(caller_token("alice"))),
                    initialize_body(),
                )
                assert gw.admin_port is not None
                counted = await refusals(gw.admin_port, "billing", "upstream_auth")

    assert answer.status == 502, answer.body
    assert answer.message()["error"]["code"] == -32052
    assert answer.message()["error"]["data"] == {"reason": "upstream_auth"}
    assert counted == 1.0
    assert set(backend.check.presented) <= {None}  # only health checks: no call went without its credential


async def _get(url: str) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(url)
    assert response.status_code == 200, response.text
    return response.text


# -- virtual servers and A2A agents ---------------------------------------------------------------


async def test_a_virtual_servers_member_presents_its_own_credentials(
    tmp: Path, endpoint: TokenEndpoint, token_url: str
) -> None:
    async with (
        checked_mcp_backend(endpoint=endpoint, audience=RESOURCE) as exchanged,
        checked_mcp_backend(bearer=STATIC_TOKEN) as static,
    ):
        config = {
            "mcp": {
                "targets": [
                    {
                        "name": "hr",
                        "backends": [{"url": exchanged.url}],
                        "auth": oauth("token_exchange", token_url, resource=RESOURCE),
                    },
                    {
                        "name": "wiki",
                        "backends": [{"url": static.url}],
                        "auth": {"type": "bearer", "tokenEnv": "STATIC_TOKEN"},
                    },
                ],
                "virtual_servers": [{"name": "workspace", "members": [{"target": "hr"}, {"target": "wiki"}]}],
            }
        }
        async with in_process_gateway(tmp, config, AUTH_POLICY, env=ENV) as gw:
            token = caller_token("dana")
            async with sdk_client(
                gw.base + "/mcp/v1/workspace", headers={"Authorization": f"Bearer {token}"}
            ) as client:
                hr = json.loads(await call_text(client, "hr__whoami"))
                wiki = json.loads(await call_text(client, "wiki__whoami"))

    assert hr["sub"] == "dana" and hr["act"] == {"sub": CLIENT_ID}
    assert wiki == {"header": "authorization", "value": f"Bearer {STATIC_TOKEN}"}
    assert refused_only_anonymous(exchanged) and refused_only_anonymous(static)


async def test_an_a2a_agent_gets_a_client_credentials_token_for_its_card_and_its_calls(
    tmp: Path, endpoint: TokenEndpoint, token_url: str
) -> None:
    async with checked_a2a_agent(endpoint=endpoint, audience=RESOURCE) as agent:
        config = {
            "a2a": {
                "agents": [
                    {
                        "name": "planner",
                        "backends": [{"url": agent.url}],
                        "auth": oauth("oauth2_client_credentials", token_url, resource=RESOURCE),
                    }
                ]
            }
        }
        async with in_process_gateway(tmp, config, AUTH_POLICY, env=ENV) as gw:
            claims = json.loads(await a2a_send(gw, caller_token("erin")))

    assert claims["sub"] == CLIENT_ID and claims["aud"] == RESOURCE
    assert refused_only_anonymous(agent)
    assert endpoint.count(CLIENT_CREDENTIALS) == 1


async def test_an_a2a_agent_acts_for_each_caller_by_token_exchange(
    tmp: Path, endpoint: TokenEndpoint, token_url: str
) -> None:
    async with checked_a2a_agent(endpoint=endpoint, audience=RESOURCE) as agent:
        # A card serves every caller, so none is fetched on a caller's behalf: this agent's is public.
        agent.check.open_paths.add("/.well-known/agent-card.json")
        config = {
            "a2a": {
                "agents": [
                    {
                        "name": "planner",
                        "backends": [{"url": agent.url}],
                        "auth": oauth("token_exchange", token_url, resource=RESOURCE),
                    }
                ]
            }
        }
        async with in_process_gateway(tmp, config, AUTH_POLICY, env=ENV) as gw:
            answers = {sub: await a2a_send(gw, caller_token(sub)) for sub in ("frank", "grace")}

    for sub, text in answers.items():
        claims = json.loads(text)
        assert claims["sub"] == sub and claims["act"] == {"sub": CLIENT_ID}
    assert sorted(r.subject for r in endpoint.requests) == ["frank", "grace"]


async def a2a_send(gw: InProcessGateway, token: str) -> str:
    """One message through the gateway with the a2a-sdk client, as the caller of `token`; the reply's text."""
    async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {token}"}) as http:
        card = await A2ACardResolver(http, gw.base + "/a2a/v1/planner").get_agent_card()
        client = await create_client(card, client_config=ClientConfig(streaming=False, httpx_client=http))
        message = Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=[Part(text="who?")])
        replies = [event async for event in client.send_message(SendMessageRequest(message=message))]
    return str(replies[-1].message.parts[0].text)


# -- secrets stay secret -----------------------------------------------------------------------------


async def test_no_secret_or_token_reaches_the_log_the_metrics_the_audit_or_the_admin_answers(
    tmp: Path, endpoint: TokenEndpoint, token_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with checked_mcp_backend(endpoint=endpoint, audience=RESOURCE) as backend:
        auth = oauth("token_exchange", token_url, resource=RESOURCE)
        config = {"server": {"metrics_listen": "127.0.0.1:0"}, **one_target(backend.url, auth)}
        async with in_process_gateway(tmp, config, AUTH_POLICY, env=ENV) as gw:
            token = caller_token("heidi")
            session_id = await raw_session(gw.port, "/mcp/v1/billing", bearer(token))
            assert (await call_raw(gw, token, session_id)).status == 200
            backend.check.refuse_all = True  # a 401, a retry with a fresh token, a 502
            assert (await call_raw(gw, token, session_id)).status == 502
            endpoint.fail_status = 400  # and a token endpoint that refuses a new caller
            other = mcp_headers(gw.port, bearer(caller_token("ivan")))
            assert (await raw_request(gw.port, "POST", "/mcp/v1/billing", other, initialize_body())).status == 502
            admin = f"http://127.0.0.1:{gw.admin_port}"
            answers = [await _get(admin + path) for path in ("/metrics", "/admin/sessions", "/admin/audit")]
            answers.append(await _get(f"{admin}/admin/sessions/{session_id}"))

    issued = [p.removeprefix("Bearer ") for p in backend.check.presented if p]
    assert issued, "the backend was presented tokens"
    secrets = [CLIENT_SECRET, token, *issued]
    written = [
        record.getMessage() + json.dumps(getattr(record, "fields", {}), default=str) for record in caplog.records
    ]
    for text in [*written, *answers]:
        for secret in secrets:
            assert secret not in text
