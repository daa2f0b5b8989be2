"""The order of a call's steps (`agentgw/call.py`), shown per transport by what each step leaves behind.

session → policy → rate limit → upstream → relay → observe. Each test drives real
traffic through an in-process gateway to backends that record what reaches them,
and reads the order off the outcome: a call refused at one step shows no trace of
the steps after it (no backend request, no count against the limit, no backend
in its log line), and the trace of every step before it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from websockets.asyncio.client import ClientConnection, connect

from agentgw.auth.jwt import mint_token
from agentgw.observability.audit import hash_session
from tests.hostile_backend import HostileBackend, http, json_answer
from tests.inbound.lying_agent import LyingAgent, Received, Reply, honest
from tests.stub_providers import StubProvider
from tests.support import (
    InProcessGateway,
    RawResponse,
    deny_list_policy,
    hs256_auth_policy,
    in_process_gateway,
    initialize_body,
    mcp_headers,
    poll,
    raw_request,
    tool_call,
)

T = TypeVar("T")

SECRET = "call-order-tests-secret-of-at-least-32-characters"
SECRET_ENV = "CALL_ORDER_JWT_SECRET"
ISSUER = "https://issuer.call-order.test"
PROVIDER_KEY_ENV = "CALL_ORDER_PROVIDER_KEY"
LIMIT = 4  # requests per minute per subject, for each kind of traffic
# An MCP session's initialize and notifications/initialized are requests too, counted like the rest.
CALLS_AFTER_HANDSHAKE = LIMIT - 2
DENIALS = 3  # more than the room left under the limit when they are sent
POLICY_DENIED = -32051
RATE_LIMITED = -32029
TASK_NOT_FOUND = -32001
ANSWER_TIMEOUT = 10.0

STATEFUL = "2025-11-25"
STATELESS = "2026-07-28"
TARGET = "tools"
DENIED_TOOL = "exec_shell"
TOOLS = [{"name": name, "inputSchema": {"type": "object"}} for name in ("add", "flaky", DENIED_TOOL)]
AGENT = "planner"
DENIED_METHOD = "CancelTask"


def rate_limit_policy(kind: str) -> str:
    return (
        f"apiVersion: agentgw.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: {kind}-limits}}\nspec:\n"
        f"  appliesTo: [{kind}]\n  defaultTier: free\n  tiers:\n    free: {{requestsPerMinute: {LIMIT}}}\n"
    )


AUTH = hs256_auth_policy(ISSUER, SECRET_ENV)
MCP_POLICIES = "---\n".join([AUTH, deny_list_policy(TARGET, DENIED_TOOL), rate_limit_policy("mcp")])
AGENT_POLICY = f"""\
apiVersion: agentgw.dev/v1alpha1
kind: AgentPolicy
metadata: {{name: agents}}
spec:
  defaultAction: deny
  allowedAgents: [{{name: {AGENT}}}]
  denyList: [{DENIED_METHOD}]
"""
A2A_POLICIES = "---\n".join([AUTH, AGENT_POLICY, rate_limit_policy("a2a")])
CHAT_POLICIES = "---\n".join([AUTH, rate_limit_policy("llm")])
ADMIN = {"metrics_listen": "127.0.0.1:0"}


def subject(name: str) -> str:
    """A subject of its own for each test and attempt: rate-limit counts never carry over."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def bearer(who: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {mint_token(SECRET, who, [], 600, issuer=ISSUER, audience='agentgw')}")


