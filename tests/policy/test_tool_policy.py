"""ToolPolicy through a real gateway (contract 5.5, 6, 10): every refused call is sent for real,
and the trace backend's file proves the tool never ran."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support import (
    ROOT,
    InProcessGateway,
    Process,
    RawResponse,
    gateway_in_thread,
    initialize_body,
    mcp_headers,
    mcp_target,
    poll,
    raw_request,
    tool_call,
    tool_text,
    trace_backend,
)

ISSUER = "https://issuer.test"
SECRET = "policy-tests-secret-of-at-least-32-characters"
STATEFUL = "2025-11-25"
MODERN = "2026-07-28"
POLICY_DENIED = -32051
INVALID_REQUEST = -32600

POLICIES = """\
apiVersion: agentgw.dev/v1alpha1
kind: SessionAuthPolicy
metadata: {name: auth}
spec:
  jwtValidation: {issuer: "https://issuer.test", audience: agentgw, secretEnv: TEST_JWT_SECRET, algorithms: [HS256]}
---
apiVersion: agentgw.dev/v1alpha1
kind: ToolPolicy
metadata: {name: docs-tools}
spec:
  targetRefs: [docs]
  allowedTools:
    - {name: search_documents, allowedScopes: ["read:documents"]}
    - {name: add}
    - {name: exec_shell}              # allowed here and denied below: the deny list must win
  denyList: [exec_shell, read_credentials, "*_secret*"]
  allowedPrompts:
    - {name: greeting, allowedScopes: ["read:documents"]}
  allowedResources:
    - {name: "docs://readme", allowedScopes: ["read:documents"]}
---
apiVersion: agentgw.dev/v1alpha1
kind: ToolPolicy
metadata: {name: open-tools}
spec:
  targetRefs: [open]
  defaultAction: allow
  denyList: [exec_shell, "*_secret*"]
"""

# A backend (the real SDK server) listing tools whose names break MCP's naming rule.
ODD_NAMES_SERVER = """
import sys
from mcp.server.mcpserver import MCPServer

server = MCPServer(name="odd-names")

def ran() -> str:
    return "ran"

for name in ("plain", "two words", "trailing_newline\\n"):
    server.add_tool(ran, name=name)
server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]), streamable_http_path="/mcp")
"""


class Trace:
    """The trace backend's record of every tool, prompt and resource that actually ran."""

    def __init__(self, path: Path, port: int) -> None:
        self.path = path
        self.port = port

    def runs(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.exists() else []

    def count(self, name: str) -> int:
        return self.runs().count(name)

    def assert_never_ran(self, *names: str) -> None:
        ran = set(self.runs())
        assert not ran.intersection(names), f"ran despite the policy: {sorted(ran.intersection(names))}"


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trace]:
    tmp = tmp_path_factory.mktemp("trace")
    backend = trace_backend(tmp / "trace", tmp / "trace-server.log").start()
    yield Trace(tmp / "trace", backend.port)
    backend.stop()


@pytest.fixture(scope="module")
def odd_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    log = tmp_path_factory.mktemp("odd") / "odd.log"
    backend = Process(lambda port: [sys.executable, "-c", ODD_NAMES_SERVER, str(port)], log=log).start()
    yield backend
    backend.stop()


