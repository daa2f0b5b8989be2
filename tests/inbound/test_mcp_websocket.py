"""MCP over WebSocket (contract 4): the same sessions, auth and policy as Streamable HTTP."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import ClientSession
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agentgw.auth.jwt import mint_token
from tests.inbound.mcp_websocket_client import websocket_client
from tests.support import (
    Gateway,
    InProcessGateway,
    Process,
    gateway,
    hs256_auth_policy,
    in_process_gateway,
    mcp_target,
    poll,
)

SECRET = "websocket-tests-secret-of-at-least-32-characters"
ISSUER = "https://issuer.test"
POLICIES = (
    hs256_auth_policy(ISSUER, "WS_JWT_SECRET")
    + """\
---
apiVersion: agentgw.dev/v1alpha1
kind: ToolPolicy
metadata: {name: docs-tools}
spec:
  targetRefs: [docs]
  allowedTools:
    - {name: add}
    - {name: search_documents, allowedScopes: ["read:documents"]}
    - {name: whoami}
  denyList: [whoami]
"""
)


def token(*scopes: str, subject: str = "ws-user") -> str:
    return mint_token(SECRET, subject, list(scopes), 600, issuer=ISSUER, audience="agentgw")


def served_config(backends: list[Process]) -> dict[str, Any]:
    return {
        "server": {"metrics_listen": "127.0.0.1:0"},
        "mcp": {"targets": [mcp_target("docs", backends[0].port)]},
    }


@pytest.fixture
async def served(tmp: Path, backends: list[Process]) -> AsyncIterator[tuple[InProcessGateway, int]]:
    """The gateway and its admin port."""
    async with in_process_gateway(tmp, served_config(backends), POLICIES, env={"WS_JWT_SECRET": SECRET}) as gw:
        assert gw.admin_port is not None
        yield gw, gw.admin_port


@pytest.fixture
def served_process(tmp: Path, backends: list[Process]) -> Iterator[tuple[Gateway, int]]:
    """For what only the process's own log file shows: uvicorn's lines through the JSON formatter."""
    gw = gateway(tmp, served_config(backends), POLICIES, env={"WS_JWT_SECRET": SECRET})
    assert gw.admin_port is not None
    yield gw, gw.admin_port
    gw.stop()


def ws_url(gw: Gateway | InProcessGateway, query: str = "") -> str:
    return f"ws://127.0.0.1:{gw.port}/mcp/v1/docs/ws{query}"


async def live_sessions(metrics_port: int) -> list[dict[str, Any]]:
    async with httpx2.AsyncClient(timeout=10) as client:
        answer = await client.get(f"http://127.0.0.1:{metrics_port}/admin/sessions")
    return list(answer.json()["sessions"])


async def test_the_sdk_client_initializes_lists_calls_and_is_denied_over_websocket(
    served: tuple[InProcessGateway, int],
) -> None:
    gw, metrics_port = served
    headers = {"Authorization": f"Bearer {token('read:documents')}"}
    async with websocket_client(ws_url(gw), headers) as (read, write), ClientSession(read, write) as session:
        initialized = await session.initialize()
        assert initialized.server_info.name

        listed = {tool.name for tool in (await session.list_tools()).tools}
        assert {"add", "search_documents"} <= listed
        assert "whoami" not in listed  # denied tools are not shown

        added = await session.call_tool("add", {"a": 20, "b": 22})
        assert not added.is_error and added.content[0].text == "42"

        with pytest.raises(Exception) as denied:
            await session.call_tool("whoami", {})
        assert getattr(getattr(denied.value, "error", None), "code", None) == -32051

        # The WebSocket's session is an ordinary gateway session, bound to the token's subject.
        [record] = await live_sessions(metrics_port)
        assert (record["target"], record["subject"]) == ("docs", "ws-user")

    async with httpx2.AsyncClient(timeout=10) as client:
        metrics = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    assert 'agentgw_requests_total{route="/mcp/v1/{target}/ws",status="200"}' in metrics
    assert 'agentgw_tool_calls_total{decision="deny",target="docs",tool="whoami"} 1.0' in metrics


async def test_scopes_come_from_the_token_on_the_socket(served: tuple[InProcessGateway, int]) -> None:
    gw, _ = served
    headers = {"Authorization": f"Bearer {token()}"}  # no read:documents
    async with websocket_client(ws_url(gw), headers) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        assert "search_documents" not in {tool.name for tool in (await session.list_tools()).tools}
        with pytest.raises(Exception) as denied:
            await session.call_tool("search_documents", {"query": "x"})
        assert getattr(getattr(denied.value, "error", None), "code", None) == -32051


async def raw_exchange(ws: Any, message: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(message))
    answer: dict[str, Any] = json.loads(await ws.recv(decode=True))
    return answer


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
}


async def test_a_token_in_the_query_authenticates_a_client_that_cannot_set_headers(
    served_process: tuple[Gateway, int],
) -> None:
    gw, metrics_port = served_process
    query_token = token()
    async with connect(ws_url(gw, f"?access_token={query_token}"), subprotocols=["mcp"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "mcp"
        initialized = await raw_exchange(ws, INITIALIZE)
        assert initialized["result"]["protocolVersion"] == "2025-06-18"
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        called = await raw_exchange(
            ws,
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "add", "arguments": {"a": 1, "b": 2}},
            },
        )
        assert called["id"] == 2 and called["result"]["content"][0]["text"] == "3"
        broken = await raw_exchange(ws, {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": "nope"})
        assert broken["error"]["code"] == -32602 or broken["error"]["code"] == -32600
        assert len(await live_sessions(metrics_port)) == 1

    async def ended() -> bool:
        return (await live_sessions(metrics_port)) == []

    assert await poll(ended)  # closing the socket ends its session
    log = gw.log.read_text()
    assert "access_token=[redacted]" in log  # uvicorn logged the handshake's path, without the token
    assert query_token not in log


@pytest.mark.parametrize(
    ("path", "query", "headers", "status"),
    [
        ("docs", "", {}, 401),
        ("docs", "?access_token=not-a-jwt", {}, 401),
        ("docs", "", {"Authorization": "Bearer not-a-jwt"}, 401),
        ("docs", "?access_token={token}", {"Origin": "http://evil.example"}, 403),
        # A page on another loopback port: browsers do not preflight WebSockets, so only the same origin may.
        ("docs", "?access_token={token}", {"Origin": "http://localhost:3000"}, 403),
        ("nowhere", "?access_token={token}", {}, 404),
    ],
    ids=["no-token", "bad-query-token", "bad-header-token", "foreign-origin", "other-local-origin", "unknown-target"],
)
async def test_refused_handshakes_get_the_http_answer(
    served: tuple[InProcessGateway, int], path: str, query: str, headers: dict[str, str], status: int
) -> None:
    gw, metrics_port = served
    url = f"ws://127.0.0.1:{gw.port}/mcp/v1/{path}/ws{query.format(token=token())}"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, subprotocols=["mcp"], additional_headers=headers):  # type: ignore[list-item]
            pass
    assert refused.value.response.status_code == status
    if status == 401:
        assert refused.value.response.headers["www-authenticate"].startswith('Bearer realm="agentgw"')
    assert (await live_sessions(metrics_port)) == []


async def test_a_socket_whose_token_expired_is_closed(served: tuple[InProcessGateway, int]) -> None:
    gw, metrics_port = served
    short = mint_token(SECRET, "ws-user", [], 2, issuer=ISSUER, audience="agentgw")
    async with connect(ws_url(gw, f"?access_token={short}"), subprotocols=["mcp"]) as ws:  # type: ignore[list-item]
        assert "result" in await raw_exchange(ws, INITIALIZE)
        await asyncio.sleep(2.5)
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008

    async def ended() -> bool:
        return (await live_sessions(metrics_port)) == []

    assert await poll(ended)


async def test_notifications_keep_their_order_and_many_requests_are_answered(
    served: tuple[InProcessGateway, int],
) -> None:
    gw, _ = served
    async with connect(ws_url(gw, f"?access_token={token()}"), subprotocols=["mcp"]) as ws:  # type: ignore[list-item]
        assert "result" in await raw_exchange(ws, INITIALIZE)
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        calls = int(
            os.environ.get("WS_CALLS", "60")
        )  # past the per-socket limit on requests in flight: the rest wait their turn
        for n in range(calls):
            arguments = {"a": n, "b": 1}
            await ws.send(
                json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": 100 + n,
                        "method": "tools/call",
                        "params": {"name": "add", "arguments": arguments},
                    }
                )
            )
        answers = [json.loads(await asyncio.wait_for(ws.recv(decode=True), 10)) for _ in range(calls)]
    assert sorted(a["id"] for a in answers) == list(range(100, 100 + calls))
    assert all(a["result"]["content"][0]["text"] == str(a["id"] - 100 + 1) for a in answers)


async def test_a_client_not_offering_the_mcp_subprotocol_is_refused(served: tuple[InProcessGateway, int]) -> None:
    gw, _ = served
    with pytest.raises(InvalidStatus):
        async with connect(ws_url(gw, f"?access_token={token()}")):
            pass


async def test_a_query_token_still_does_not_authenticate_plain_http(served: tuple[InProcessGateway, int]) -> None:
    gw, _ = served
    async with httpx2.AsyncClient(timeout=10) as client:
        answer = await client.post(
            f"{gw.base}/mcp/v1/docs?access_token={token()}",
            headers={"Accept": "application/json, text/event-stream"},
            json=INITIALIZE,
        )
    assert answer.status_code == 401


async def test_a_frame_over_the_body_limit_closes_the_socket_with_1009(tmp: Path, backends: list[Process]) -> None:
    config = {"server": {"max_body_bytes": 65536}, "mcp": {"targets": [mcp_target("docs", backends[0].port)]}}
    async with in_process_gateway(tmp, config) as gw:
        async with connect(ws_url(gw), subprotocols=["mcp"]) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps({**INITIALIZE, "params": {**INITIALIZE["params"], "pad": "x" * 100_000}}))
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