async def in_one_minute(attempt: Callable[[], Awaitable[T]]) -> T:
    """Run `attempt` (which uses a fresh subject) until one run falls inside one rate-limit minute:
    the limits count per clock minute, and a run across a boundary would count in two."""
    for _ in range(3):
        minute = int(time.time() // 60)
        outcome = await attempt()
        if int(time.time() // 60) == minute:
            return outcome
    raise AssertionError("three attempts in a row crossed a minute boundary")


def error_code(response: RawResponse) -> int | None:
    error = response.message().get("error")
    return int(error["code"]) if error is not None else None


# -- what the gateway records: request log lines, audit entries, metrics ------------------------


class RequestLines:
    """The request log lines (`agentgw.access`) of the in-process gateways, as their JSON fields."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog

    def all(self) -> list[dict[str, Any]]:
        return [r.fields for r in self.caplog.records if r.name == "agentgw.access"]  # type: ignore[attr-defined]

    async def one(self, **expected: Any) -> dict[str, Any]:
        """The line whose fields hold `expected`; awaited, since it is written once the answer is sent."""

        async def found() -> list[dict[str, Any]]:
            return [f for f in self.all() if all(f.get(k) == v for k, v in expected.items())]

        [line] = await poll(found, timeout=5, interval=0.02)
        return dict(line)


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> RequestLines:
    caplog.set_level(logging.INFO, logger="agentgw.access")
    return RequestLines(caplog)


async def audit_entries(gw: InProcessGateway, who: str) -> list[dict[str, Any]]:
    assert gw.admin_port is not None
    host = [("Host", f"127.0.0.1:{gw.admin_port}")]
    answer = await raw_request(gw.admin_port, "GET", "/admin/audit?n=1000", host)
    assert answer.status == 200, answer.body
    return [e for e in answer.json()["entries"] if e["subject"] == who]


async def tool_calls_total(gw: InProcessGateway, tool: str, decision: str) -> float:
    assert gw.admin_port is not None
    answer = await raw_request(gw.admin_port, "GET", "/metrics", [("Host", f"127.0.0.1:{gw.admin_port}")])
    labels = rf'(?=[^}}]*target="{TARGET}")(?=[^}}]*tool="{tool}")(?=[^}}]*decision="{decision}")'
    found = re.search(rf"^agentgw_tool_calls_total\{{{labels}[^}}]*\}} (\S+)$", answer.body.decode(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


# -- MCP: a backend that records every message, behind one gateway -----------------------------


def tool_answer(message: dict[str, Any]) -> bytes:
    """`flaky` fails with the backend's own 500; every other tool answers."""
    if message["params"]["name"] == "flaky":
        error = {"jsonrpc": "2.0", "id": message["id"], "error": {"code": -32603, "message": "flaky is down"}}
        return http(500, json.dumps(error).encode())
    return json_answer(message, {"content": [{"type": "text", "text": "done"}]})


@pytest.fixture
async def backend() -> AsyncIterator[HostileBackend]:
    server = await HostileBackend().start()
    server.answers["tools/list"] = lambda m: json_answer(m, {"tools": TOOLS})
    server.answers["tools/call"] = tool_answer
    yield server
    await server.stop()


@pytest.fixture
async def mcp_gw(tmp: Path, backend: HostileBackend) -> AsyncIterator[InProcessGateway]:
    config = {"server": ADMIN, "mcp": {"targets": [{"name": TARGET, "backends": [{"url": backend.url}]}]}}
    async with in_process_gateway(tmp, config, MCP_POLICIES, env={SECRET_ENV: SECRET}) as gw:
        yield gw


def calls_of(backend: HostileBackend, tool: str | None = None) -> int:
    """How many tools/call (of `tool`, when given) reached the backend."""
    return sum(
        m.get("method") == "tools/call" and (tool is None or m["params"]["name"] == tool) for m in backend.received
    )


async def open_session(port: int, who: str) -> str:
    answer = await raw_request(port, "POST", "/mcp/v1", mcp_headers(port, bearer(who)), initialize_body())
    assert answer.status == 200, answer.body
    session_id = answer.header("mcp-session-id")
    assert session_id is not None
    headers = mcp_headers(port, bearer(who), ("Mcp-Session-Id", session_id), ("MCP-Protocol-Version", STATEFUL))
    notified = await raw_request(
        port, "POST", "/mcp/v1", headers, b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
    )
    assert notified.status == 202, notified.body
    return session_id


async def call_in_session(port: int, who: str, session_id: str, tool: str) -> RawResponse:
    headers = mcp_headers(port, bearer(who), ("Mcp-Session-Id", session_id), ("MCP-Protocol-Version", STATEFUL))
    return await raw_request(port, "POST", "/mcp/v1", headers, tool_call(tool, {}))


async def test_mcp_http_a_denied_call_is_audited_and_logged_but_never_forwarded(
    mcp_gw: InProcessGateway, backend: HostileBackend, lines: RequestLines
) -> None:
    alice = subject("alice")
    session_id = await open_session(mcp_gw.port, alice)

    denied = await call_in_session(mcp_gw.port, alice, session_id, DENIED_TOOL)

    assert (denied.status, error_code(denied)) == (200, POLICY_DENIED)
    # The tool was never seen listed: the target's tools were listed once, and nothing else was sent.
    assert [m.get("method") for m in backend.received] == ["initialize", "notifications/initialized", "tools/list"]
    [entry] = await audit_entries(mcp_gw, alice)
    assert (entry["tool"], entry["decision"], entry["session"]) == (DENIED_TOOL, "deny", hash_session(session_id))
    assert await tool_calls_total(mcp_gw, DENIED_TOOL, "deny") == 1
    line = await lines.one(subject=alice, method="tools/call")
    assert (line["tool"], line["decision"], line["status"]) == (DENIED_TOOL, "deny", 200)
    assert line["session"] == hash_session(session_id)
    assert line["backend"] is None  # the upstream step never ran


async def test_mcp_http_another_subjects_session_is_refused_before_the_policy_decides(
    mcp_gw: InProcessGateway, backend: HostileBackend, lines: RequestLines
) -> None:
    alice, mallory = subject("alice"), subject("mallory")
    session_id = await open_session(mcp_gw.port, alice)

    intruding = await call_in_session(mcp_gw.port, mallory, session_id, DENIED_TOOL)

    assert intruding.status == 403
    assert error_code(intruding) != POLICY_DENIED
    # The policy never looked: no decision audited or counted, not even the listing it would ask for.
    assert await audit_entries(mcp_gw, mallory) == []
    assert await tool_calls_total(mcp_gw, DENIED_TOOL, "deny") == 0
    assert backend.methods() == ["initialize", "notifications/initialized"]
    line = await lines.one(subject=mallory, method="tools/call")
    assert (line["status"], line["decision"], line["tool"], line["backend"]) == (403, None, None, None)
    # In its owner's hands the same call is the policy's to refuse.
    owned = await call_in_session(mcp_gw.port, alice, session_id, DENIED_TOOL)
    assert error_code(owned) == POLICY_DENIED


async def test_mcp_http_denials_spend_no_rate_limit_and_a_429_reaches_no_backend(
    mcp_gw: InProcessGateway, backend: HostileBackend, lines: RequestLines
) -> None:
    async def attempt() -> tuple[str, list[int | None], list[int], int]:
        who = subject("limited")
        before = calls_of(backend)
        session_id = await open_session(mcp_gw.port, who)
        denials = [await call_in_session(mcp_gw.port, who, session_id, DENIED_TOOL) for _ in range(DENIALS)]
        allowed = [await call_in_session(mcp_gw.port, who, session_id, "add") for _ in range(CALLS_AFTER_HANDSHAKE + 1)]
        denied_when_spent = await call_in_session(mcp_gw.port, who, session_id, DENIED_TOOL)
        codes = [error_code(r) for r in [*denials, denied_when_spent]]
        return who, codes, [r.status for r in allowed], calls_of(backend) - before

    who, denial_codes, statuses, forwarded = await in_one_minute(attempt)

    assert denial_codes == [POLICY_DENIED] * (DENIALS + 1)  # a spent limit does not hide a denial either
    assert statuses == [200] * CALLS_AFTER_HANDSHAKE + [429]
    assert forwarded == CALLS_AFTER_HANDSHAKE
    limited = await lines.one(subject=who, status=429)
    # Allowed by the policy, then refused by the limit, before any backend was chosen.
    assert (limited["tool"], limited["decision"], limited["backend"]) == ("add", "allow", None)


async def test_mcp_http_the_log_line_carries_the_backend_and_status_the_relay_produced(
    mcp_gw: InProcessGateway, backend: HostileBackend, lines: RequestLines
) -> None:
    alice = subject("alice")
    session_id = await open_session(mcp_gw.port, alice)

    answered = await call_in_session(mcp_gw.port, alice, session_id, "add")
    failed = await call_in_session(mcp_gw.port, alice, session_id, "flaky")

    assert (answered.status, failed.status) == (200, 500)
    for tool, status in (("add", 200), ("flaky", 500)):
        line = await lines.one(subject=alice, tool=tool)
        assert (line["backend"], line["status"], line["decision"]) == (backend.url, status, "allow")


# -- MCP, stateless revision 2026-07-28 ---------------------------------------------------------


async def stateless_call(port: int, who: str, tool: str) -> RawResponse:
    meta = {"io.modelcontextprotocol/protocolVersion": STATELESS, "io.modelcontextprotocol/clientCapabilities": {}}
    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": {}, "_meta": meta},
    }
    headers = mcp_headers(
        port, bearer(who), ("MCP-Protocol-Version", STATELESS), ("Mcp-Method", "tools/call"), ("Mcp-Name", tool)
    )
    return await raw_request(port, "POST", "/mcp/v1", headers, json.dumps(message).encode())


async def test_mcp_stateless_denials_are_audited_never_forwarded_and_spend_no_rate_limit(
    mcp_gw: InProcessGateway, backend: HostileBackend, lines: RequestLines
) -> None:
    async def attempt() -> tuple[str, list[int | None], list[int], int, int]:
        who = subject("stateless")
        before = calls_of(backend)
        denials = [await stateless_call(mcp_gw.port, who, DENIED_TOOL) for _ in range(DENIALS)]
        allowed = [await stateless_call(mcp_gw.port, who, "add") for _ in range(LIMIT + 1)]
        denied_calls = calls_of(backend, DENIED_TOOL)
        return (
            who,
            [error_code(r) for r in denials],
            [r.status for r in allowed],
            calls_of(backend) - before,
            denied_calls,
        )

    who, denial_codes, statuses, forwarded, denied_forwarded = await in_one_minute(attempt)

    assert denial_codes == [POLICY_DENIED] * DENIALS
    assert denied_forwarded == 0
    assert statuses == [200] * LIMIT + [429]
    assert forwarded == LIMIT
    entries = await audit_entries(mcp_gw, who)
    assert [e["decision"] for e in entries if e["tool"] == DENIED_TOOL] == ["deny"] * DENIALS
    denied_lines = [f for f in lines.all() if f["subject"] == who and f["tool"] == DENIED_TOOL]
    assert [(f["decision"], f["status"], f["backend"]) for f in denied_lines] == [("deny", 200, None)] * DENIALS
    limited = await lines.one(subject=who, status=429)
    assert (limited["decision"], limited["backend"]) == ("allow", None)
    relayed = [f for f in lines.all() if f["subject"] == who and f["status"] == 200 and f["tool"] == "add"]
    assert [f["backend"] for f in relayed] == [backend.url] * LIMIT


# -- MCP over WebSocket: every frame is a call of its own -----------------------------------------


async def exchange(ws: ClientConnection, message: dict[str, Any]) -> dict[str, Any]:
    """Send one request frame and wait for its answer before the next: frames in flight run concurrently."""
    await ws.send(json.dumps(message))
    while True:
        answer: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(decode=True), ANSWER_TIMEOUT))
        if answer.get("id") == message["id"]:
            return answer


