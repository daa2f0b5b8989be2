"""Session life cycle over raw HTTP: headers, 404/400, DELETE, expiry, the stateless revision."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    InProcessGateway,
    Process,
    gateway_in_thread,
    in_process_gateway,
    initialize_body,
    mcp_headers,
    mcp_target,
    raw_call,
    raw_request,
    raw_session,
    session_policy,
    tool_call,
    tool_text,
)

MODERN = "2026-07-28"


@pytest.fixture(scope="module")
def gw(backends: list[Process], tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    tmp = tmp_path_factory.mktemp("sessions")
    targets = [mcp_target("docs", *(b.port for b in backends)), mcp_target("other", backends[0].port)]
    with gateway_in_thread(tmp, {"mcp": {"targets": targets}}, policies=session_policy("1500ms")) as running:
        yield running


async def test_initialize_answers_both_session_headers(gw: InProcessGateway) -> None:
    response = await raw_request(gw.port, "POST", "/mcp/v1", mcp_headers(gw.port), initialize_body())
    assert response.status == 200
    assert response.header("mcp-session-id") == response.header("x-mcp-session-id")
    assert response.message()["result"]["serverInfo"]["name"] == "example-docs"


async def test_either_session_header_continues_the_session(gw: InProcessGateway) -> None:
    session_id = await raw_session(gw.port)
    for header in ("Mcp-Session-Id", "X-MCP-Session-ID", "x-mcp-session-id"):
        headers = mcp_headers(gw.port, (header, session_id), ("MCP-Protocol-Version", "2025-11-25"))
        response = await raw_request(gw.port, "POST", "/mcp/v1", headers, tool_call("add", {"a": 1, "b": 2}))
        assert response.status == 200
        assert tool_text(response) == "3"


async def test_conflicting_session_headers_are_refused(gw: InProcessGateway) -> None:
    first, second = await raw_session(gw.port), await raw_session(gw.port)
    headers = mcp_headers(gw.port, ("Mcp-Session-Id", first), ("X-MCP-Session-ID", second))
    response = await raw_request(gw.port, "POST", "/mcp/v1", headers, tool_call("add", {"a": 1, "b": 2}))
    assert response.status == 400
    assert response.json()["error"]["code"] == -32600


async def test_unknown_session_is_404_with_a_jsonrpc_error(gw: InProcessGateway) -> None:
    headers = mcp_headers(gw.port, ("Mcp-Session-Id", "no-such-session"))
    response = await raw_request(gw.port, "POST", "/mcp/v1", headers, tool_call("add", {"a": 1, "b": 2}, 7))
    assert response.status == 404
    assert response.json()["error"]["code"] == -32600
    assert response.json()["id"] == 7


async def test_stateful_request_without_session_is_400(gw: InProcessGateway) -> None:
    response = await raw_request(gw.port, "POST", "/mcp/v1", mcp_headers(gw.port), tool_call("add", {"a": 1, "b": 2}))
    assert response.status == 400
    assert response.json()["error"]["code"] == -32600


async def test_a_session_of_one_target_is_unknown_on_another(gw: InProcessGateway) -> None:
    session_id = await raw_session(gw.port, "/mcp/v1/docs")
    response = await raw_call(gw.port, session_id, "add", {"a": 1, "b": 1}, path="/mcp/v1/other")
    assert response.status == 404


async def test_unknown_target_is_404(gw: InProcessGateway) -> None:
    response = await raw_request(gw.port, "POST", "/mcp/v1/nope", mcp_headers(gw.port), initialize_body())
    assert response.status == 404


async def test_delete_ends_the_session(gw: InProcessGateway) -> None:
    session_id = await raw_session(gw.port)
    headers = [("Host", f"127.0.0.1:{gw.port}"), ("Mcp-Session-Id", session_id)]
    deleted = await raw_request(gw.port, "DELETE", "/mcp/v1", headers)
    assert deleted.status == 200
    after = await raw_call(gw.port, session_id, "add", {"a": 1, "b": 1})
    assert after.status == 404
    again = await raw_request(gw.port, "DELETE", "/mcp/v1", headers)
    assert again.status == 404


async def test_get_opens_the_session_event_stream(gw: InProcessGateway) -> None:
    session_id = await raw_session(gw.port)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    request = (
        f"GET /mcp/v1 HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nAccept: text/event-stream\r\n"
        f"Mcp-Session-Id: {session_id}\r\nMCP-Protocol-Version: 2025-11-25\r\n\r\n"
    )
    writer.write(request.encode())
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert b" 200 " in status_line
    assert b"text/event-stream" in head.lower()
    assert session_id.encode() in head  # the gateway's id, never the backend's


async def test_idle_session_expires_and_activity_slides_its_lifetime(gw: InProcessGateway) -> None:
    session_id = await raw_session(gw.port)
    # Six calls 0.5 s apart outlive the 1.5 s timeout only because each one slides it.
    for _ in range(6):
        await asyncio.sleep(0.5)
        assert (await raw_call(gw.port, session_id, "add", {"a": 1, "b": 1})).status == 200
    await asyncio.sleep(2.0)
    assert (await raw_call(gw.port, session_id, "add", {"a": 1, "b": 1})).status == 404


def modern_call(name: str, arguments: dict[str, object], request_id: int = 1) -> bytes:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {
                "name": name,
                "arguments": arguments,
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": MODERN,
                    "io.modelcontextprotocol/clientCapabilities": {},
                },
            },
        }
    ).encode()


def modern_headers(port: int, method: str = "tools/call", name: str | None = None, *extra: tuple[str, str]) -> list:
    headers = mcp_headers(port, ("MCP-Protocol-Version", MODERN), ("Mcp-Method", method), *extra)
    if name is not None:
        headers.append(("Mcp-Name", name))
    return headers


async def modern_whoami(port: int, *extra: tuple[str, str]) -> tuple[str, int, str]:
    response = await raw_request(
        port, "POST", "/mcp/v1", modern_headers(port, "tools/call", "whoami", *extra), modern_call("whoami", {})
    )
    assert response.status == 200, response.body
    assert response.header("mcp-session-id") is None
    handle = response.header("x-mcp-session-id")
    assert handle
    replica, count = tool_text(response).split()
    return replica, int(count), handle


async def test_stateless_request_round_trips_and_never_gets_mcp_session_id(gw: InProcessGateway) -> None:
    replica, _, handle = await modern_whoami(gw.port)
    assert replica in ("replica-a", "replica-b")
    assert len(handle) >= 22


async def test_stateless_handle_pins_to_the_same_backend(gw: InProcessGateway) -> None:
    replica, count, handle = await modern_whoami(gw.port)
    for _ in range(4):
        again, next_count, same_handle = await modern_whoami(gw.port, ("X-MCP-Session-ID", handle))
        assert (again, same_handle) == (replica, handle)
        assert next_count > count
        count = next_count


@pytest.mark.parametrize(
    "headers_for",
    [
        pytest.param(lambda port: modern_headers(port, "tools/call", "add"), id="name-mismatch"),
        pytest.param(lambda port: modern_headers(port, "tools/list", "whoami"), id="method-mismatch"),
        pytest.param(lambda port: modern_headers(port, "tools/call", None), id="name-missing"),
        pytest.param(
            lambda port: mcp_headers(port, ("MCP-Protocol-Version", MODERN), ("Mcp-Name", "whoami")),
            id="method-missing",
        ),
        pytest.param(
            lambda port: modern_headers(port, "tools/call", "whoami", ("Mcp-Name", "whoami")), id="name-duplicated"
        ),
    ],
)
async def test_routing_header_mismatch_is_refused_and_never_forwarded(gw: InProcessGateway, headers_for) -> None:
    replica, before, handle = await modern_whoami(gw.port)
    pinned = ("X-MCP-Session-ID", handle)
    response = await raw_request(gw.port, "POST", "/mcp/v1", [*headers_for(gw.port), pinned], modern_call("whoami", {}))
    assert response.status == 400
    assert response.json()["error"]["code"] == -32020
    # The replica's counter moved by exactly one call: the refused one never ran.
    again, after, _ = await modern_whoami(gw.port, pinned)
    assert (again, after) == (replica, before + 1)


async def test_stateless_unknown_handle_is_pinned_afresh(gw: InProcessGateway) -> None:
    replica, _, handle = await modern_whoami(gw.port, ("X-MCP-Session-ID", "expired-or-never-issued"))
    assert handle != "expired-or-never-issued"
    again, _, same = await modern_whoami(gw.port, ("X-MCP-Session-ID", handle))
    assert (again, same) == (replica, handle)


async def test_concurrent_first_calls_of_unseen_tools_are_all_answered(tmp: Path, backends: list[Process]) -> None:
    """Each call of a tool never seen listed has the target listed first: together, they share one listing."""
    async with in_process_gateway(tmp, {"mcp": {"targets": [mcp_target("docs", backends[0].port)]}}) as fresh:
        session_id = await raw_session(fresh.port)
        headers = mcp_headers(fresh.port, ("Mcp-Session-Id", session_id), ("MCP-Protocol-Version", "2025-11-25"))
        calls = [tool_call("add", {"a": n, "b": 1}, request_id=10 + n) for n in range(12)]
        answers = await asyncio.gather(*(raw_request(fresh.port, "POST", "/mcp/v1", headers, c) for c in calls))
        assert [tool_text(a) for a in answers] == [str(n + 1) for n in range(12)]
