"""A session belongs to the iss+sub that created it; every request's own token decides its scopes (contract 5.4, 6)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.support import (
    InProcessGateway,
    Process,
    RawResponse,
    bearer,
    gateway_in_thread,
    mcp_headers,
    mcp_target,
    raw_request,
    raw_session,
    tool_call,
    tool_text,
    trace_backend,
)

ISSUER = "https://issuer.test"
OTHER_ISSUER = "https://other-issuer.test"
AUDIENCE = "agentgw"
SECRET = "a-test-secret-long-enough-for-hs256-session-binding"
OTHER_SECRET = "the-other-issuers-secret-also-long-enough-for-hs256"
PROTOCOL = ("MCP-Protocol-Version", "2025-11-25")
FULL_SCOPE = "read:documents"

POLICIES = f"""\
apiVersion: agentgw.dev/v1alpha1
kind: SessionAuthPolicy
metadata: {{name: auth}}
spec:
  jwtValidation: {{issuer: {ISSUER}, audience: {AUDIENCE}, secretEnv: TEST_JWT_SECRET, algorithms: [HS256]}}
---
apiVersion: agentgw.dev/v1alpha1
kind: SessionAuthPolicy
metadata: {{name: other-auth}}
spec:
  jwtValidation: {{issuer: {OTHER_ISSUER}, audience: {AUDIENCE}, secretEnv: OTHER_JWT_SECRET, algorithms: [HS256]}}
---
apiVersion: agentgw.dev/v1alpha1
kind: ToolPolicy
metadata: {{name: tools}}
spec:
  defaultAction: deny
  allowedTools:
    - {{name: search_documents, allowedScopes: ["{FULL_SCOPE}"]}}
    - {{name: add}}
"""


def token(subject: str, issuer: str = ISSUER, **extra: Any) -> str:
    """A fresh HS256 token: every one differs (its own jti), as a refreshed token would."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": subject,
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        "scope": FULL_SCOPE,
        **extra,
    }
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, SECRET if issuer == ISSUER else OTHER_SECRET, algorithm="HS256")


class Trace:
    """The trace backend's record of which tools actually ran."""

    def __init__(self, file: Path) -> None:
        self.file = file

    def runs(self, tool: str) -> int:
        if not self.file.exists():
            return 0
        return self.file.read_text().splitlines().count(tool)


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, Trace]]:
    tmp = tmp_path_factory.mktemp("trace")
    server = trace_backend(tmp / "trace", tmp / "trace-server.log").start()
    yield server, Trace(tmp / "trace")
    server.stop()


