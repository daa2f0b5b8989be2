"""Hostile clients at the connection (contract 11, "Client side, same rules"), over raw sockets.

Each attack asserts what the client saw (status and JSON-RPC code, or a closed
connection, and when) and that nothing of it reached the recording backend.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.support import (
    InProcessGateway,
    Process,
    gateway_in_thread,
    initialize_body,
    mcp_headers,
    mcp_target,
    raw_request,
    raw_session,
    recording_backend,
)

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
BODY_GRACE = 2.0  # client_limits.BODY_ANSWER_GRACE: the backstop for bodies no endpoint reads
MAX_CONNECTIONS = 2
SLACK = 1.5  # scheduling on a loaded two-core machine
TRICKLE = 0.2  # seconds between bytes of a slow client

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture(scope="module")
def recorder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = recording_backend(tmp_path_factory.mktemp("recorder") / "recorder.log").start()
    yield process
    process.stop()


def limited_config(recorder: Process, max_connections: int = 4096) -> dict[str, Any]:
    server = {"header_timeout": "1s", "body_timeout": "1s", "max_connections": max_connections}
    return {"server": server, "mcp": {"targets": [mcp_target("rec", recorder.port)]}}


@pytest.fixture(scope="module")
def gw(recorder: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    with gateway_in_thread(tmp_path_factory.mktemp("client-limits"), limited_config(recorder)) as running:
        yield running


async def records(recorder: Process) -> list[dict[str, Any]]:
    """What clients' requests brought to the backend (its health checks are GETs, left out)."""
    response = await raw_request(recorder.port, "GET", "/_records", [("Host", f"127.0.0.1:{recorder.port}")])
    return [record for record in response.json() if record["method"] != "GET"]


