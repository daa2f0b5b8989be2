"""`command:` backends (contract 13): stdio MCP servers behind the gateway, a child per session."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from agentgw.config import load_settings
from agentgw.typed_yaml import ConfigError
from tests.mcp_client import call_text, sdk_client
from tests.support import (
    ROOT,
    in_process_gateway,
    initialize_body,
    mcp_headers,
    poll,
    raw_call,
    raw_request,
    raw_session,
    tool_text,
    write_gateway_config,
)

SERVER = [sys.executable, str(ROOT / "examples" / "stdio_server.py")]
SECRET_NAME = "AGENTGW_TEST_GATEWAY_SECRET"
ENV = {"STDIO_TEST_VALUE": "expanded", SECRET_NAME: "never-to-be-seen"}


def stdio_target(**options: Any) -> dict[str, Any]:
    backend = {"command": SERVER, "env": {"GREETING": "hello", "FROM_GATEWAY": "${STDIO_TEST_VALUE}"}}
    return {"mcp": {"targets": [{"name": "files", "backends": [backend], **options}]}}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_each_session_gets_a_child_of_its_own_which_ends_with_the_session(tmp: Path) -> None:
    async with in_process_gateway(tmp, stdio_target(), env=ENV) as gw:
        async with sdk_client(gw.mcp_url) as first, sdk_client(gw.mcp_url) as second:
            pids = {int(await call_text(first, "pid")), int(await call_text(second, "pid"))}
            assert len(pids) == 2
            assert await call_text(first, "echo", {"text": "hi"}) == "hi"
            assert await call_text(first, "env_value", {"name": "GREETING"}) == "hello"
            assert await call_text(first, "env_value", {"name": "FROM_GATEWAY"}) == "expanded"
            assert await call_text(first, "env_has", {"name": SECRET_NAME}) == "false"

        async def ended() -> bool:
            return not any(alive(pid) for pid in pids)

        # The clients sent DELETE as they left: both children end.
        assert await poll(ended, timeout=15)


async def test_beyond_max_processes_initialize_is_503(tmp: Path) -> None:
    async with in_process_gateway(tmp, stdio_target(max_processes=1), env=ENV) as gw:
        async with sdk_client(gw.mcp_url) as client:
            assert await call_text(client, "echo", {"text": "one"}) == "one"
            refused = await raw_request(gw.port, "POST", "/mcp/v1", mcp_headers(gw.port), initialize_body())
            assert refused.status == 503, refused.body
            assert refused.json()["error"]["code"] == -32000


async def test_a_crashed_child_ends_its_session_as_a_dead_backend_does(tmp: Path) -> None:
    async with in_process_gateway(tmp, stdio_target(), env=ENV) as gw, sdk_client(gw.mcp_url) as client:
        pid = int(await call_text(client, "pid"))
        with pytest.raises(MCPError, match="ended before the server answered"):
            await client.call_tool("crash", {})

        async def gone() -> bool:
            return not alive(pid)

        assert await poll(gone, timeout=10)
        # Its bridge no longer knows the session: the gateway ends it (failover: end_session), 404.
        with pytest.raises(MCPError):
            await client.call_tool("echo", {"text": "after"})


async def test_children_end_when_the_gateway_stops(tmp: Path) -> None:
    async with in_process_gateway(tmp, stdio_target(), env=ENV) as gw:
        session_id = await raw_session(gw.port)
        pid = int(tool_text(await raw_call(gw.port, session_id, "pid", {})))
        assert alive(pid)

    async def gone() -> bool:
        return not alive(pid)

    assert await poll(gone, timeout=15)


def test_command_backends_with_several_workers_are_refused_naming_agentgw_bridge(tmp: Path) -> None:
    config = {**stdio_target(), "server": {"workers": 2}, "session_store": {"type": "redis"}}
    with pytest.raises(ConfigError, match="agentgw bridge"):
        load_settings(write_gateway_config(tmp, config, None, "workers"), env={})


async def test_an_unset_variable_in_env_is_refused_at_start(tmp: Path) -> None:
    with pytest.raises(ConfigError, match="STDIO_TEST_VALUE"):
        async with in_process_gateway(tmp, stdio_target(), env={}):
            pass


async def test_a_child_deaf_to_sigterm_is_killed_five_seconds_after_it(
    tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentgw.stdio")  # its stderr lines are INFO
    stubborn = [sys.executable, str(ROOT / "tests" / "upstream" / "stubborn_stdio_server.py")]
    config = {"mcp": {"targets": [{"name": "files", "backends": [{"command": stubborn}]}]}}
    async with in_process_gateway(tmp, config) as gw:
        session_id = await raw_session(gw.port)
        pid = int(tool_text(await raw_call(gw.port, session_id, "pid", {})))
        headers = mcp_headers(gw.port, ("Mcp-Session-Id", session_id), ("MCP-Protocol-Version", "2025-11-25"))
        # DELETE is answered once the child is gone: stdin closed, 2 s, SIGTERM, 5 s, SIGKILL.
        assert (await raw_request(gw.port, "DELETE", "/mcp/v1", headers, timeout=20)).status == 200
        assert not alive(pid)
    events = {r.fields.get("line") or r.fields.get("event"): r.created for r in caplog.records if hasattr(r, "fields")}
    assert 4.5 <= events["stopped"] - events["SIGTERM received"] <= 6.5, events