@pytest.fixture(scope="module")
def gw(trace: tuple[Process, Trace], tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    tmp = tmp_path_factory.mktemp("binding")
    config = {"mcp": {"targets": [mcp_target("docs", trace[0].port)]}}
    env = {"TEST_JWT_SECRET": SECRET, "OTHER_JWT_SECRET": OTHER_SECRET}
    with gateway_in_thread(tmp, config, policies=POLICIES, env=env) as running:
        yield running


@pytest.fixture
def ran(trace: tuple[Process, Trace]) -> Trace:
    return trace[1]


async def open_session(port: int, bearer_token: str) -> str:
    return await raw_session(port, "/mcp/v1", bearer(bearer_token))


async def call(port: int, session_id: str, bearer_token: str, tool: str, arguments: dict[str, Any]) -> RawResponse:
    headers = mcp_headers(port, bearer(bearer_token), ("Mcp-Session-Id", session_id), PROTOCOL)
    return await raw_request(port, "POST", "/mcp/v1", headers, tool_call(tool, arguments))


async def add(port: int, session_id: str, bearer_token: str) -> RawResponse:
    return await call(port, session_id, bearer_token, "add", {"a": 1, "b": 2})


async def search(port: int, session_id: str, bearer_token: str) -> RawResponse:
    return await call(port, session_id, bearer_token, "search_documents", {"query": "gateway"})


# -- binding to iss+sub -----------------------------------------------------------


async def test_another_subjects_token_is_403_and_the_owner_continues(gw: InProcessGateway, ran: Trace) -> None:
    session_id = await open_session(gw.port, token("alice"))
    before = ran.runs("add")

    refused = await add(gw.port, session_id, token("bob"))
    assert refused.status == 403
    assert "error" in refused.json()

    answered = await add(gw.port, session_id, token("alice"))
    assert answered.status == 200
    assert tool_text(answered) == "add ran"
    assert ran.runs("add") == before + 1  # bob's call never reached the backend


async def test_the_same_subject_of_another_issuer_is_403(gw: InProcessGateway) -> None:
    session_id = await open_session(gw.port, token("alice"))
    refused = await add(gw.port, session_id, token("alice", issuer=OTHER_ISSUER))
    assert refused.status == 403
    assert (await add(gw.port, session_id, token("alice"))).status == 200


async def test_another_subject_cannot_end_the_session(gw: InProcessGateway) -> None:
    session_id = await open_session(gw.port, token("alice"))
    headers = [("Host", f"127.0.0.1:{gw.port}"), bearer(token("bob")), ("Mcp-Session-Id", session_id), PROTOCOL]
    refused = await raw_request(gw.port, "DELETE", "/mcp/v1", headers)
    assert refused.status == 403
    assert (await add(gw.port, session_id, token("alice"))).status == 200


async def test_a_refreshed_token_of_the_owner_continues_the_session(gw: InProcessGateway) -> None:
    now = int(time.time())
    session_id = await open_session(gw.port, token("alice", iat=now - 120, exp=now + 60))
    refreshed = token("alice", iat=now, exp=now + 3600)
    response = await add(gw.port, session_id, refreshed)
    assert response.status == 200
    assert tool_text(response) == "add ran"


# -- the scopes of the token presented with each request --------------------------


async def test_token_without_the_scope_is_refused_and_the_tool_never_runs(gw: InProcessGateway, ran: Trace) -> None:
    session_id = await open_session(gw.port, token("alice"))
    before = ran.runs("search_documents")

    refused = await search(gw.port, session_id, token("alice", scope="write:email"))
    assert refused.status == 403
    error = refused.json()["error"]
    assert error["code"] == -32051
    assert error["data"]["reason"] == "missing_scope"
    assert error["data"]["requiredScopes"] == [FULL_SCOPE]
    challenge = refused.header("www-authenticate")
    assert challenge is not None
    assert 'error="insufficient_scope"' in challenge
    assert f'scope="{FULL_SCOPE}"' in challenge
    assert f'resource_metadata="{gw.base}/.well-known/oauth-protected-resource"' in challenge

    allowed = await search(gw.port, session_id, token("alice"))
    assert allowed.status == 200
    assert tool_text(allowed) == "search_documents ran"
    # Exactly one run: the allowed call. Had the refused one been forwarded, it would have run first.
    assert ran.runs("search_documents") == before + 1


async def test_a_token_without_any_scope_claim_has_no_scopes(gw: InProcessGateway, ran: Trace) -> None:
    session_id = await open_session(gw.port, token("alice"))
    before = ran.runs("search_documents")
    refused = await search(gw.port, session_id, token("alice", scope=None))
    assert refused.status == 403
    assert refused.json()["error"]["data"]["reason"] == "missing_scope"
    # A tool that needs no scope still runs.
    assert (await add(gw.port, session_id, token("alice", scope=None))).status == 200
    assert ran.runs("search_documents") == before


async def test_a_stepped_up_token_unlocks_the_tool_in_the_same_session(gw: InProcessGateway) -> None:
    # The session was made with a narrow token; the scopes of the session are not what counts.
    session_id = await open_session(gw.port, token("alice", scope="write:email"))
    assert (await search(gw.port, session_id, token("alice", scope="write:email"))).status == 403
    stepped_up = await search(gw.port, session_id, token("alice"))
    assert stepped_up.status == 200
    assert tool_text(stepped_up) == "search_documents ran"


async def test_a_session_made_with_full_scope_does_not_lend_it_to_a_narrower_token(gw: InProcessGateway) -> None:
    session_id = await open_session(gw.port, token("alice"))
    assert (await search(gw.port, session_id, token("alice"))).status == 200
    assert (await search(gw.port, session_id, token("alice", scope="write:email"))).status == 403


async def test_scp_list_claim_grants_scopes(gw: InProcessGateway) -> None:
    scp_token = token("alice", scope=None, scp=[FULL_SCOPE])
    session_id = await open_session(gw.port, scp_token)
    response = await search(gw.port, session_id, scp_token)
    assert response.status == 200
    assert tool_text(response) == "search_documents ran"
