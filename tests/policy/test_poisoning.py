"""Tool poisoning from the server side (contract 7), against a real hostile MCP server.

The policy allows every tool, so only poisoning detection decides what is hidden
and refused. The backend writes a line to its trace file whenever a tool runs:
a refused call leaves none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from tests.mcp_client import call_text, sdk_client
from tests.support import (
    ROOT,
    InProcessGateway,
    Process,
    RawResponse,
    in_process_gateway,
    mcp_headers,
    mcp_target,
    poll,
    raw_call,
    raw_request,
    raw_session,
    tool_text,
)

MALICIOUS_SERVER = Path(__file__).with_name("malicious_server.py")
POLICY_DENIED = -32051
TARGET = "evil"
POISONED = {"hidden_instructions", "tag_smuggler", "bidi_tool"}
CLEAN = {"honest_tool", "shape_shifter", "flip"}
# Arguments each tool accepts, so no refusal can come from argument validation.
ARGUMENTS: dict[str, dict[str, Any]] = {
    "honest_tool": {"message": "hi"},
    "hidden_instructions": {"a": 1, "b": 2},
    "tag_smuggler": {"city": "Oslo"},
    "bidi_tool": {"path": "report.txt"},
    "shape_shifter": {"text": "hello"},
    "flip": {},
}


def tool_policy(action: str) -> str:
    return (
        "apiVersion: agentgw.dev/v1alpha1\nkind: ToolPolicy\nmetadata: {name: poisoning}\n"
        "spec:\n  defaultAction: allow\n"
        f"  poisoningDetection: {{enabled: true, action: {action}}}\n"
    )


@dataclass
class EvilServer:
    process: Process
    trace: Path

    def ran(self) -> list[str]:
        """The tools that ran, in order."""
        return self.trace.read_text().split() if self.trace.exists() else []


@pytest.fixture
def evil(tmp: Path) -> Iterator[EvilServer]:
    trace = tmp / "evil-trace.txt"
    process = Process(lambda port: [sys.executable, str(MALICIOUS_SERVER), str(port), str(trace)], log=tmp / "evil.log")
    yield EvilServer(process.start(), trace)
    process.stop()


def evil_config(evil: EvilServer, store: dict[str, Any] | None = None) -> dict[str, Any]:
    # The command line finds the admin API through the config file, which names the port it got.
    config: dict[str, Any] = {
        "server": {"metrics_listen": "127.0.0.1:0"},
        "mcp": {"targets": [mcp_target(TARGET, evil.process.port)]},
    }
    if store is not None:
        config["session_store"] = store
    return config


def evil_gateway(
    tmp: Path, evil: EvilServer, action: str = "quarantine", store: dict[str, Any] | None = None, name: str = "gateway"
) -> contextlib.AbstractAsyncContextManager[InProcessGateway]:
    return in_process_gateway(tmp, evil_config(evil, store), policies=tool_policy(action), name=name)


async def agentgw(*args: str) -> tuple[int, str]:
    """Run the command line; its exit code and stdout."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentgw", *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, stdout.decode()


async def listed(url: str) -> set[str]:
    """The tool names a fresh SDK client is shown."""
    async with sdk_client(url) as client:
        return {tool.name for tool in (await client.list_tools()).tools}


def refusal_reason(response: RawResponse) -> str | None:
    """data.reason of a policy refusal (HTTP 200, -32051); None when the call was not refused that way."""
    message = response.message()
    if response.status != 200 or message.get("error", {}).get("code") != POLICY_DENIED:
        return None
    return str(message["error"]["data"]["reason"])


def assert_quarantined(response: RawResponse, tool: str) -> None:
    assert response.status == 200, response.body
    error = response.message()["error"]
    assert error["code"] == POLICY_DENIED
    assert error["data"]["reason"] == "quarantined"
    assert error["data"]["tool"] == tool


def policy_file(gw: InProcessGateway) -> Path:
    """The policy file the gateway watches (written by `write_gateway_config`)."""
    return Path(yaml.safe_load(gw.config_file.read_text())["policies"][0]) / "policies.yaml"


def tool_states(listing: str) -> dict[str, str]:
    """`agentgw tools list` output: tool name -> its state column."""
    return {fields[0]: fields[1] for fields in (line.split() for line in listing.splitlines()) if len(fields) > 1}