def head(method: str, path: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def read_response(reader: asyncio.StreamReader, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One Content-Length-framed answer off a kept-alive connection."""
    raw_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status_line, *lines = raw_head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines if ":" in line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), timeout)
    return int(status_line.split()[1]), headers, body


async def closed_after(reader: asyncio.StreamReader, started: float, bound: float) -> float:
    """Seconds from `started` until the gateway closed the connection; fails past `bound`."""
    deadline = started + bound
    while time.monotonic() < deadline:
        try:
            data = await asyncio.wait_for(reader.read(65536), deadline - time.monotonic())
        except ConnectionResetError:
            return time.monotonic() - started
        except TimeoutError:
            break
        if not data:
            return time.monotonic() - started
    raise AssertionError(f"connection still open after {bound}s")


async def trickle(writer: asyncio.StreamWriter, byte: bytes, bound: float) -> None:
    """One byte every TRICKLE seconds, as a slowloris client sends; stops when the gateway hangs up."""
    for _ in range(int(bound / TRICKLE)):
        if writer.is_closing():
            return
        try:
            writer.write(byte)
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(TRICKLE)  # the attack's own pace, not a wait for the gateway


@pytest.fixture
async def connection(gw: InProcessGateway) -> AsyncIterator[Connection]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", gw.port), 5)
    yield reader, writer
    writer.close()


# -- duplicate Host ----------------------------------------------------------------


@pytest.mark.parametrize(
    "hosts",
    [
        ["127.0.0.1:{port}", "127.0.0.1:{port}"],
        ["127.0.0.1:{port}", "evil.example"],  # a last-wins reader would answer 403 for the allow-list
        ["evil.example", "127.0.0.1:{port}"],  # a first-wins proxy would route on evil.example
        ["127.0.0.1:{port}, evil.example"],  # the two folded into one line
    ],
    ids=["same-twice", "allowed-then-foreign", "foreign-then-allowed", "folded"],
)
async def test_more_than_one_host_is_400_and_never_reaches_the_backend(
    gw: InProcessGateway, recorder: Process, hosts: list[str]
) -> None:
    before = len(await records(recorder))
    headers = [("Host", h.format(port=gw.port)) for h in hosts] + mcp_headers(gw.port)[1:]
    body = initialize_body()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", gw.port), 5)
    try:
        writer.write(head("POST", "/mcp/v1", [*headers, ("Content-Length", str(len(body)))]) + body)
        status, response_headers, answer = await read_response(reader)
        closed = await closed_after(reader, time.monotonic(), 5)
    finally:
        writer.close()
    assert status == 400
    assert json.loads(answer)["error"]["code"] == -32600
    assert response_headers.get("connection") == "close"
    assert closed < 5
    assert len(await records(recorder)) == before


async def test_one_host_is_still_served(gw: InProcessGateway, recorder: Process) -> None:
    before = len(await records(recorder))
    response = await raw_request(gw.port, "POST", "/mcp/v1", mcp_headers(gw.port), initialize_body())
    assert response.status == 200
    assert [json.loads(r["body"])["method"] for r in (await records(recorder))[before:]] == ["initialize"]


# -- the request head within header_timeout ---------------------------------------


async def test_silent_connection_is_closed_at_header_timeout(
    connection: Connection,
) -> None:
    reader, _ = connection
    elapsed = await closed_after(reader, time.monotonic(), HEADER_TIMEOUT + SLACK)
    assert elapsed >= HEADER_TIMEOUT * 0.9


async def test_trickled_head_is_disconnected_at_header_timeout(
    gw: InProcessGateway, recorder: Process, connection: Connection
) -> None:
    reader, writer = connection
    before = len(await records(recorder))
    started = time.monotonic()
    writer.write(f"POST /mcp/v1 HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nX-Slow: ".encode())
    sender = asyncio.create_task(trickle(writer, b"a", bound=10))
    try:
        elapsed = await closed_after(reader, started, HEADER_TIMEOUT + SLACK)
    finally:
        sender.cancel()
    assert HEADER_TIMEOUT * 0.9 <= elapsed
    assert len(await records(recorder)) == before


async def test_next_request_head_on_a_kept_connection_is_bounded_too(
    gw: InProcessGateway, connection: Connection
) -> None:
    reader, writer = connection
    writer.write(head("GET", "/healthz", [("Host", f"127.0.0.1:{gw.port}")]))
    status, _, _ = await read_response(reader)
    assert status == 200
    # Each byte resets uvicorn's idle timer: only the head deadline ends this.
    started = time.monotonic()
    writer.write(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nX-Slow: ".encode())
    sender = asyncio.create_task(trickle(writer, b"a", bound=10))
    try:
        elapsed = await closed_after(reader, started, HEADER_TIMEOUT + SLACK)
    finally:
        sender.cancel()
    assert HEADER_TIMEOUT * 0.9 <= elapsed


# -- the body within body_timeout --------------------------------------------------


async def test_trickled_body_is_408_at_body_timeout(
    gw: InProcessGateway, recorder: Process, connection: Connection
) -> None:
    reader, writer = connection
    before = len(await records(recorder))
    body = initialize_body()
    started = time.monotonic()
    writer.write(head("POST", "/mcp/v1", [*mcp_headers(gw.port), ("Content-Length", str(len(body) + 100))]) + body)
    sender = asyncio.create_task(trickle(writer, b" ", bound=10))
    try:
        status, headers, answer = await read_response(reader, timeout=BODY_TIMEOUT + SLACK)
        answered = time.monotonic() - started
        await closed_after(reader, started, BODY_TIMEOUT + SLACK)
    finally:
        sender.cancel()
    assert status == 408
    assert json.loads(answer)["error"]["code"] == -32600
    assert headers.get("connection") == "close"
    assert BODY_TIMEOUT * 0.9 <= answered
    assert len(await records(recorder)) == before


async def test_body_nobody_reads_is_cut_off_too(gw: InProcessGateway, connection: Connection) -> None:
    reader, writer = connection
    started = time.monotonic()
    # Answered 404 before any body byte is read: uvicorn alone would keep reading it forever.
    writer.write(head("POST", "/nowhere", [("Host", f"127.0.0.1:{gw.port}"), ("Content-Length", "100000")]))
    sender = asyncio.create_task(trickle(writer, b" ", bound=15))
    try:
        status, _, _ = await read_response(reader)
        elapsed = await closed_after(reader, started, BODY_TIMEOUT + BODY_GRACE + SLACK)
    finally:
        sender.cancel()
    assert status == 404
    assert BODY_TIMEOUT * 0.9 <= elapsed


# -- a normal client ----------------------------------------------------------------


async def test_normal_client_is_unaffected_by_the_deadlines(gw: InProcessGateway, recorder: Process) -> None:
    session_id = await raw_session(gw.port)
    session = ("Mcp-Session-Id", session_id), ("MCP-Protocol-Version", "2025-11-25")
    pause = BODY_TIMEOUT + BODY_GRACE + 0.5  # an answer that outlasts every deadline
    body = json.dumps({"jsonrpc": "2.0", "id": 3, "method": "slow/stream", "params": {"pause": pause}}).encode()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", gw.port), 5)
    try:
        writer.write(head("POST", "/mcp/v1", [*mcp_headers(gw.port, *session), ("Content-Length", str(len(body)))]))
        writer.write(body)
        received = b""
        while not received.endswith(b"\r\n0\r\n\r\n"):  # the chunked stream's end
            chunk = await asyncio.wait_for(reader.read(65536), pause + SLACK)
            assert chunk, "the gateway closed a connection whose request was complete"
            received += chunk
        # The same connection, idle less than the keep-alive time, serves the next request.
        writer.write(head("GET", "/healthz", [("Host", f"127.0.0.1:{gw.port}")]))
        status, _, _ = await read_response(reader)
    finally:
        writer.close()
    assert received.startswith(b"HTTP/1.1 200")
    assert b'"second"' in received
    assert status == 200
    assert json.loads((await records(recorder))[-1]["body"])["method"] == "slow/stream"


# -- max_connections ----------------------------------------------------------------


@pytest.fixture(scope="module")
def busy_gw(recorder: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    config = limited_config(recorder, max_connections=MAX_CONNECTIONS)
    config["server"] |= {"header_timeout": "10s", "body_timeout": "10s"}  # connections are held, not slow
    with gateway_in_thread(tmp_path_factory.mktemp("client-limits-busy"), config, name="busy") as running:
        yield running


async def served_connection(port: int) -> Connection:
    """A kept-alive connection that was served; polls while the gateway lets go of closed ones."""
    deadline = time.monotonic() + 5
    while True:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        writer.write(head("GET", "/healthz", [("Host", f"127.0.0.1:{port}")]))
        status, _, _ = await read_response(reader)
        if status == 200:
            return reader, writer
        writer.close()
        if time.monotonic() > deadline:
            raise AssertionError("no connection served")
        await asyncio.sleep(0.1)


async def test_connections_beyond_max_get_503_and_never_reach_the_backend(
    busy_gw: InProcessGateway, recorder: Process
) -> None:
    port = busy_gw.port
    held = [await served_connection(port) for _ in range(MAX_CONNECTIONS)]
    try:
        before = len(await records(recorder))
        body = initialize_body()
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        writer.write(head("POST", "/mcp/v1", [*mcp_headers(port), ("Content-Length", str(len(body)))]) + body)
        status, headers, answer = await read_response(reader)
        closed = await closed_after(reader, time.monotonic(), 5)
        writer.close()
        assert (status, headers.get("retry-after"), headers.get("connection")) == (503, "1", "close")
        assert json.loads(answer)["error"]["code"] == -32000
        assert closed < 5
        assert len(await records(recorder)) == before
        # The connections already served keep being served, newcomers or not.
        for held_reader, held_writer in held:
            held_writer.write(head("GET", "/healthz", [("Host", f"127.0.0.1:{port}")]))
            assert (await read_response(held_reader))[0] == 200
    finally:
        for _, held_writer in held:
            held_writer.close()
    # Once they are gone, a new connection is served again.
    _, writer = await served_connection(port)
    writer.close()
