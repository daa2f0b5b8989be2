"""The real MCP SDK client through the gateway, in both protocol generations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from mcp import types

from tests.mcp_client import call_text, sdk_client
from tests.support import InProcessGateway, Process, gateway_in_thread, mcp_target


@pytest.fixture(scope="module")
def gw(backends: list[Process], tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    tmp: Path = tmp_path_factory.mktemp("sdk")
    config = {"mcp": {"targets": [mcp_target("docs", *(b.port for b in backends), balance="round_robin")]}}
    with gateway_in_thread(tmp, config) as running:
        yield running


async def test_sdk_client_initializes_lists_and_calls_tools(gw: InProcessGateway) -> None:
    async with sdk_client(gw.mcp_url) as client:
        listed = await client.list_tools()
        assert {"search_documents", "add", "whoami"} <= {tool.name for tool in listed.tools}
        assert await call_text(client, "add", {"a": 20, "b": 22}) == "42"
        assert "pins each one" in await call_text(client, "search_documents", {"query": "gateway"})


async def test_target_path_reaches_the_same_server(gw: InProcessGateway) -> None:
    async with sdk_client(f"{gw.mcp_url}/docs") as client:
        assert await call_text(client, "add", {"a": 1, "b": 2}) == "3"


async def test_a_session_stays_on_one_replica(gw: InProcessGateway) -> None:
    async with sdk_client(gw.mcp_url) as client:
        answers = [await call_text(client, "whoami") for _ in range(6)]
    replicas = {answer.split()[0] for answer in answers}
    counts = [int(answer.split()[1]) for answer in answers]
    assert len(replicas) == 1
    # The replica's per-session counter only climbs if every call reached the same backend session.
    assert counts == [1, 2, 3, 4, 5, 6]


async def test_sessions_spread_over_replicas(gw: InProcessGateway) -> None:
    replicas = set()
    for _ in range(4):
        async with sdk_client(gw.mcp_url) as client:
            replicas.add((await call_text(client, "whoami")).split()[0])
    assert replicas == {"replica-a", "replica-b"}


async def test_client_sees_only_gateway_session_ids(gw: InProcessGateway) -> None:
    seen: list[httpx2.Response] = []
    async with sdk_client(gw.mcp_url, seen=seen) as client:
        await call_text(client, "add", {"a": 1, "b": 1})
    session_ids = {r.headers.get("mcp-session-id") for r in seen if r.headers.get("mcp-session-id")}
    assert len(session_ids) == 1
    (session_id,) = session_ids
    assert all(r.headers.get("x-mcp-session-id") in (None, session_id) for r in seen)
    assert len(session_id) >= 22  # 128+ random bits, url-safe
    # The SDK server mints 32 hex digits; the client never sees one.
    assert not all(c in "0123456789abcdef" for c in session_id)


async def test_stateless_2026_client_round_trips(gw: InProcessGateway) -> None:
    seen: list[httpx2.Response] = []
    async with sdk_client(gw.mcp_url, mode="auto", seen=seen) as client:
        listed = await client.list_tools()
        assert "add" in {tool.name for tool in listed.tools}
        assert await call_text(client, "add", {"a": 2, "b": 5}) == "7"
    requests = [r.request for r in seen]
    assert all(r.headers.get("mcp-protocol-version") == "2026-07-28" for r in requests)
    assert all("mcp-session-id" not in r.headers for r in seen)
    assert all(r.headers.get("x-mcp-session-id") for r in seen)


async def test_sampling_request_from_a_tool_completes_through_the_gateway(gw: InProcessGateway) -> None:
    asked: list[str] = []

    async def sampling(context: object, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        content = params.messages[0].content
        asked.append(content.text if isinstance(content, types.TextContent) else "")
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="a short summary"), model="test-model"
        )

    async with sdk_client(gw.mcp_url, sampling_callback=sampling) as client:
        assert await call_text(client, "summarize", {"text": "a long text"}) == "a short summary"
    assert asked == ["Summarize: a long text"]


async def test_elicitation_from_a_tool_completes_through_the_gateway(gw: InProcessGateway) -> None:
    async def elicitation(context: object, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert params.message == "Delete everything?"
        return types.ElicitResult(action="accept", content={"confirmed": False})

    async with sdk_client(gw.mcp_url, elicitation_callback=elicitation) as client:
        assert await call_text(client, "confirm", {"question": "Delete everything?"}) == "confirmed=False"