async def test_poisoned_tools_are_hidden_and_refused_and_never_run(tmp: Path, evil: EvilServer) -> None:
    async with evil_gateway(tmp, evil) as gw:
        assert await listed(gw.mcp_url) == CLEAN
        session_id = await raw_session(gw.port)
        for tool in sorted(POISONED):
            assert_quarantined(await raw_call(gw.port, session_id, tool, ARGUMENTS[tool]), tool)
        assert tool_text(await raw_call(gw.port, session_id, "honest_tool", ARGUMENTS["honest_tool"]))
        assert evil.ran() == ["honest_tool"]


async def test_poisoned_tools_are_hidden_from_a_stateless_client(tmp: Path, evil: EvilServer) -> None:
    async with evil_gateway(tmp, evil) as gw:
        seen: list[httpx2.Response] = []
        async with sdk_client(gw.mcp_url, mode="auto", seen=seen) as client:
            assert {tool.name for tool in (await client.list_tools()).tools} == CLEAN
        assert {r.request.headers.get("mcp-protocol-version") for r in seen} == {"2026-07-28"}


async def test_a_rug_pull_quarantines_the_tool_until_an_operator_approves_it(tmp: Path, evil: EvilServer) -> None:
    async with evil_gateway(tmp, evil) as gw:
        config = ["--config", str(gw.config_file)]
        async with sdk_client(gw.mcp_url) as client:
            assert "shape_shifter" in {tool.name for tool in (await client.list_tools()).tools}
            assert await call_text(client, "shape_shifter", ARGUMENTS["shape_shifter"])
            await call_text(client, "flip")  # from here on the backend lists another description
            relisted = await client.list_tools(cache_mode="refresh")
            assert "shape_shifter" not in {tool.name for tool in relisted.tools}

        session_id = await raw_session(gw.port)
        assert_quarantined(
            await raw_call(gw.port, session_id, "shape_shifter", ARGUMENTS["shape_shifter"]), "shape_shifter"
        )
        assert evil.ran() == ["shape_shifter", "flip"]

        code, listing = await agentgw("tools", "list", TARGET, *config)
        assert code == 0
        states = tool_states(listing)
        assert states["shape_shifter"] == "QUARANTINED"
        assert states["honest_tool"] != "QUARANTINED"

        code, _ = await agentgw("tools", "approve", TARGET, "shape_shifter", *config)
        assert code == 0
        code, listing = await agentgw("tools", "list", TARGET, *config)
        assert tool_states(listing)["shape_shifter"] != "QUARANTINED"

        async with sdk_client(gw.mcp_url) as client:
            assert "shape_shifter" in {tool.name for tool in (await client.list_tools()).tools}
            assert await call_text(client, "shape_shifter", ARGUMENTS["shape_shifter"])
        assert evil.ran() == ["shape_shifter", "flip", "shape_shifter"]


async def test_warn_only_logs_and_leaves_every_tool_listed_and_callable(tmp: Path, evil: EvilServer) -> None:
    async with evil_gateway(tmp, evil, action="warn") as gw:
        async with sdk_client(gw.mcp_url) as client:
            assert {tool.name for tool in (await client.list_tools()).tools} == CLEAN | POISONED
            for tool in sorted(POISONED):
                assert await call_text(client, tool, ARGUMENTS[tool])
            await call_text(client, "flip")
            relisted = await client.list_tools(cache_mode="refresh")
            assert "shape_shifter" in {tool.name for tool in relisted.tools}
            assert await call_text(client, "shape_shifter", ARGUMENTS["shape_shifter"])
        assert evil.ran() == [*sorted(POISONED), "flip", "shape_shifter"]