def frame_call(request_id: int, tool: str) -> dict[str, Any]:
    return json.loads(tool_call(tool, {}, request_id))  # type: ignore[no-any-return]


async def test_mcp_websocket_frames_take_the_steps_in_order(
    mcp_gw: InProcessGateway, backend: HostileBackend, lines: RequestLines
) -> None:
    url = f"ws://127.0.0.1:{mcp_gw.port}/mcp/v1/{TARGET}/ws"

    async def attempt() -> tuple[str, list[Any], list[Any], int, int]:
        who = subject("socket")
        before = calls_of(backend)
        async with connect(url, subprotocols=["mcp"], additional_headers=dict([bearer(who)])) as ws:  # type: ignore[list-item]
            initialized = await exchange(ws, json.loads(initialize_body(1, STATEFUL)))
            assert "result" in initialized, initialized
            await ws.send('{"jsonrpc":"2.0","method":"notifications/initialized"}')  # the second request counted
            ids = iter(range(2, 100))
            denials = [await exchange(ws, frame_call(next(ids), DENIED_TOOL)) for _ in range(DENIALS)]
            allowed = [await exchange(ws, frame_call(next(ids), "add")) for _ in range(CALLS_AFTER_HANDSHAKE + 1)]
            denied_when_spent = await exchange(ws, frame_call(next(ids), DENIED_TOOL))
        codes = [a.get("error", {}).get("code") for a in [*denials, denied_when_spent]]
        outcomes = ["result" if "result" in a else a["error"]["code"] for a in allowed]
        return who, codes, outcomes, calls_of(backend) - before, calls_of(backend, DENIED_TOOL)

    who, denial_codes, outcomes, forwarded, denied_forwarded = await in_one_minute(attempt)

    assert denial_codes == [POLICY_DENIED] * (DENIALS + 1)
    assert denied_forwarded == 0
    assert outcomes == ["result"] * CALLS_AFTER_HANDSHAKE + [RATE_LIMITED]
    assert forwarded == CALLS_AFTER_HANDSHAKE
    assert [e["decision"] for e in await audit_entries(mcp_gw, who) if e["tool"] == DENIED_TOOL] == ["deny"] * (
        DENIALS + 1
    )
    frames = [f for f in lines.all() if f["subject"] == who and f["method"] == "tools/call"]
    assert all(f["route"] == "/mcp/v1/{target}/ws" for f in frames)
    by_tool = [(f["tool"], f["decision"], f["status"], f["backend"]) for f in frames]
    denied, allowed = (DENIED_TOOL, "deny", 200, None), ("add", "allow", 200, backend.url)
    limited = ("add", "allow", 429, None)
    assert sorted(by_tool, key=repr) == sorted(
        [denied] * (DENIALS + 1) + [allowed] * CALLS_AFTER_HANDSHAKE + [limited], key=repr
    )


