"""Virtual servers under attack and under failure: what a client sends in other shapes, and races."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.hostile_backend import HostileBackend, http, initialize_result, json_answer
from tests.inbound.test_mcp_virtual import session
from tests.support import InProcessGateway, in_process_gateway, raw_request

PATH = "/mcp/v1/workspace"
WORKSPACE_POLICY = """\
apiVersion: agentgw.dev/v1alpha1
kind: ToolPolicy
metadata: {name: workspace-only}
spec:
  targetRefs: [workspace]
  defaultAction: allow
  denyList: ["*secret*"]
---
apiVersion: agentgw.dev/v1alpha1
kind: ToolPolicy
metadata: {name: rec-tools}
spec:
  targetRefs: [rec]
  defaultAction: allow
  denyList: [forbidden]
"""


def rpc(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def one_member(url: str) -> dict[str, Any]:
    return {
        "mcp": {
            "targets": [{"name": "rec", "backends": [{"url": url}]}],
            "virtual_servers": [{"name": "workspace", "members": [{"target": "rec", "prefix": ""}]}],
        }
    }


async def test_a_call_sent_as_a_notification_is_refused_and_reaches_no_member(tmp: Path) -> None:
    member = await HostileBackend().start()
    member.answers["tools/list"] = lambda m: json_answer(m, {"tools": [{"name": "forbidden", "inputSchema": {}}]})
    try:
        async with in_process_gateway(tmp, one_member(member.url), WORKSPACE_POLICY) as gw:
            _, headers = await session(gw)
            note = rpc({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "forbidden", "arguments": {}}})
            answer = await raw_request(gw.port, "POST", PATH, headers, note)
            assert answer.status == 400
            assert "tools/call" not in member.methods()
            # The member had its own notifications/initialized when it was opened: not a second one.
            assert member.methods().count("notifications/initialized") == 1
    finally:
        await member.stop()


async def test_resources_and_completions_are_ruled_on_by_both_policies(tmp: Path) -> None:
    member = await HostileBackend().start()
    member.answers["resources/list"] = lambda m: json_answer(m, {"resources": [{"uri": "mem://secret", "name": "s"}]})
    member.answers["prompts/list"] = lambda m: json_answer(m, {"prompts": [{"name": "secret_prompt"}]})
    member.answers["resources/read"] = lambda m: json_answer(m, {"contents": [{"uri": "mem://secret", "text": "TOP"}]})
    member.answers["completion/complete"] = lambda m: json_answer(m, {"completion": {"values": ["leak"]}})
    try:
        async with in_process_gateway(tmp, one_member(member.url), WORKSPACE_POLICY) as gw:
            _, headers = await session(gw)
            read = rpc({"jsonrpc": "2.0", "id": 6, "method": "resources/read", "params": {"uri": "mem://secret"}})
            complete = rpc(
                {
                    "jsonrpc": "2.0",
                    "id": 7,
                    "method": "completion/complete",
                    "params": {"ref": {"type": "ref/prompt", "name": "secret_prompt"}, "argument": {"name": "a"}},
                }
            )
            for body in (read, complete):
                answer = await raw_request(gw.port, "POST", PATH, headers, body)
                assert answer.message()["error"]["code"] == -32051, answer.body
            assert "resources/read" not in member.methods()
            assert "completion/complete" not in member.methods()
    finally:
        await member.stop()


def forgetful_backend(slow_second_initialize: float = 0.0) -> HostileBackend:
    """Forgets its session once (404 to the first list), so the member is opened again."""
    server = HostileBackend()
    state = {"initialize": 0, "list": 0}

    async def initialize(message: dict[str, Any]) -> bytes:
        state["initialize"] += 1
        if state["initialize"] == 2:
            await asyncio.sleep(slow_second_initialize)
        return json_answer(message, initialize_result(), f"Mcp-Session-Id: s{state['initialize']}")

    def tools_list(message: dict[str, Any]) -> bytes:
        state["list"] += 1
        return http(404, b"") if state["list"] == 1 else json_answer(message, {"tools": []})

    server.answers["initialize"] = initialize
    server.answers["tools/list"] = tools_list
    server.state = state  # type: ignore[attr-defined]
    return server


async def test_members_reopened_together_each_keep_their_new_session(tmp: Path) -> None:
    a, b = await forgetful_backend().start(), await forgetful_backend().start()
    config = {
        "mcp": {
            "targets": [{"name": "a", "backends": [{"url": a.url}]}, {"name": "b", "backends": [{"url": b.url}]}],
            "virtual_servers": [{"name": "workspace", "members": [{"target": "a"}, {"target": "b"}]}],
        }
    }
    try:
        async with in_process_gateway(tmp, config) as gw:
            _, headers = await session(gw)
            for request_id in (2, 3):
                listed = await raw_request(
                    gw.port, "POST", PATH, headers, rpc({"jsonrpc": "2.0", "id": request_id, "method": "tools/list"})
                )
                assert listed.status == 200, listed.body
            # Each member opened twice: once at initialize, once after it forgot; none a third time.
            assert (a.state["initialize"], b.state["initialize"]) == (2, 2)  # type: ignore[attr-defined]
    finally:
        await a.stop()
        await b.stop()


async def test_a_session_deleted_while_a_member_reopens_stays_deleted(tmp: Path) -> None:
    member = await forgetful_backend(slow_second_initialize=1.0).start()
    try:
        async with in_process_gateway(tmp, one_member(member.url)) as gw:
            _, headers = await session(gw)
            listing = asyncio.create_task(
                raw_request(gw.port, "POST", PATH, headers, rpc({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
            )
            await asyncio.sleep(0.4)
            assert (await raw_request(gw.port, "DELETE", PATH, headers)).status == 200
            await listing
            again = await raw_request(
                gw.port, "POST", PATH, headers, rpc({"jsonrpc": "2.0", "id": 9, "method": "ping"})
            )
            assert again.status == 404
            assert member.methods().count("DELETE") == 2  # the first session, and the one reopened meanwhile
    finally:
        await member.stop()


async def test_odd_cursors_and_answer_ids_are_the_clients_400_not_a_500(tmp: Path) -> None:
    member = await HostileBackend().start()
    try:
        async with in_process_gateway(tmp, one_member(member.url)) as gw:
            _, headers = await session(gw)
            await answer_is_not_a_500(
                gw, headers, {"id": 3, "method": "tools/list", "params": {"cursor": "agentgw:\u00b2"}}
            )
            await answer_is_not_a_500(gw, headers, {"id": "agentgw-m0:" + "[" * 5000, "result": {}})
    finally:
        await member.stop()


async def answer_is_not_a_500(gw: InProcessGateway, headers: list[tuple[str, str]], message: dict[str, Any]) -> None:
    answer = await raw_request(gw.port, "POST", PATH, headers, rpc({"jsonrpc": "2.0", **message}))
    assert answer.status in (200, 400), answer.body
    assert answer.message()["error"]["code"] in (-32600, -32602)


async def test_a_name_two_members_expose_is_listed_as_the_member_a_call_reaches(tmp: Path) -> None:
    a, b = await HostileBackend().start(), await HostileBackend().start()
    a.answers["tools/list"] = lambda m: json_answer(
        m, {"tools": [{"name": "x", "description": "A", "inputSchema": {}}]}
    )
    b.answers["tools/list"] = lambda m: json_answer(
        m, {"tools": [{"name": "a_x", "description": "B", "inputSchema": {}}]}
    )
    for server, text in ((a, "from A"), (b, "from B")):
        server.answers["tools/call"] = lambda m, text=text: json_answer(
            m, {"content": [{"type": "text", "text": text}]}
        )
    config = {
        "mcp": {
            "targets": [{"name": "b", "backends": [{"url": b.url}]}, {"name": "a", "backends": [{"url": a.url}]}],
            # b comes first, but a's prefix is the longer one: a call of `a_x` goes to a's `x`.
            "virtual_servers": [
                {"name": "workspace", "members": [{"target": "b", "prefix": ""}, {"target": "a", "prefix": "a_"}]}
            ],
        }
    }
    try:
        async with in_process_gateway(tmp, config) as gw:
            _, headers = await session(gw)
            listed = await raw_request(
                gw.port, "POST", PATH, headers, rpc({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
            )
            assert [(t["name"], t["description"]) for t in listed.message()["result"]["tools"]] == [("a_x", "A")]
            call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "a_x", "arguments": {}}}
            answered = await raw_request(gw.port, "POST", PATH, headers, rpc(call))
            assert answered.message()["result"]["content"][0]["text"] == "from A"
    finally:
        await a.stop()
        await b.stop()


async def test_a_lone_surrogate_in_a_call_by_name_is_a_parse_error_that_reaches_no_member(tmp: Path) -> None:
    member = await HostileBackend().start()
    member.answers["tools/list"] = lambda m: json_answer(m, {"tools": [{"name": "echo", "inputSchema": {}}]})
    try:
        async with in_process_gateway(tmp, one_member(member.url)) as gw:
            _, headers = await session(gw)
            for params in ('{"name": "echo", "arguments": {"text": "\\ud800"}}', '{"name": "nobody\\udfff"}'):
                body = f'{{"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {params}}}'.encode()
                answer = await raw_request(gw.port, "POST", PATH, headers, body)
                assert answer.status == 400, answer.body
                assert answer.message()["error"]["code"] == -32700
            assert "tools/call" not in member.methods()
    finally:
        await member.stop()