@pytest.fixture(scope="module")
def gw(trace: Trace, odd_backend: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    tmp = tmp_path_factory.mktemp("tool-policy")
    targets = [mcp_target("docs", trace.port), mcp_target("open", trace.port), mcp_target("odd", odd_backend.port)]
    # Served from a thread, as the audit is read with the blocking command line.
    config = {"server": {"metrics_listen": "127.0.0.1:0"}, "mcp": {"targets": targets}}
    with gateway_in_thread(tmp, config, policies=POLICIES, env={"TEST_JWT_SECRET": SECRET}) as running:
        yield running


# -- callers -------------------------------------------------------------------


def token(*scopes: str, sub: str = "alice") -> str:
    claims: dict[str, Any] = {"iss": ISSUER, "aud": "agentgw", "sub": sub, "exp": int(time.time()) + 3600}
    if scopes:
        claims["scope"] = " ".join(scopes)
    return jwt.encode(claims, SECRET, "HS256")


READER = token("read:documents")
MAILER = token("write:email")
NOBODY = token()


class Caller:
    """One token's stateful MCP session with the gateway, over raw HTTP."""

    def __init__(self, gw: InProcessGateway, bearer: str, path: str) -> None:
        self.gw = gw
        self.bearer = bearer
        self.path = path
        self.session_id = ""

    @classmethod
    async def open(cls, gw: InProcessGateway, bearer: str = READER, path: str = "/mcp/v1/docs") -> Caller:
        caller = cls(gw, bearer, path)
        headers = mcp_headers(gw.port, ("Authorization", f"Bearer {bearer}"))
        response = await raw_request(gw.port, "POST", path, headers, initialize_body())
        assert response.status == 200, response.body
        caller.session_id = response.header("mcp-session-id") or ""
        assert caller.session_id
        notified = await caller.post(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
        assert notified.status == 202, notified.body
        return caller

    async def post(self, body: bytes) -> RawResponse:
        headers = mcp_headers(
            self.gw.port,
            ("Authorization", f"Bearer {self.bearer}"),
            ("Mcp-Session-Id", self.session_id),
            ("MCP-Protocol-Version", STATEFUL),
        )
        return await raw_request(self.gw.port, "POST", self.path, headers, body)

    async def call(self, tool: str, arguments: dict[str, Any], request_id: int = 2) -> RawResponse:
        return await self.post(tool_call(tool, arguments, request_id))

    async def request(self, method: str, params: dict[str, Any], request_id: int = 3) -> RawResponse:
        return await self.post(message(method, params, request_id))


def message(method: str, params: Any, request_id: int | None = 1) -> bytes:
    """A JSON-RPC message as raw UTF-8 (no \\u escapes); no id makes it notification-shaped."""
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if request_id is not None:
        body["id"] = request_id
    return json.dumps(body, ensure_ascii=False).encode()


def assert_denied(response: RawResponse, *reasons: str, status: int = 200) -> dict[str, Any]:
    assert response.status == status, response.body
    answer = response.message()
    assert "error" in answer, answer
    error = answer["error"]
    assert error["code"] == POLICY_DENIED
    assert error["data"]["reason"] in reasons
    return dict(error["data"])


def assert_invalid_request(response: RawResponse) -> None:
    assert response.status == 400, response.body
    assert response.json()["error"]["code"] == INVALID_REQUEST


@contextlib.asynccontextmanager
async def sdk_client(url: str, bearer: str, mode: str) -> AsyncIterator[Client]:
    """The real MCP SDK client, presenting a bearer token on every request."""
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {bearer}"}, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            yield client


# -- allow, deny, scopes ----------------------------------------------------------


async def test_deny_list_wins_over_an_allow_rule_for_the_same_tool(gw: InProcessGateway, trace: Trace) -> None:
    caller = await Caller.open(gw)
    data = assert_denied(await caller.call("exec_shell", {"command": "id"}), "deny_list")
    assert data["tool"] == "exec_shell"
    assert data["policy"] == "docs-tools"
    trace.assert_never_ran("exec_shell")


async def test_first_target_path_is_governed_by_its_policy(gw: InProcessGateway, trace: Trace) -> None:
    caller = await Caller.open(gw, path="/mcp/v1")
    assert_denied(await caller.call("exec_shell", {"command": "id"}), "deny_list")
    trace.assert_never_ran("exec_shell")


async def test_missing_scope_is_403_with_the_scope_that_would_allow_it(gw: InProcessGateway, trace: Trace) -> None:
    before = trace.count("search_documents")
    caller = await Caller.open(gw, MAILER)
    response = await caller.call("search_documents", {"query": "q"})
    data = assert_denied(response, "missing_scope", status=403)
    assert data["requiredScopes"] == ["read:documents"]
    challenge = response.header("www-authenticate") or ""
    assert challenge.startswith("Bearer ")
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="read:documents"' in challenge
    assert trace.count("search_documents") == before


async def test_the_same_call_with_the_scope_runs(gw: InProcessGateway, trace: Trace) -> None:
    before = trace.count("search_documents")
    caller = await Caller.open(gw, READER)
    response = await caller.call("search_documents", {"query": "q"})
    assert response.status == 200
    assert tool_text(response) == "search_documents ran"
    assert trace.count("search_documents") == before + 1


async def test_token_without_scope_claim_has_no_scopes(gw: InProcessGateway, trace: Trace) -> None:
    before = trace.count("search_documents")
    caller = await Caller.open(gw, NOBODY)
    assert_denied(await caller.call("search_documents", {"query": "q"}), "missing_scope", status=403)
    assert tool_text(await caller.call("add", {"a": 1, "b": 2})) == "add ran"
    assert trace.count("search_documents") == before


async def test_scopes_from_an_scp_list_claim_count(gw: InProcessGateway, trace: Trace) -> None:
    before = trace.count("search_documents")
    claims = {"iss": ISSUER, "aud": "agentgw", "sub": "alice", "exp": int(time.time()) + 3600}
    caller = await Caller.open(gw, jwt.encode({**claims, "scp": ["read:documents"]}, SECRET, "HS256"))
    assert tool_text(await caller.call("search_documents", {"query": "q"})) == "search_documents ran"
    assert trace.count("search_documents") == before + 1


@pytest.mark.parametrize("scope", ["READ:DOCUMENTS", "read:documents:all", "read:", "read:documents,write:email"])
async def test_a_scope_that_only_resembles_the_required_one_does_not_count(
    gw: InProcessGateway, trace: Trace, scope: str
) -> None:
    before = trace.count("search_documents")
    caller = await Caller.open(gw, token(scope))
    assert_denied(await caller.call("search_documents", {"query": "q"}), "missing_scope", status=403)
    assert trace.count("search_documents") == before


async def test_tool_on_no_list_is_not_allowed_under_default_deny(gw: InProcessGateway, trace: Trace) -> None:
    before = trace.count("send_email")
    caller = await Caller.open(gw)
    assert_denied(await caller.call("send_email", {"to": "x@example.com", "body": "hi"}), "not_allowed")
    assert_denied(await caller.call("no_such_tool", {}), "not_allowed")
    assert trace.count("send_email") == before


async def test_default_action_allow_lets_an_unlisted_tool_run(gw: InProcessGateway, trace: Trace) -> None:
    before = trace.count("send_email")
    caller = await Caller.open(gw, NOBODY, path="/mcp/v1/open")
    response = await caller.call("send_email", {"to": "x@example.com", "body": "hi"})
    assert tool_text(response) == "send_email ran"
    assert trace.count("send_email") == before + 1


@pytest.mark.parametrize("path", ["/mcp/v1/docs", "/mcp/v1/open"])
async def test_glob_deny_blocks_get_secret_key(gw: InProcessGateway, trace: Trace, path: str) -> None:
    caller = await Caller.open(gw, path=path)
    assert_denied(await caller.call("get_secret_key", {}), "deny_list")
    trace.assert_never_ran("get_secret_key")


async def test_read_credentials_is_denied(gw: InProcessGateway, trace: Trace) -> None:
    caller = await Caller.open(gw)
    assert_denied(await caller.call("read_credentials", {}), "deny_list")
    trace.assert_never_ran("read_credentials")


# -- evasion -------------------------------------------------------------------------

EVASIONS = {
    "mixed-case": "Exec_Shell",
    "upper-case": "EXEC_SHELL",
    "leading-space": " exec_shell",
    "trailing-newline": "exec_shell\n",
    "full-width": "\uff45\uff58\uff45\uff43_\uff53\uff48\uff45\uff4c\uff4c",
    "zero-width-space": "exec\u200b_shell",
    "long-s": "exec_\u017fhell",
    "cyrillic-e": "ex\u0435c_shell",
    "nul": "exec_shell\u0000",
    "tag-characters": "exec_shell\U000e0001\U000e0069\U000e0064",
    "soft-hyphen": "exec\u00ad_shell",
    "bidi-override": "\u202eexec_shell",
}


@pytest.mark.parametrize("name", list(EVASIONS.values()), ids=list(EVASIONS))
async def test_evasions_of_a_denied_name_never_reach_the_backend(gw: InProcessGateway, trace: Trace, name: str) -> None:
    for path in ("/mcp/v1/docs", "/mcp/v1/open"):
        caller = await Caller.open(gw, path=path)
        response = await caller.post(message("tools/call", {"name": name, "arguments": {"command": "id"}}))
        assert_denied(response, "deny_list", "not_allowed")
    trace.assert_never_ran("exec_shell")


@pytest.mark.parametrize("method", ["Tools/Call", "TOOLS/CALL", "tools/call ", "tools//call", "tools/call\u0000"])
async def test_variants_of_the_call_method_never_run_a_denied_tool(
    gw: InProcessGateway, trace: Trace, method: str
) -> None:
    caller = await Caller.open(gw)
    response = await caller.post(message(method, {"name": "exec_shell", "arguments": {"command": "id"}}))
    assert response.status < 500
    assert "result" not in response.message()
    trace.assert_never_ran("exec_shell")


async def test_batch_holding_a_denied_call_is_refused_whole(gw: InProcessGateway, trace: Trace) -> None:
    before = trace.count("add")
    caller = await Caller.open(gw)
    allowed = message("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}}, 1)
    denied = message("tools/call", {"name": "exec_shell", "arguments": {"command": "id"}}, 2)
    assert_invalid_request(await caller.post(b"[" + allowed + b"," + denied + b"]"))
    assert trace.count("add") == before
    trace.assert_never_ran("exec_shell")


async def test_notification_shaped_call_is_checked_like_a_request(gw: InProcessGateway, trace: Trace) -> None:
    caller = await Caller.open(gw)
    response = await caller.post(message("tools/call", {"name": "exec_shell", "arguments": {"command": "id"}}, None))
    assert_denied(response, "deny_list")
    trace.assert_never_ran("exec_shell")


@pytest.mark.parametrize(
    "params",
    [
        b'{"name":"add","name":"exec_shell","arguments":{"a":1,"b":2,"command":"id"}}',
        b'{"name":"exec_shell","name":"add","arguments":{"a":1,"b":2,"command":"id"}}',
        b'{"name":"add","arguments":{"a":1,"b":2},"arguments":{"command":"id"}}',
    ],
    ids=["allowed-then-denied", "denied-then-allowed", "duplicate-arguments"],
)
async def test_duplicate_keys_in_params_are_refused_and_nothing_runs(
    gw: InProcessGateway, trace: Trace, params: bytes
) -> None:
    before = trace.count("add")
    caller = await Caller.open(gw)
    body = b'{"jsonrpc":"2.0","id":4,"method":"tools/call","params":' + params + b"}"
    assert_invalid_request(await caller.post(body))
    assert trace.count("add") == before
    trace.assert_never_ran("exec_shell")


@pytest.mark.parametrize("name", [["exec_shell"], {"name": "exec_shell"}, 1, None, True])
async def test_non_string_tool_name_is_an_invalid_request(gw: InProcessGateway, trace: Trace, name: Any) -> None:
    caller = await Caller.open(gw)
    assert_invalid_request(await caller.post(message("tools/call", {"name": name, "arguments": {"command": "id"}})))
    trace.assert_never_ran("exec_shell")


# -- tools/list and arguments ------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_tools_list_shows_only_what_each_callers_scopes_allow(gw: InProcessGateway, mode: str) -> None:
    async with sdk_client(f"{gw.mcp_url}/docs", READER, mode) as client:
        reader_sees = {tool.name for tool in (await client.list_tools()).tools}
    async with sdk_client(f"{gw.mcp_url}/docs", MAILER, mode) as client:
        mailer_sees = {tool.name for tool in (await client.list_tools()).tools}
    assert reader_sees == {"search_documents", "add"}
    assert mailer_sees == {"add"}


async def test_tools_list_never_shows_denied_tools(gw: InProcessGateway) -> None:
    async with sdk_client(f"{gw.mcp_url}/open", READER, "legacy") as client:
        listed = {tool.name for tool in (await client.list_tools()).tools}
    assert {"search_documents", "send_email", "add", "read_credentials"} <= listed
    assert not listed.intersection({"exec_shell", "get_secret_key"})


@pytest.mark.parametrize(
    "name",
    [
        "two words",
        "trailing_newline\n",
    ],
    ids=["space", "trailing-newline"],
)
async def test_backend_tool_breaking_the_naming_rule_is_left_out_of_tools_list(gw: InProcessGateway, name: str) -> None:
    async with sdk_client(f"{gw.mcp_url}/odd", NOBODY, "legacy") as client:
        listed = {tool.name for tool in (await client.list_tools()).tools}
    assert "plain" in listed
    assert name not in listed


async def test_call_naming_a_tool_that_breaks_the_naming_rule_is_not_allowed(gw: InProcessGateway) -> None:
    caller = await Caller.open(gw, NOBODY, path="/mcp/v1/odd")
    assert_denied(await caller.call("two words", {}), "not_allowed")


async def test_invalid_arguments_are_refused_before_the_backend(gw: InProcessGateway, trace: Trace) -> None:
    caller = await Caller.open(gw)
    listed = await caller.request("tools/list", {})
    assert "add" in {tool["name"] for tool in listed.message()["result"]["tools"]}
    before = trace.count("add")
    for arguments in ({"a": "x", "b": 1}, {"a": 1}, {"a": 1.5, "b": 2}):
        assert_denied(await caller.call("add", arguments), "invalid_arguments")
    assert trace.count("add") == before
    assert tool_text(await caller.call("add", {"a": 1, "b": 2})) == "add ran"
    assert trace.count("add") == before + 1


# -- prompts and resources ------------------------------------------------------------


async def test_prompts_get_follows_allowed_prompts(gw: InProcessGateway, trace: Trace) -> None:
    before = trace.count("prompt:greeting")
    mailer = await Caller.open(gw, MAILER)
    response = await mailer.request("prompts/get", {"name": "greeting", "arguments": {"name": "x"}})
    data = assert_denied(response, "missing_scope", status=403)
    assert data["requiredScopes"] == ["read:documents"]
    assert_denied(await mailer.request("prompts/get", {"name": "unlisted", "arguments": {}}), "not_allowed")
    assert trace.count("prompt:greeting") == before
    reader = await Caller.open(gw, READER)
    allowed = await reader.request("prompts/get", {"name": "greeting", "arguments": {"name": "x"}})
    assert "result" in allowed.message()
    assert trace.count("prompt:greeting") == before + 1


async def test_prompts_are_unrestricted_where_no_policy_lists_them(gw: InProcessGateway, trace: Trace) -> None:
    before = trace.count("prompt:greeting")
    caller = await Caller.open(gw, NOBODY, path="/mcp/v1/open")
    response = await caller.request("prompts/get", {"name": "greeting", "arguments": {"name": "x"}})
    assert "result" in response.message()
    assert trace.count("prompt:greeting") == before + 1


async def test_resources_read_follows_allowed_resources(gw: InProcessGateway, trace: Trace) -> None:
    before = trace.count("resource:readme")
    mailer = await Caller.open(gw, MAILER)
    assert_denied(await mailer.request("resources/read", {"uri": "docs://readme"}), "missing_scope", status=403)
    assert_denied(await mailer.request("resources/read", {"uri": "docs://other"}), "not_allowed")
    assert trace.count("resource:readme") == before
    reader = await Caller.open(gw, READER)
    allowed = await reader.request("resources/read", {"uri": "docs://readme"})
    assert allowed.message()["result"]["contents"][0]["text"] == "readme"
    assert trace.count("resource:readme") == before + 1


# -- the stateless 2026-07-28 revision ------------------------------------------------


def modern(method: str, params: dict[str, Any]) -> bytes:
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": meta}}).encode()


async def modern_call(gw: InProcessGateway, bearer: str, tool: str, arguments: dict[str, Any]) -> RawResponse:
    headers = mcp_headers(
        gw.port,
        ("Authorization", f"Bearer {bearer}"),
        ("MCP-Protocol-Version", MODERN),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", tool),
    )
    body = modern("tools/call", {"name": tool, "arguments": arguments})
    return await raw_request(gw.port, "POST", "/mcp/v1/docs", headers, body)


async def test_stateless_revision_is_policy_checked(gw: InProcessGateway, trace: Trace) -> None:
    assert_denied(await modern_call(gw, READER, "exec_shell", {"command": "id"}), "deny_list")
    assert_denied(await modern_call(gw, READER, "Exec_Shell", {"command": "id"}), "deny_list", "not_allowed")
    trace.assert_never_ran("exec_shell")
    before = trace.count("search_documents")
    assert_denied(await modern_call(gw, MAILER, "search_documents", {"query": "q"}), "missing_scope", status=403)
    assert trace.count("search_documents") == before
    assert tool_text(await modern_call(gw, READER, "search_documents", {"query": "q"})) == "search_documents ran"
    assert trace.count("search_documents") == before + 1


# -- audit ------------------------------------------------------------------------------


def audit_tail(gw: InProcessGateway) -> list[dict[str, Any]]:
    args = [sys.executable, "-m", "agentgw", "audit", "tail", "-n", "50", "--config", str(gw.config_file)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, cwd=ROOT)
    if done.returncode != 0:
        return []  # the admin listener may still be starting
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


async def test_audit_tail_shows_allow_and_deny_decisions(gw: InProcessGateway) -> None:
    subject = f"auditor-{uuid.uuid4().hex[:8]}"
    caller = await Caller.open(gw, token("read:documents", sub=subject))
    assert tool_text(await caller.call("add", {"a": 1, "b": 2})) == "add ran"
    assert_denied(await caller.call("exec_shell", {"command": "id"}), "deny_list")

    async def entries() -> list[dict[str, Any]]:
        mine = [e for e in await asyncio.to_thread(audit_tail, gw) if e.get("subject") == subject]
        return mine if len(mine) >= 2 else []

    found = await poll(entries, timeout=15)
    decisions = {(e["tool"], e["decision"], e["reason"]) for e in found}
    assert decisions == {("add", "allow", None), ("exec_shell", "deny", "deny_list")}
    assert all(e["target"] == "docs" for e in found)
    sessions = {e["session"] for e in found}
    assert len(sessions) == 1
    (hashed,) = sessions
    assert hashed and caller.session_id not in json.dumps(found)