# -- A2A: an agent that records every request -----------------------------------------------------


def failing_on_demand(request: Received) -> Reply:
    """Honest, but a message saying "fail" gets the agent's own 500."""
    message = request.json()
    parts = message.get("params", {}).get("message", {}).get("parts", [{}])
    if parts[0].get("text") == "fail":
        error = {"jsonrpc": "2.0", "id": message["id"], "error": {"code": -32603, "message": "agent down"}}
        return Reply(500, body=json.dumps(error).encode())
    return honest(request)


@pytest.fixture
async def agent() -> AsyncIterator[LyingAgent]:
    recording = LyingAgent(AGENT, failing_on_demand)
    server = await recording.serve()
    yield recording
    server.close()


@pytest.fixture
async def a2a_gw(tmp: Path, agent: LyingAgent) -> AsyncIterator[InProcessGateway]:
    config = {
        "server": ADMIN,
        "mcp": {"targets": []},
        "a2a": {"agents": [{"name": AGENT, "backends": [{"url": agent.url + "/"}]}]},
    }
    async with in_process_gateway(tmp, config, A2A_POLICIES, env={SECRET_ENV: SECRET}) as gw:
        yield gw


async def a2a_call(gw: InProcessGateway, who: str, method: str, params: dict[str, Any]) -> RawResponse:
    headers = [
        ("Host", f"127.0.0.1:{gw.port}"),
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
        ("A2A-Version", "1.0"),
        bearer(who),
    ]
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    return await raw_request(gw.port, "POST", f"/a2a/v1/{AGENT}", headers, body)