async def test_a_quarantine_and_its_approval_are_shared_through_redis(
    tmp: Path, evil: EvilServer, redis_url: str
) -> None:
    store = {"type": "redis", "url": redis_url, "key_prefix": f"poison{time.monotonic_ns()}:"}
    # Two replicas, which share nothing but Redis.
    async with (
        evil_gateway(tmp, evil, store=store, name="first") as first,
        evil_gateway(tmp, evil, store=store, name="second") as second,
    ):
        # Everything the catalogue learns, it learns through the first gateway.
        async with sdk_client(first.mcp_url) as client:
            assert {tool.name for tool in (await client.list_tools()).tools} == CLEAN
            await call_text(client, "flip")
            relisted = await client.list_tools(cache_mode="refresh")
            assert "shape_shifter" not in {tool.name for tool in relisted.tools}

        session_id = await raw_session(second.port)

        async def refused_as_quarantined() -> bool:
            # Missing arguments: should the second gateway still let the call through, the
            # backend rejects it before the tool runs, so polling never runs the tool.
            return refusal_reason(await raw_call(second.port, session_id, "shape_shifter", {})) == "quarantined"

        await poll(refused_as_quarantined, timeout=10)
        assert_quarantined(
            await raw_call(second.port, session_id, "shape_shifter", ARGUMENTS["shape_shifter"]), "shape_shifter"
        )
        for tool in sorted(POISONED):
            assert_quarantined(await raw_call(second.port, session_id, tool, ARGUMENTS[tool]), tool)
        assert evil.ran() == ["flip"]

        code, _ = await agentgw("tools", "approve", TARGET, "shape_shifter", "--config", str(first.config_file))
        assert code == 0

        async def listed_by_second() -> bool:
            return "shape_shifter" in await listed(second.mcp_url)

        await poll(listed_by_second, timeout=10)
        assert tool_text(await raw_call(second.port, session_id, "shape_shifter", ARGUMENTS["shape_shifter"]))
        assert evil.ran() == ["flip", "shape_shifter"]


async def test_approving_a_tool_the_target_never_listed_fails(tmp: Path, evil: EvilServer) -> None:
    async with evil_gateway(tmp, evil) as gw:
        assert "honest_tool" in await listed(gw.mcp_url)
        code, _ = await agentgw("tools", "approve", TARGET, "no_such_tool", "--config", str(gw.config_file))
        assert code != 0
        code, _ = await agentgw("tools", "approve", "no_such_target", "honest_tool", "--config", str(gw.config_file))
        assert code != 0


async def test_switching_from_warn_to_quarantine_quarantines_poisoned_tools_already_seen(
    tmp: Path, evil: EvilServer
) -> None:
    async with evil_gateway(tmp, evil, action="warn") as gw:
        assert await listed(gw.mcp_url) == CLEAN | POISONED
        # The deny-listed `flip` tells when the new policy is in force.
        policy_file(gw).write_text(tool_policy("quarantine") + "  denyList: [flip]\n")

        async def reloaded() -> bool:
            return "flip" not in await listed(gw.mcp_url)

        await poll(reloaded, timeout=15)
        assert await listed(gw.mcp_url) == CLEAN - {"flip"}
        session_id = await raw_session(gw.port)
        assert_quarantined(
            await raw_call(gw.port, session_id, "hidden_instructions", ARGUMENTS["hidden_instructions"]),
            "hidden_instructions",
        )
        assert evil.ran() == []


@pytest.mark.parametrize("protocol", ["2025-11-25", "2026-07-28"])
async def test_a_tool_never_listed_is_scanned_before_its_first_call(tmp: Path, evil: EvilServer, protocol: str) -> None:
    """An attacker's client skips tools/list: the gateway lists the backend's tools itself first."""
    async with evil_gateway(tmp, evil) as gw:
        for tool in sorted(POISONED):
            if protocol == "2025-11-25":
                response = await raw_call(gw.port, await raw_session(gw.port), tool, ARGUMENTS[tool])
            else:
                response = await modern_call(gw.port, tool, ARGUMENTS[tool])
            assert_quarantined(response, tool)
        assert evil.ran() == []
        # The honest tool, equally never listed by a client, still runs.
        honest = await raw_call(gw.port, await raw_session(gw.port), "honest_tool", ARGUMENTS["honest_tool"])
        assert "honest_tool" in tool_text(honest)
        assert evil.ran() == ["honest_tool"]


async def modern_call(port: int, tool: str, arguments: dict[str, Any]) -> RawResponse:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": tool,
            "arguments": arguments,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    headers = mcp_headers(
        port, ("MCP-Protocol-Version", "2026-07-28"), ("Mcp-Method", "tools/call"), ("Mcp-Name", tool)
    )
    return await raw_request(port, "POST", "/mcp/v1", headers, json.dumps(body).encode())
