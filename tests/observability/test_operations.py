"""Operations (contract 2, 4, 10): /metrics after real traffic, the JSON access log, `agentgw sessions`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentgw.auth.jwt import mint_token
from agentgw.observability.audit import hash_session
from tests.support import (
    ROOT,
    Gateway,
    InProcessGateway,
    Process,
    bearer,
    deny_list_policy,
    gateway,
    gateway_in_thread,
    hs256_auth_policy,
    mcp_target,
    poll,
    raw_call,
    raw_request,
    raw_session,
    tool_text,
)

SECRET = "operations-tests-secret-of-at-least-32-characters"
ISSUER = "https://issuer.test"
POLICIES = hs256_auth_policy(ISSUER, "OPS_JWT_SECRET") + "---\n" + deny_list_policy("docs", "whoami")
Sample = tuple[str, dict[str, str], float]


def token(subject: str = "ops-user") -> str:
    return mint_token(SECRET, subject, ["read:documents"], 600, issuer=ISSUER, audience="agentgw")


def samples(metrics_port: int) -> list[Sample]:
    text = httpx2.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def value(found: list[Sample], name: str, **labels: str) -> float | None:
    for sample_name, sample_labels, sample_value in found:
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items()):
            return sample_value
    return None


def log_lines(gw: Gateway) -> list[dict[str, Any]]:
    """Every line the gateway wrote: each must be one JSON object."""
    return [json.loads(line) for line in gw.log.read_text().splitlines() if line]


def access_lines(gw: Gateway) -> list[dict[str, Any]]:
    return [line for line in log_lines(gw) if "request_id" in line]


def observed_config(backends: list[Process], dead_port: int) -> dict[str, Any]:
    """Auth, a ToolPolicy (in POLICIES), one live and one dead backend, the echo LLM and a metrics port."""
    return {
        "server": {"metrics_listen": "127.0.0.1:0"},
        "mcp": {"targets": [mcp_target("docs", backends[0].port, dead_port)]},
        "llm": {
            "providers": [{"name": "echo", "type": "echo"}],
            "models": [{"name": "default", "route": ["echo/echo"]}],
        },
    }


@pytest.fixture
def observed(tmp: Path, backends: list[Process], dead_port: int) -> Iterator[tuple[InProcessGateway, int, int]]:
    """The gateway (served from a thread: the tests read it with blocking clients), its admin port, the dead port."""
    config = observed_config(backends, dead_port)
    with gateway_in_thread(tmp, config, POLICIES, env={"OPS_JWT_SECRET": SECRET}) as gw:
        assert gw.admin_port is not None
        yield gw, gw.admin_port, dead_port


@pytest.fixture
def observed_process(tmp: Path, backends: list[Process], dead_port: int) -> Iterator[Gateway]:
    """The same gateway as `agentgw serve`, for what only its own log output shows."""
    gw = gateway(tmp, observed_config(backends, dead_port), POLICIES, env={"OPS_JWT_SECRET": SECRET})
    yield gw
    gw.stop()


async def test_metrics_after_real_traffic_carry_every_contract_name(
    observed: tuple[InProcessGateway, int, int], backends: list[Process]
) -> None:
    gw, metrics_port, dead_port = observed
    auth = bearer(token())
    sessions = [await raw_session(gw.port, "/mcp/v1", auth) for _ in range(2)]
    headers = [("Host", f"127.0.0.1:{gw.port}"), auth]

    async def call(name: str) -> dict[str, Any]:
        response = await raw_request(
            gw.port,
            "POST",
            "/mcp/v1",
            [
                *headers,
                ("Content-Type", "application/json"),
                ("Accept", "application/json, text/event-stream"),
                ("Mcp-Session-Id", sessions[0]),
                ("MCP-Protocol-Version", "2025-11-25"),
            ],
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 7,
                    "method": "tools/call",
                    "params": {"name": name, "arguments": {"a": 1, "b": 2}},
                }
            ).encode(),
        )
        assert response.status == 200, response.body
        return response.message()

    assert "result" in await call("add")
    assert (await call("whoami"))["error"]["code"] == -32051
    # Names no backend listed: each would be a series of its own if it were a label.
    for invented in ("no_such_tool_1", "no_such_tool_2"):
        await call(invented)
    chat = httpx2.post(
        f"{gw.base}/v1/chat/completions",
        headers={"Authorization": f"Bearer {token()}"},
        json={"model": "default", "messages": [{"role": "user", "content": "count these words please"}]},
        timeout=10,
    )
    assert chat.status_code == 200
    assert (await raw_request(gw.port, "GET", "/mcp/v1/docs", [("Host", f"127.0.0.1:{gw.port}")])).status == 401

    found = samples(metrics_port)

    assert value(found, "agentgw_requests_total", route="/mcp/v1", status="200") >= 5
    assert value(found, "agentgw_requests_total", route="/mcp/v1/{target}", status="401") == 1
    assert value(found, "agentgw_requests_total", route="/v1/chat/completions", status="200") == 1
    assert value(found, "agentgw_request_duration_seconds_count", route="/mcp/v1") >= 5
    assert value(found, "agentgw_request_duration_seconds_bucket", route="/v1/chat/completions", le="+Inf") == 1
    assert value(found, "agentgw_sessions_active") == 2
    assert value(found, "agentgw_tool_calls_total", target="docs", tool="add", decision="allow") == 1
    assert value(found, "agentgw_tool_calls_total", target="docs", tool="whoami", decision="deny") == 1
    # Never listed by the backend, so never called (contract 11), and still one series.
    assert value(found, "agentgw_tool_calls_total", target="docs", tool="_unknown", decision="deny") == 2
    live_url, dead_url = (f"http://127.0.0.1:{p}/mcp" for p in (backends[0].port, dead_port))
    assert value(found, "agentgw_backend_up", target="docs", backend=live_url) == 1
    assert value(found, "agentgw_backend_up", target="docs", backend=dead_url) == 0
    usage = chat.json()["usage"]
    for kind in ("prompt", "completion"):
        assert (
            value(found, "agentgw_llm_tokens_total", provider="echo", model="echo", kind=kind)
            == usage[f"{kind}_tokens"]
        )
    # Bounded labels: no subject, no session id, no invented tool name anywhere in the exposition.
    labels = {v for _, sample_labels, _ in found for v in sample_labels.values()}
    assert not labels & {"ops-user", *sessions, "no_such_tool_1", "no_such_tool_2"}


async def test_one_json_log_line_per_request_without_tokens_or_contents(
    observed_process: Gateway, backends: list[Process]
) -> None:
    gw = observed_process
    secret_token = token("log-reader")
    session_id = await raw_session(gw.port, "/mcp/v1", bearer(secret_token))
    headers = [
        ("Host", f"127.0.0.1:{gw.port}"),
        bearer(secret_token),
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("Mcp-Session-Id", session_id),
        ("MCP-Protocol-Version", "2025-11-25"),
        ("X-Request-Id", "trace-abc.123"),
    ]
    marker = "confidential-query-7f3a"
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "tools/call",
            "params": {"name": "search_documents", "arguments": {"query": marker}},
        }
    ).encode()
    response = await raw_request(gw.port, "POST", "/mcp/v1", headers, body)
    assert response.status == 200 and tool_text(response) == "no match"
    assert response.header("x-request-id") == "trace-abc.123"
    chat_marker = "private-chat-text-91c2"
    httpx2.post(
        f"{gw.base}/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret_token}"},
        json={"model": "echo/echo", "messages": [{"role": "user", "content": chat_marker}]},
        timeout=10,
    )

    lines = await poll(lambda: _when(len(access_lines(gw)) >= 4, access_lines(gw)))

    call = next(line for line in lines if line["request_id"] == "trace-abc.123")
    assert call == {
        "time": call["time"],
        "request_id": "trace-abc.123",
        "route": "/mcp/v1",
        "method": "tools/call",
        "http_method": "POST",
        "session": hash_session(session_id),
        "subject": "log-reader",
        "target": "docs",
        "backend": f"http://127.0.0.1:{backends[0].port}/mcp",
        "tool": "search_documents",
        "decision": "allow",
        "status": 200,
        "duration": call["duration"],
    }
    assert 0 < call["duration"] < 10 and call["time"].endswith("+00:00")
    chat = next(line for line in lines if line["route"] == "/v1/chat/completions")
    assert (chat["subject"], chat["target"], chat["backend"], chat["status"]) == (
        "log-reader",
        "echo",
        "echo/echo",
        200,
    )
    assert len({line["request_id"] for line in lines}) == len(lines)
    startup = [line for line in log_lines(gw) if "request_id" not in line]
    assert startup and all({"time", "level", "logger", "message"} <= set(line) for line in startup)
    everything = gw.log.read_text()
    for leaked in (secret_token, SECRET, session_id, marker, chat_marker):
        assert leaked not in everything


async def _when(condition: bool, result: Any) -> Any:
    return result if condition else None


def agentgw(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentgw", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


async def test_sessions_revoke_through_one_replica_ends_the_session_on_another(
    tmp: Path, redis_url: str, backends: list[Process]
) -> None:
    store = {"type": "redis", "url": redis_url, "key_prefix": f"ops{time.monotonic_ns()}:"}
    targets = {"targets": [mcp_target("docs", backends[0].port)]}
    operated = {"session_store": store, "mcp": targets, "server": {"metrics_listen": "127.0.0.1:0"}}
    # Served from threads: the operator commands run while the test waits for them.
    with (
        gateway_in_thread(tmp, operated, name="operator") as operator,
        gateway_in_thread(tmp, {"session_store": store, "mcp": targets}, name="serving") as serving,
    ):
        kept, revoked = await raw_session(serving.port), await raw_session(serving.port)
        assert (await raw_call(serving.port, revoked, "add", {"a": 1, "b": 1})).status == 200

        listed = agentgw(operator.config_file, "sessions", "list")
        assert listed.returncode == 0, listed.stderr
        assert revoked in listed.stdout and kept in listed.stdout
        shown = agentgw(operator.config_file, "sessions", "show", revoked)
        assert shown.returncode == 0, shown.stderr
        record = json.loads(shown.stdout)
        assert (record["id"], record["target"]) == (revoked, "docs")
        assert "initialize" not in record

        result = agentgw(operator.config_file, "sessions", "revoke", revoked)
        assert result.returncode == 0, result.stderr

        assert (await raw_call(serving.port, revoked, "add", {"a": 1, "b": 1})).status == 404
        assert (await raw_call(serving.port, kept, "add", {"a": 1, "b": 1})).status == 200
        again = agentgw(operator.config_file, "sessions", "revoke", revoked)
        assert again.returncode == 1 and "no such session" in again.stderr
        assert revoked not in agentgw(operator.config_file, "sessions", "list").stdout


async def test_admin_api_is_not_served_on_the_main_port(observed: tuple[InProcessGateway, int, int]) -> None:
    gw, metrics_port, _ = observed
    host = [("Host", f"127.0.0.1:{gw.port}")]
    for path in ("/admin/sessions", "/admin/audit", "/metrics"):
        assert (await raw_request(gw.port, "GET", path, host)).status == 404
    assert httpx2.get(f"http://127.0.0.1:{metrics_port}/admin/sessions", timeout=10).status_code == 200
    bad = httpx2.get(f"http://127.0.0.1:{metrics_port}/admin/sessions?limit=lots", timeout=10)
    assert bad.status_code == 400 and "limit" in bad.json()["error"]
    # A browser page cannot drive it: not cross-site (a simple POST carries an Origin), not by DNS rebinding.
    admin = f"http://127.0.0.1:{metrics_port}/admin"
    cross_site = httpx2.post(
        f"{admin}/tools/docs/whoami/approve",
        headers={"Origin": "http://evil.example", "Content-Type": "text/plain"},
        timeout=10,
    )
    assert cross_site.status_code == 403
    rebound = httpx2.get(f"{admin}/sessions", headers={"Host": f"rebind.evil.example:{metrics_port}"}, timeout=10)
    assert rebound.status_code == 403