async def send_message(gw: InProcessGateway, who: str, text: str = "hello") -> RawResponse:
    message = {"role": "ROLE_USER", "messageId": uuid.uuid4().hex, "parts": [{"text": text}]}
    return await a2a_call(gw, who, "SendMessage", {"message": message})


async def new_task(gw: InProcessGateway, who: str) -> str:
    answer = await send_message(gw, who)
    assert answer.status == 200, answer.body
    return str(answer.json()["result"]["task"]["id"])


def methods_received(agent: LyingAgent) -> list[str]:
    return [r.json()["method"] for r in agent.posts()]


async def test_a2a_a_denied_method_is_logged_but_never_reaches_the_agent(
    a2a_gw: InProcessGateway, agent: LyingAgent, lines: RequestLines
) -> None:
    alice = subject("alice")
    task_id = await new_task(a2a_gw, alice)

    denied = await a2a_call(a2a_gw, alice, DENIED_METHOD, {"id": task_id})

    assert error_code(denied) == POLICY_DENIED
    assert methods_received(agent) == ["SendMessage"]
    line = await lines.one(subject=alice, method=DENIED_METHOD)
    assert (line["decision"], line["status"], line["backend"]) == ("deny", denied.status, None)


async def test_a2a_the_policy_decides_before_the_task_is_looked_up(
    a2a_gw: InProcessGateway, agent: LyingAgent, lines: RequestLines
) -> None:
    """A2A has no session step: the task a call names is found at the upstream step (call.py, step 8)."""
    alice, mallory = subject("alice"), subject("mallory")
    task_id = await new_task(a2a_gw, alice)

    denied = await a2a_call(a2a_gw, mallory, DENIED_METHOD, {"id": task_id})
    looked_up = await a2a_call(a2a_gw, mallory, "GetTask", {"id": task_id})

    assert error_code(denied) == POLICY_DENIED
    assert error_code(looked_up) == TASK_NOT_FOUND
    assert methods_received(agent) == ["SendMessage"]
    denied_line = await lines.one(subject=mallory, method=DENIED_METHOD)
    assert (denied_line["decision"], denied_line["backend"]) == ("deny", None)
    looked_up_line = await lines.one(subject=mallory, method="GetTask")
    assert (looked_up_line["decision"], looked_up_line["backend"]) == ("allow", None)


