"""What reaches a backend, seen by a backend that records every request."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import (
    InProcessGateway,
    Process,
    gateway_in_thread,
    mcp_headers,
    mcp_target,
    raw_request,
    raw_session,
    recording_backend,
)


@pytest.fixture(scope="module")
def recorder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = recording_backend(tmp_path_factory.mktemp("recorder") / "recorder.log").start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def gw(recorder: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    with gateway_in_thread(
        tmp_path_factory.mktemp("forwarding"), {"mcp": {"targets": [mcp_target("rec", recorder.port)]}}
    ) as running:
        yield running


async def records(recorder: Process) -> list[dict[str, Any]]:
    response = await raw_request(recorder.port, "GET", "/_records", [("Host", f"127.0.0.1:{recorder.port}")])
    return list(response.json())


def session_headers(port: int, session_id: str, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return mcp_headers(port, ("Mcp-Session-Id", session_id), ("MCP-Protocol-Version", "2025-11-25"), *extra)


async def test_backend_sees_only_its_own_session_id(gw: InProcessGateway, recorder: Process) -> None:
    session_id = await raw_session(gw.port)
    await raw_request(
        gw.port, "POST", "/mcp/v1", session_headers(gw.port, session_id), b'{"jsonrpc":"2.0","id":5,"method":"ping"}'
    )
    seen = (await records(recorder))[-1]
    assert seen["headers"]["mcp-session-id"].startswith("backend-session-")
    assert session_id not in json.dumps(await records(recorder))


async def test_checked_request_is_forwarded_as_the_gateways_own_serialisation(
    gw: InProcessGateway, recorder: Process
) -> None:
    session_id = await raw_session(gw.port)
    sent = (
        b'{ "jsonrpc" : "2.0",\n "id" : 9, "method":"tools/call",\t'
        b'"params":{"name":"\\u0061dd","arguments":{"a":1.50,"b":"caf\\u00e9"}}}'
    )
    await raw_request(gw.port, "POST", "/mcp/v1", session_headers(gw.port, session_id), sent)
    seen = (await records(recorder))[-1]
    assert (
        seen["body"]
        == '{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"add","arguments":{"a":1.5,"b":"café"}}}'
    )


async def test_client_credentials_and_unknown_headers_stay_at_the_gateway(
    gw: InProcessGateway, recorder: Process
) -> None:
    session_id = await raw_session(gw.port)
    extra = [
        ("Authorization", "Bearer client-token"),
        ("Cookie", "sid=1"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-Custom", "1"),
    ]
    await raw_request(
        gw.port,
        "POST",
        "/mcp/v1",
        session_headers(gw.port, session_id, *extra),
        b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
    )
    headers = (await records(recorder))[-1]["headers"]
    assert not {"authorization", "cookie", "x-forwarded-for", "x-custom", "x-mcp-session-id"} & set(headers)
    assert headers["host"] == f"127.0.0.1:{recorder.port}"
    assert headers["mcp-protocol-version"] == "2025-11-25"


async def test_w3c_trace_context_passes_through(gw: InProcessGateway, recorder: Process) -> None:
    session_id = await raw_session(gw.port)
    trace = [
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("tracestate", "vendor=opaque"),
    ]
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    await raw_request(gw.port, "POST", "/mcp/v1", session_headers(gw.port, session_id, *trace), body)
    headers = (await records(recorder))[-1]["headers"]
    assert (headers["traceparent"], headers["tracestate"]) == (trace[0][1], trace[1][1])


async def test_get_passes_last_event_id_through(gw: InProcessGateway, recorder: Process) -> None:
    session_id = await raw_session(gw.port)
    headers = [
        ("Host", f"127.0.0.1:{gw.port}"),
        ("Accept", "text/event-stream"),
        ("Mcp-Session-Id", session_id),
        ("Last-Event-ID", "41"),
    ]
    response = await raw_request(gw.port, "GET", "/mcp/v1", headers)
    assert response.status == 200
    assert response.sse_messages()[0]["params"]["data"] == "first"
    seen = (await records(recorder))[-1]
    assert (seen["method"], seen["headers"]["last-event-id"]) == ("GET", "41")


async def test_event_stream_is_relayed_event_by_event(gw: InProcessGateway) -> None:
    session_id = await raw_session(gw.port)
    body = b'{"jsonrpc":"2.0","id":3,"method":"slow/stream","params":{"pause":1.5}}'
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    head = "".join(f"{k}: {v}\r\n" for k, v in session_headers(gw.port, session_id))
    started = time.monotonic()
    writer.write(f"POST /mcp/v1 HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    received = b""
    while b'"first"' not in received:
        received += await asyncio.wait_for(reader.read(4096), 5)
    first_at = time.monotonic() - started
    while b'"second"' not in received:
        received += await asyncio.wait_for(reader.read(4096), 5)
    second_at = time.monotonic() - started
    writer.close()
    # The first event reached the client while the backend was still pausing before the second.
    assert first_at < 1.0 <= second_at
