"""`agentgw bridge`: one stdio MCP server (examples/stdio_server.py) served over Streamable HTTP,
driven by the real MCP SDK client and by raw HTTP, one child process per session."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
from mcp import types
from mcp.client.stdio import DEFAULT_INHERITED_ENV_VARS

from agentgw.bridge import StdioBridge, bridge_app
from agentgw.upstream.stdio import server_parameters
from tests import support
from tests.mcp_client import call_text, sdk_client
from tests.support import ROOT, STOP_TIMEOUT, Process, poll

SERVER = [sys.executable, str(ROOT / "examples" / "stdio_server.py")]
TARGET = "example"
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
}
SERVER_UNAVAILABLE = -32000
CHILD_START_TIMEOUT = 20.0


def stdio_bridge(env: dict[str, str] | None = None, **options: Any) -> StdioBridge:
    return StdioBridge(server_parameters(SERVER, env or {}, None, os.environ), target=TARGET, **options)


@contextlib.asynccontextmanager
async def served(bridge: StdioBridge) -> AsyncIterator[str]:
    """The bridge as `agentgw bridge` serves it, from the test's event loop on a port the kernel picks;
    its URL. Stopping the server ends every child (the app's lifespan)."""
    config = uvicorn.Config(
        bridge_app(bridge, "127.0.0.1"),
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        return server.started or task.done()

    try:
        await poll(started, interval=0.01)
        if task.done():
            task.result()
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/mcp"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, STOP_TIMEOUT)


async def gone(pid: int) -> None:
    """Returns once process `pid` no longer exists."""

    async def exited() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    await poll(exited, timeout=STOP_TIMEOUT, interval=0.05)


def session_id(seen: list[httpx2.Response]) -> str:
    return next(r.headers["mcp-session-id"] for r in seen if "mcp-session-id" in r.headers)


def sse_messages(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in body.decode().splitlines() if line.startswith("data:")]


async def raw_session(http: httpx2.AsyncClient, url: str) -> str:
    """A session opened with plain HTTP (initialize, then initialized), which holds no GET stream."""
    answer = await http.post(url, json=INITIALIZE, headers=HEADERS, timeout=CHILD_START_TIMEOUT)
    assert answer.status_code == 200, answer.text
    assert "result" in answer.json()
    session = answer.headers["mcp-session-id"]
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    notified = await http.post(url, json=initialized, headers={**HEADERS, "mcp-session-id": session})
    assert notified.status_code == 202
    return session


def tool_call(tool: str, call_id: int = 2, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    params = {"name": tool, "arguments": arguments or {}}
    return {"jsonrpc": "2.0", "id": call_id, "method": "tools/call", "params": params}


async def raw_call(http: httpx2.AsyncClient, url: str, session: str, tool: str, call_id: int = 2) -> httpx2.Response:
    return await http.post(url, json=tool_call(tool, call_id), headers={**HEADERS, "mcp-session-id": session})


def logged(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    fields = [getattr(r, "fields", {}) for r in caplog.records if r.name == "agentgw.stdio"]
    return [f for f in fields if f.get("event") == event]


# -- the SDK client through the bridge ----------------------------------------------------------


async def test_sdk_client_lists_and_calls_tools_prompts_and_resources() -> None:
    async with served(stdio_bridge()) as url, sdk_client(url) as client:
        assert client.server_info is not None and client.server_info.name == "example-stdio"
        assert {"echo", "slow_progress", "crash"} <= {tool.name for tool in (await client.list_tools()).tools}
        assert await call_text(client, "echo", {"text": "through a pipe"}) == "through a pipe"
        assert [prompt.name for prompt in (await client.list_prompts()).prompts] == ["review"]
        prompt = await client.get_prompt("review", {"code": "x = 1"})
        assert isinstance(prompt.messages[0].content, types.TextContent)
        assert "x = 1" in prompt.messages[0].content.text
        resource = await client.read_resource("note://greeting")
        assert isinstance(resource.contents[0], types.TextResourceContents)
        assert resource.contents[0].text == "hello from a stdio server"


async def test_progress_notifications_reach_the_call_that_asked_for_them() -> None:
    reported: dict[str, list[tuple[float, float | None]]] = {"two": [], "three": []}

    def recorder(call: str) -> Any:
        async def progress(done: float, total: float | None, message: str | None) -> None:
            reported[call].append((done, total))

        return progress

    async with served(stdio_bridge()) as url, sdk_client(url) as client:
        # Two calls in flight at once in one session: each stream carries its own progress only.
        results = await asyncio.gather(
            client.call_tool("slow_progress", {"steps": 2}, progress_callback=recorder("two")),
            client.call_tool("slow_progress", {"steps": 3}, progress_callback=recorder("three")),
        )
    assert [r.content[0].text for r in results if isinstance(r.content[0], types.TextContent)] == [
        "done after 2 steps",
        "done after 3 steps",
    ]
    assert reported == {"two": [(1, 2), (2, 2)], "three": [(1, 3), (2, 3), (3, 3)]}


async def test_a_sampling_request_of_the_server_travels_on_the_calls_stream() -> None:
    async def sampling(context: object, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="short"), model="test-model"
        )

    async with served(stdio_bridge()) as url, sdk_client(url, sampling_callback=sampling) as client:
        assert await call_text(client, "summarize", {"text": "a long text"}) == "short"


async def test_list_changed_travels_on_the_get_stream() -> None:
    received: list[Any] = []

    async def on_message(message: Any) -> None:
        received.append(message)

    async with served(stdio_bridge()) as url, sdk_client(url, message_handler=on_message) as client:
        assert await call_text(client, "announce_tools_changed") == "announced"

        async def announced() -> bool:
            return any(isinstance(m, types.ToolListChangedNotification) for m in received)

        await poll(announced, timeout=5)


# -- one child per session, and its end ------------------------------------------------------------


async def test_each_session_has_a_child_of_its_own_ended_by_delete() -> None:
    bridge = stdio_bridge()
    seen: list[httpx2.Response] = []
    async with served(bridge) as url:
        async with sdk_client(url, seen=seen) as first, sdk_client(url) as second:
            pids = {int(await call_text(first, "pid")), int(await call_text(second, "pid"))}
            assert len(pids) == 2
            assert bridge.processes == 2
        # Leaving the client sent DELETE: both children are ended and their sessions unknown.
        for pid in pids:
            await gone(pid)
        assert bridge.processes == 0
        async with httpx2.AsyncClient() as http:
            answer = await raw_call(http, url, session_id(seen), "pid")
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == -32600


async def test_an_idle_session_ends_with_its_child() -> None:
    async with served(stdio_bridge(idle_timeout=0.5)) as url, httpx2.AsyncClient() as http:
        session = await raw_session(http, url)
        # A client that takes no event stream gets its answer as JSON.
        json_only = {**HEADERS, "accept": "application/json", "mcp-session-id": session}
        answer = await http.post(url, json=tool_call("pid"), headers=json_only)
        assert answer.headers["content-type"] == "application/json"
        pid = int(answer.json()["result"]["content"][0]["text"])
        await gone(pid)
        assert (await raw_call(http, url, session, "pid", call_id=3)).status_code == 404


async def test_initialize_beyond_max_processes_is_503() -> None:
    async with served(stdio_bridge(max_processes=1)) as url, sdk_client(url) as client:
        assert await call_text(client, "echo", {"text": "one"}) == "one"
        async with httpx2.AsyncClient() as http:
            refused = await http.post(url, json=INITIALIZE, headers=HEADERS)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == SERVER_UNAVAILABLE
        assert "mcp-session-id" not in refused.headers


async def test_a_child_that_exits_takes_its_session_with_it() -> None:
    bridge = stdio_bridge()
    async with served(bridge) as url, httpx2.AsyncClient() as http:
        session = await raw_session(http, url)
        echoes = [tool_call("echo", n, {"text": str(n)}) for n in (7, 8)]
        batch = await http.post(url, json=echoes, headers={**HEADERS, "mcp-session-id": session})
        assert sorted(m["id"] for m in sse_messages(batch.content)) == [7, 8]
        crashed = await raw_call(http, url, session, "crash")
        # The call's stream ends with an error for the request the server never answered.
        assert sse_messages(crashed.content)[-1]["error"]["code"] == SERVER_UNAVAILABLE
        assert (await raw_call(http, url, session, "echo", call_id=3)).status_code == 404
        assert (await http.delete(url, headers={"mcp-session-id": session})).status_code == 404
        assert bridge.processes == 0


# -- what the child sees and says -----------------------------------------------------------------


async def test_the_child_gets_only_safe_defaults_lang_and_its_configured_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTGW_TEST_SECRET", "not-for-children")
    monkeypatch.setenv("BRIDGE_TEST_TOKEN", "from-the-gateway")
    env = {"PLAIN": "as given", "EXPANDED": "token=${BRIDGE_TEST_TOKEN}"}
    async with served(stdio_bridge(env)) as url, sdk_client(url) as client:
        names = set(json.loads(await call_text(client, "env_names")))
        assert await call_text(client, "env_value", {"name": "EXPANDED"}) == "token=from-the-gateway"
        assert await call_text(client, "env_value", {"name": "PLAIN"}) == "as given"
        assert await call_text(client, "env_has", {"name": "AGENTGW_TEST_SECRET"}) == "false"
    # Python adds LC_CTYPE to its own environment when it coerces a C locale (PEP 538).
    allowed = {*DEFAULT_INHERITED_ENV_VARS, "LANG", "LC_CTYPE", "PLAIN", "EXPANDED"}
    assert {"PLAIN", "EXPANDED"} <= names <= allowed


def test_an_unset_variable_in_env_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="AGENTGW_TEST_UNSET"):
        server_parameters(SERVER, {"KEY": "${AGENTGW_TEST_UNSET}"}, None, {})


async def test_stderr_reaches_the_log_as_json_fields_naming_the_target(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agentgw.stdio")
    async with served(stdio_bridge()) as url, sdk_client(url) as client:
        assert await call_text(client, "complain", {"text": "disk almost full"}) == "written to stderr"

        async def logged_line() -> list[dict[str, Any]]:
            return [f for f in logged(caplog, "stderr") if f["line"] == "disk almost full"]

        (fields,) = await poll(logged_line, timeout=5)
    assert fields["target"] == TARGET
    assert fields["level"] == "info"
    assert fields["logger"] == "agentgw.stdio"


async def test_stdout_that_is_not_json_rpc_is_logged_and_dropped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with served(stdio_bridge()) as url, sdk_client(url) as client:
        assert await call_text(client, "garbage") == "garbage written"
        assert await call_text(client, "echo", {"text": "still here"}) == "still here"
    (fields,) = logged(caplog, "bad_stdout")
    assert fields["target"] == TARGET
    # What the line held is nowhere in the log, the SDK's own line about it included.
    assert "this line is" not in caplog.text
    assert not any("this line is" in json.dumps(getattr(r, "fields", {})) for r in caplog.records)


# -- what a client sends wrong ----------------------------------------------------------------------


async def test_bad_requests_are_refused_before_any_child_starts() -> None:
    bridge = stdio_bridge()
    async with served(bridge) as url, httpx2.AsyncClient() as http:
        not_json = await http.post(url, content=b"{", headers=HEADERS)
        assert (not_json.status_code, not_json.json()["error"]["code"]) == (400, -32700)
        no_session = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=HEADERS)
        assert (no_session.status_code, no_session.json()["error"]["code"]) == (400, -32600)
        unknown = await http.post(url, json=INITIALIZE, headers={**HEADERS, "mcp-session-id": "no-such-session"})
        assert unknown.status_code == 404
        stateless = await http.post(url, json=INITIALIZE, headers={**HEADERS, "mcp-protocol-version": "2026-07-28"})
        assert (stateless.status_code, stateless.json()["error"]["code"]) == (400, -32022)
        assert (await http.put(url, content=b"")).status_code == 405
        assert (await http.post(url, json=INITIALIZE, headers={**HEADERS, "host": "evil.example"})).status_code == 403
        assert bridge.processes == 0


# -- the command line -------------------------------------------------------------------------------


async def test_agentgw_bridge_command(tmp_path: Path) -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "agentgw", "bridge", "--listen", "127.0.0.1:0", "--env", "NOEQUALS", "--", *SERVER],
        capture_output=True,
        text=True,
        timeout=STOP_TIMEOUT,
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "--env" in bad.stderr

    command = [sys.executable, "-m", "agentgw", "bridge", "--listen", "127.0.0.1:0", "--", *SERVER]
    bridge = Process(command, log=tmp_path / "bridge.log").start()
    url = f"http://127.0.0.1:{bridge.port}/mcp"
    try:
        async with httpx2.AsyncClient() as http:
            session = await raw_session(http, url)
            answer = await raw_call(http, url, session, "pid")
        pid = int(sse_messages(answer.content)[-1]["result"]["content"][0]["text"])
        # Stopping the bridge ends the child of a session still open.
        bridge.stop(signal.SIGTERM)
        # uvicorn ends by raising the signal it caught again, once its shutdown is done.
        assert bridge.process is not None and bridge.process.returncode in (0, -signal.SIGTERM)
        await gone(pid)
    finally:
        bridge.kill()
    lines = [json.loads(line) for line in (tmp_path / "bridge.log").read_text().splitlines() if line.startswith("{")]
    assert any(line.get("event") == "session_ended" and line.get("reason") == "shutdown" for line in lines)


async def test_one_bridge_serves_two_gateways_that_share_redis(tmp_path: Path, redis_url: str) -> None:
    """The way stdio servers are deployed behind several replicas: a session opened through one
    gateway goes on through the other, on the same child."""
    args = [sys.executable, "-m", "agentgw", "bridge", "--listen", "127.0.0.1:0", "--", *SERVER]
    bridge = Process(args, log=tmp_path / "bridge.log").start()
    try:
        target = {"name": "files", "backends": [{"url": f"http://127.0.0.1:{bridge.port}/mcp"}]}
        config = {"mcp": {"targets": [target]}, "session_store": {"type": "redis", "url": redis_url}}
        async with (
            support.in_process_gateway(tmp_path, config, name="one") as one,
            support.in_process_gateway(tmp_path, config, name="two") as two,
        ):
            session_id = await support.raw_session(one.port)
            pids = {
                support.tool_text(await support.raw_call(gateway.port, session_id, "pid", {})) for gateway in (one, two)
            }
            assert len(pids) == 1
            assert (
                support.tool_text(await support.raw_call(two.port, session_id, "echo", {"text": "via two"}))
                == "via two"
            )
    finally:
        bridge.stop()