async def test_a2a_a_task_of_another_subject_is_looked_up_after_the_rate_limit(
    a2a_gw: InProcessGateway, agent: LyingAgent
) -> None:
    alice = subject("alice")
    task_id = await new_task(a2a_gw, alice)

    async def attempt() -> list[int | None]:
        mallory = subject("mallory")
        return [error_code(await a2a_call(a2a_gw, mallory, "GetTask", {"id": task_id})) for _ in range(LIMIT + 1)]

    codes = await in_one_minute(attempt)

    assert codes == [TASK_NOT_FOUND] * LIMIT + [RATE_LIMITED]
    assert methods_received(agent) == ["SendMessage"]


async def test_a2a_denials_spend_no_rate_limit_and_a_429_reaches_no_agent(
    a2a_gw: InProcessGateway, agent: LyingAgent, lines: RequestLines
) -> None:
    async def attempt() -> tuple[str, list[int | None], list[int], int]:
        who = subject("limited")
        before = len(agent.posts())
        task_id = await new_task(a2a_gw, who)  # the first request counted
        denials = [await a2a_call(a2a_gw, who, DENIED_METHOD, {"id": task_id}) for _ in range(DENIALS)]
        allowed = [await send_message(a2a_gw, who) for _ in range(LIMIT)]  # the last one over the limit
        denied_when_spent = await a2a_call(a2a_gw, who, DENIED_METHOD, {"id": task_id})
        codes = [error_code(r) for r in [*denials, denied_when_spent]]
        return who, codes, [r.status for r in allowed], len(agent.posts()) - before

    who, denial_codes, statuses, forwarded = await in_one_minute(attempt)

    assert denial_codes == [POLICY_DENIED] * (DENIALS + 1)
    assert statuses == [200] * (LIMIT - 1) + [429]
    assert forwarded == LIMIT
    assert DENIED_METHOD not in methods_received(agent)
    limited = await lines.one(subject=who, status=429)
    assert (limited["method"], limited["decision"], limited["backend"]) == ("SendMessage", "allow", None)


