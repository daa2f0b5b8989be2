"""Virtual servers (contract 12): several real MCP servers behind one endpoint, driven by the real SDK client."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import types

from agentgw.inbound import mcp_virtual
from tests.hostile_backend import HostileBackend, json_answer
from tests.mcp_client import call_text, sdk_client
from tests.support import (
    ROOT,
    Gateway,
    InProcessGateway,
    Process,
    gateway,
    in_process_gateway,
    initialize_body,
    mcp_backend,
    mcp_headers,
    poll,
    raw_request,
    session_policy,
    start_all,
    tool_call,
)

DENY_BY_MEMBER_NAME = """\
apiVersion: agentgw.dev/v1alpha1
kind: ToolPolicy
metadata: {name: recorder-tools}
spec:
  targetRefs: [rec]
  defaultAction: allow
  denyList: [forbidden]
---
apiVersion: agentgw.dev/v1alpha1
kind: ToolPolicy
metadata: {name: workspace-tools}
spec:
  targetRefs: [workspace]
  defaultAction: allow
  denyList: [n_add]
"""
RECORDER_TOOLS = [
    {"name": "echo", "description": "Echo.", "inputSchema": {"type": "object"}},
    {"name": "forbidden", "description": "Never to be called.", "inputSchema": {"type": "object"}},
]


def workspace(backends: list[Process], recorder: HostileBackend) -> dict[str, Any]:
    a, b = backends
    return {
        "mcp": {
            "targets": [
                {"name": "docs", "backends": [{"url": f"http://127.0.0.1:{a.port}/mcp"}]},
                {"name": "notes", "backends": [{"url": f"http://127.0.0.1:{b.port}/mcp"}]},
                {"name": "rec", "backends": [{"url": recorder.url}]},
            ],
            "virtual_servers": [
                {
                    "name": "workspace",
                    "members": [
                        {"target": "docs"},
                        {"target": "notes", "prefix": "n_", "tools": ["whoami", "add"]},
                        {"target": "rec", "prefix": ""},
                    ],
                }
            ],
        }
    }


@pytest.fixture
async def recorder() -> AsyncIterator[HostileBackend]:
    server = await HostileBackend().start()
    server.answers["tools/list"] = lambda m: json_answer(m, {"tools": RECORDER_TOOLS})
    server.answers["tools/call"] = lambda m: json_answer(
        m, {"content": [{"type": "text", "text": f"rec:{m['params']['name']}"}]}
    )
    yield server
    await server.stop()


@pytest.fixture
async def gw(tmp: Path, backends: list[Process], recorder: HostileBackend) -> AsyncIterator[InProcessGateway]:
    async with in_process_gateway(tmp, workspace(backends, recorder), DENY_BY_MEMBER_NAME) as running:
        yield running


def url(gw: InProcessGateway) -> str:
    return f"{gw.mcp_url}/workspace"


async def test_lists_are_the_union_of_the_members_under_their_prefixes(gw: InProcessGateway) -> None:
    async with sdk_client(url(gw)) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
    docs = {f"docs__{n}" for n in ("search_documents", "add", "whoami", "summarize", "confirm")}
    # notes: only its two included tools; rec: no prefix, and its `forbidden` trimmed by rec's own policy;
    # n_add: listed by notes, but the virtual server's own policy denies the exposed name.
    assert names == docs | {"n_whoami", "echo"}


async def test_calls_go_to_the_member_whose_prefix_matches(gw: InProcessGateway, recorder: HostileBackend) -> None:
    async with sdk_client(url(gw)) as client:
        assert (await call_text(client, "docs__whoami")).startswith("replica-a ")
        assert (await call_text(client, "n_whoami")).startswith("replica-b ")
        assert await call_text(client, "docs__add", {"a": 20, "b": 22}) == "42"
        assert await call_text(client, "echo") == "rec:echo"
    calls = [m for m in recorder.received if m.get("method") == "tools/call"]
    assert [c["params"]["name"] for c in calls] == ["echo"]  # the member's own name, prefix removed


async def test_the_session_answers_as_the_virtual_server(gw: InProcessGateway) -> None:
    port = gw.port
    answer = await raw_request(port, "POST", "/mcp/v1/workspace", mcp_headers(port), initialize_body())
    assert answer.status == 200, answer.body
    result = answer.message()["result"]
    assert result["serverInfo"]["name"] == "workspace"
    assert "tools" in result["capabilities"]
    assert "docs: Searches a tiny document store." in result["instructions"]


async def session(gw: InProcessGateway | Gateway) -> tuple[str, list[tuple[str, str]]]:
    port = gw.port
    answer = await raw_request(port, "POST", "/mcp/v1/workspace", mcp_headers(port), initialize_body())
    session_id = answer.header("mcp-session-id")
    assert session_id is not None
    headers = mcp_headers(port, ("Mcp-Session-Id", session_id), ("MCP-Protocol-Version", "2025-11-25"))
    notified = await raw_request(
        port, "POST", "/mcp/v1/workspace", headers, b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
    )
    assert notified.status == 202
    return session_id, headers


async def test_a_denial_by_either_name_never_reaches_the_member(gw: InProcessGateway, recorder: HostileBackend) -> None:
    _, headers = await session(gw)
    by_member_name = await raw_request(gw.port, "POST", "/mcp/v1/workspace", headers, tool_call("forbidden", {}))
    by_exposed_name = await raw_request(gw.port, "POST", "/mcp/v1/workspace", headers, tool_call("n_add", {"a": 1}))
    unknown = await raw_request(gw.port, "POST", "/mcp/v1/workspace", headers, tool_call("nobody__add", {}))
    assert by_member_name.message()["error"]["code"] == -32051
    assert by_member_name.message()["error"]["data"]["reason"] == "deny_list"
    assert by_exposed_name.message()["error"]["code"] == -32051  # denied by the virtual server's own policy
    assert by_exposed_name.message()["error"]["data"]["policy"] == "workspace-tools"
    assert unknown.message()["error"]["code"] == -32602
    assert not [m for m in recorder.received if m.get("method") == "tools/call"]


async def test_sampling_and_elicitation_reach_the_client_and_answer_the_member_that_asked(gw: InProcessGateway) -> None:
    async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        text = params.messages[0].content
        assert isinstance(text, types.TextContent)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=f"short: {text.text}"), model="m"
        )

    async def elicitation(context: Any, params: Any) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"confirmed": True})

    async with sdk_client(url(gw), sampling_callback=sampling, elicitation_callback=elicitation) as client:
        assert await call_text(client, "docs__summarize", {"text": "abc"}) == "short: Summarize: abc"
        assert await call_text(client, "docs__confirm", {"question": "sure?"}) == "confirmed=True"


async def test_delete_ends_every_member_session(gw: InProcessGateway, recorder: HostileBackend) -> None:
    async with sdk_client(url(gw)) as client:
        assert await call_text(client, "echo") == "rec:echo"
    assert recorder.methods()[-1] == "DELETE"
    _, headers = await session(gw)
    session_id = dict(headers)["Mcp-Session-Id"]
    ended = await raw_request(gw.port, "DELETE", "/mcp/v1/workspace", headers)
    assert ended.status == 200
    again = await raw_request(gw.port, "POST", "/mcp/v1/workspace", headers, tool_call("echo", {}))
    assert again.status == 404, session_id


async def test_one_members_backend_dies_and_only_that_member_is_opened_again(
    tmp: Path, recorder: HostileBackend, free_backends: list[Process]
) -> None:
    first, second = free_backends
    config = {
        "mcp": {
            "targets": [
                {
                    "name": "docs",
                    "balance": "round_robin",
                    "backends": [{"url": f"http://127.0.0.1:{p.port}/mcp"} for p in (first, second)],
                },
                {"name": "rec", "backends": [{"url": recorder.url}]},
            ],
            "virtual_servers": [
                {"name": "workspace", "members": [{"target": "docs"}, {"target": "rec", "prefix": ""}]}
            ],
        }
    }
    async with in_process_gateway(tmp, config) as running, sdk_client(url(running)) as client:
        before = (await call_text(client, "docs__whoami")).split()
        serving = first if before[0] == "replica-1" else second
        serving.kill()
        after = (await call_text(client, "docs__whoami")).split()
        assert after[0] != before[0] and after[1] == "1"  # a fresh backend session on the other replica
        assert await call_text(client, "echo") == "rec:echo"
    assert recorder.methods().count("initialize") == 1  # the healthy member was never opened again


@pytest.fixture
def free_backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Process]]:
    """Two replicas of their own: the test kills one."""
    logs = tmp_path_factory.mktemp("replicas")
    replicas = start_all(*(mcp_backend(name, logs / f"{name}.log") for name in ("replica-1", "replica-2")))
    yield replicas
    for replica in replicas:
        replica.stop()


async def test_two_gateway_processes_sharing_redis_continue_one_virtual_session(
    tmp: Path, backends: list[Process], recorder: HostileBackend, redis_url: str
) -> None:
    config = {**workspace(backends, recorder), "session_store": {"type": "redis", "url": redis_url}}
    one = gateway(tmp, config, name="one")  # a process of its own; the other serves from this one
    try:
        async with in_process_gateway(tmp, config, name="two") as two:
            _, headers = await session(one)
            texts = []
            for port in (one.port, two.port):
                answer = await raw_request(port, "POST", "/mcp/v1/workspace", headers, tool_call("n_whoami", {}))
                assert answer.status == 200, answer.body
                texts.append(answer.message()["result"]["content"][0]["text"])
            # The same backend session, reached through the second gateway: its call count goes on.
            assert texts == ["replica-b 1", "replica-b 2"]
    finally:
        one.stop()


# -- a stdio member: progress, prompts, resources, list_changed, both client modes ----------------

STDIO_SERVER = [sys.executable, str(ROOT / "examples" / "stdio_server.py")]


@pytest.fixture
async def mixed(tmp: Path, backends: list[Process]) -> AsyncIterator[InProcessGateway]:
    """An HTTP member and a stdio member behind one virtual server."""
    config = {
        "mcp": {
            "targets": [
                {"name": "docs", "backends": [{"url": f"http://127.0.0.1:{backends[0].port}/mcp"}]},
                {"name": "files", "backends": [{"command": STDIO_SERVER}]},
            ],
            "virtual_servers": [{"name": "workspace", "members": [{"target": "docs"}, {"target": "files"}]}],
        }
    }
    async with in_process_gateway(tmp, config) as running:
        yield running


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_both_client_modes_use_a_virtual_server(mixed: InProcessGateway, mode: str) -> None:
    async with sdk_client(url(mixed), mode=mode) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"docs__add", "files__echo", "files__pid"} <= names
        assert await call_text(client, "files__echo", {"text": "piped"}) == "piped"
        assert await call_text(client, "docs__add", {"a": 1, "b": 2}) == "3"


async def test_progress_prompts_and_resources_through_a_virtual_session(mixed: InProcessGateway) -> None:
    reported: list[tuple[float, float | None]] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        reported.append((done, total))

    async with sdk_client(url(mixed)) as client:
        result = await client.call_tool("files__slow_progress", {"steps": 2}, progress_callback=progress)
        assert isinstance(result.content[0], types.TextContent)
        assert result.content[0].text == "done after 2 steps"
        assert reported == [(1, 2), (2, 2)]
        assert [p.name for p in (await client.list_prompts()).prompts] == ["files__review"]
        prompt = await client.get_prompt("files__review", {"code": "x = 1"})
        assert isinstance(prompt.messages[0].content, types.TextContent)
        assert "x = 1" in prompt.messages[0].content.text
        assert "note://greeting" in {str(r.uri) for r in (await client.list_resources()).resources}
        read = await client.read_resource("note://greeting")
        assert isinstance(read.contents[0], types.TextResourceContents)
        assert read.contents[0].text == "hello from a stdio server"


async def test_a_members_list_changed_reaches_the_client_as_the_virtual_servers(mixed: InProcessGateway) -> None:
    received: list[Any] = []

    async def on_message(message: Any) -> None:
        received.append(message)

    async with sdk_client(url(mixed), message_handler=on_message) as client:
        assert await call_text(client, "files__announce_tools_changed") == "announced"

        async def announced() -> bool:
            return any(isinstance(m, types.ToolListChangedNotification) for m in received)

        assert await poll(announced, timeout=10)


async def test_an_operator_sees_and_revokes_a_virtual_session_ending_every_member(
    tmp: Path, backends: list[Process], recorder: HostileBackend
) -> None:
    config = {**workspace(backends, recorder), "server": {"metrics_listen": "127.0.0.1:0"}}
    async with in_process_gateway(tmp, config) as running:
        assert running.admin_port is not None
        session_id, headers = await session(running)
        admin = [("Host", f"127.0.0.1:{running.admin_port}")]
        listed = await raw_request(running.admin_port, "GET", "/admin/sessions?target=workspace", admin)
        [shown] = listed.json()["sessions"]
        assert shown["id"] == session_id
        assert {m["target"] for m in shown["members"]} == {"docs", "notes", "rec"}
        scraped = await raw_request(running.admin_port, "GET", "/metrics", admin)
        assert "agentgw_sessions_active 1.0" in scraped.body.decode()
        revoked = await raw_request(running.admin_port, "DELETE", f"/admin/sessions/{session_id}", admin)
        assert revoked.status == 200, revoked.body
        assert recorder.methods()[-1] == "DELETE"
        after = await raw_request(running.port, "POST", "/mcp/v1/workspace", headers, tool_call("echo", {}))
        assert after.status == 404


async def test_the_stateless_revision_through_a_virtual_server_of_modern_members(
    tmp: Path, backends: list[Process]
) -> None:
    """Every member speaks 2026-07-28: `mode="auto"` discovers the virtual server and calls statelessly."""
    a, b = backends
    config = {
        "mcp": {
            "targets": [
                {"name": "docs", "backends": [{"url": f"http://127.0.0.1:{a.port}/mcp"}]},
                {"name": "notes", "backends": [{"url": f"http://127.0.0.1:{b.port}/mcp"}]},
            ],
            "virtual_servers": [{"name": "workspace", "members": [{"target": "docs"}, {"target": "notes"}]}],
        }
    }
    seen: list[Any] = []
    async with in_process_gateway(tmp, config) as running:
        async with sdk_client(url(running), mode="auto", seen=seen) as client:
            assert client.protocol_version == "2026-07-28"
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert {"docs__add", "notes__add"} <= names
            assert (await call_text(client, "notes__whoami")).startswith("replica-b ")
            assert await call_text(client, "docs__add", {"a": 2, "b": 3}) == "5"
    assert not any(r.headers.get("mcp-session-id") for r in seen)  # no session on this revision


async def test_a_virtual_server_with_a_stateful_only_member_advertises_the_handshake(mixed: InProcessGateway) -> None:
    port = mixed.port
    envelope = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    discover = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": envelope}}
    ).encode()
    headers = mcp_headers(port, ("MCP-Protocol-Version", "2026-07-28"), ("Mcp-Method", "server/discover"))
    answer = await raw_request(port, "POST", "/mcp/v1/workspace", headers, discover)
    assert answer.status == 200, answer.body
    result = answer.message()["result"]
    assert "2026-07-28" not in result["supportedVersions"]  # the stdio bridge speaks the 2025 revisions only
    assert "tools" in result["capabilities"]


async def test_an_expired_virtual_session_ends_every_member(
    tmp: Path, backends: list[Process], recorder: HostileBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mcp_virtual, "EXPIRY_CHECK_INTERVAL", 0.2)
    async with in_process_gateway(tmp, workspace(backends, recorder), session_policy("1s")) as running:
        _, headers = await session(running)
        assert "DELETE" not in recorder.methods()

        async def ended() -> bool:
            return "DELETE" in recorder.methods()

        # Nobody uses the session: it lapses in the store, and its members are ended all the same.
        assert await poll(ended, timeout=10)
        after = await raw_request(running.port, "POST", "/mcp/v1/workspace", headers, tool_call("echo", {}))
        assert after.status == 404