async def test_a2a_the_log_line_carries_the_agent_and_status_the_relay_produced(
    a2a_gw: InProcessGateway, agent: LyingAgent, lines: RequestLines
) -> None:
    alice = subject("alice")

    answered = await send_message(a2a_gw, alice, "hello")
    failed = await send_message(a2a_gw, alice, "fail")

    assert (answered.status, failed.status) == (200, 500)
    logged = [(f["backend"], f["status"]) for f in lines.all() if f["subject"] == alice]
    assert logged == [(agent.url, 200), (agent.url, 500)]


# -- chat: a stub provider that records every request ---------------------------------------------


@pytest.fixture
async def chat_gw(
    tmp: Path, stub: Callable[..., StubProvider], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[InProcessGateway, StubProvider]]:
    provider = stub()
    monkeypatch.setenv(PROVIDER_KEY_ENV, "sk-call-order")  # a provider's key comes from the process environment
    providers = [
        {"name": name, "type": "openai", "base_url": provider.base_url, "api_key_env": PROVIDER_KEY_ENV}
        for name in ("first", "second")
    ]
    llm = {"providers": providers, "models": [{"name": "chain", "route": ["first/m", "second/m"]}]}
    config = {"mcp": {"enabled": False}, "llm": llm}
    async with in_process_gateway(tmp, config, CHAT_POLICIES, env={SECRET_ENV: SECRET}) as gw:
        yield gw, provider


async def chat(gw: InProcessGateway, who: str, model: str = "first/m") -> RawResponse:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = [("Host", f"127.0.0.1:{gw.port}"), ("Content-Type", "application/json"), bearer(who)]
    return await raw_request(gw.port, "POST", "/v1/chat/completions", headers, body)


async def test_chat_a_429_never_reaches_the_provider(
    chat_gw: tuple[InProcessGateway, StubProvider], lines: RequestLines
) -> None:
    gw, provider = chat_gw

    async def attempt() -> tuple[str, list[int], int]:
        who = subject("chatter")
        before = len(provider.chat_requests())
        statuses = [(await chat(gw, who)).status for _ in range(LIMIT + 1)]
        return who, statuses, len(provider.chat_requests()) - before

    who, statuses, asked = await in_one_minute(attempt)

    assert statuses == [200] * LIMIT + [429]
    assert asked == LIMIT
    limited = await lines.one(subject=who, status=429)
    assert (limited["target"], limited["backend"]) == (None, None)


async def test_chat_the_log_line_carries_the_provider_that_answered(
    chat_gw: tuple[InProcessGateway, StubProvider], lines: RequestLines
) -> None:
    gw, provider = chat_gw
    provider.set_modes("failfirst=1")  # the chain's first provider fails, the second answers
    who = subject("chatter")

    answered = await chat(gw, who, "chain")

    assert answered.status == 200
    assert len(provider.chat_requests()) == 2
    line = await lines.one(subject=who)
    assert (line["target"], line["backend"], line["status"]) == ("second", "second/m", 200)
