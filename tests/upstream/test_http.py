"""The pooled upstream HTTP client against raw loopback servers where the wire itself is the attack.

Each backend here is a plain asyncio server writing bytes by hand, so it can
do what no framework would: answer twice, trickle, reset, close mid-body,
speak HTTP/1.0. Every test checks what the client saw and what the backend
received (requests, and on how many connections).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from agentgw.upstream.http import (
    ConnectionPool,
    UpstreamBodyTooLarge,
    UpstreamConnectionError,
    UpstreamResponse,
    UpstreamTimeoutError,
)

BOUND = 5.0  # the longest any wait in these tests may take before it counts as a failure
MiB = 1024 * 1024


def answer(body: bytes, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 " + status.encode() + b"\r\ncontent-length: %d\r\n" % len(body) + extra + b"\r\n" + body


class Wire:
    """One accepted connection, seen from the backend."""

    def __init__(self, backend: RawBackend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.backend = backend
        self.reader = reader
        self.writer = writer
        self.number = backend.connections

    async def request(self) -> str | None:
        """The next request's path (recorded with its connection), None when the client closed."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head.decode("latin-1").split("\r\n")
        length = next((int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length:")), 0)
        await self.reader.readexactly(length)
        path = lines[0].split(" ")[1]
        self.backend.requests.append((self.number, path))
        return path

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def reset(self) -> None:
        """Close with a TCP RST instead of a FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Serve = Callable[[Wire], Awaitable[None]]


class RawBackend:
    """An asyncio server on 127.0.0.1:0 running `serve` for each connection."""

    def __init__(self, serve: Serve) -> None:
        self._serve = serve
        self.connections = 0
        self.closed = 0
        self.requests: list[tuple[int, str]] = []  # (connection number, path)
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> RawBackend:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()  # ends every handler still reading or trickling
        await until(lambda: self.closed == self.connections)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            await self._serve(Wire(self, reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self.closed += 1


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition` until it holds, failing after BOUND seconds."""
    async with asyncio.timeout(BOUND):
        while not condition():
            await asyncio.sleep(0.005)


@pytest.fixture
async def pool() -> AsyncIterator[ConnectionPool]:
    pool = ConnectionPool(connect_timeout=BOUND)
    yield pool
    await pool.close()


async def get(pool: ConnectionPool, url: str, timeout: float = BOUND) -> UpstreamResponse:
    return await pool.request("GET", url, {}, None, timeout)


async def fetch(pool: ConnectionPool, url: str, timeout: float = BOUND) -> tuple[int, bytes]:
    response = await get(pool, url, timeout)
    try:
        return response.status, await response.read(timeout)
    finally:
        response.release()


async def serve_paths(wire: Wire) -> None:
    """A well-behaved keep-alive backend: /big is 30 MiB, anything else names itself."""
    while (path := await wire.request()) is not None:
        await wire.send(answer(b"x" * (30 * MiB) if path == "/big" else path.encode()))


# -- large bodies never leave a pooled connection paused


async def test_thirty_mib_read_whole_leaves_connection_ready_for_next_request(pool: ConnectionPool) -> None:
    async with RawBackend(serve_paths) as backend:
        status, body = await fetch(pool, backend.url + "/big")
        assert (status, len(body)) == (200, 30 * MiB)

        started = asyncio.get_running_loop().time()
        status, body = await fetch(pool, backend.url + "/next", timeout=BOUND)
        elapsed = asyncio.get_running_loop().time() - started

        assert (status, body) == (200, b"/next")
        assert elapsed < 0.5
        assert backend.connections == 1
        assert backend.requests == [(1, "/big"), (1, "/next")]


async def test_thirty_mib_streamed_to_its_end_leaves_connection_ready(pool: ConnectionPool) -> None:
    async with RawBackend(serve_paths) as backend:
        response = await get(pool, backend.url + "/big")
        received = 0
        async for chunk in response.chunks(BOUND):
            received += len(chunk)
        response.release()
        assert received == 30 * MiB

        started = asyncio.get_running_loop().time()
        status, body = await fetch(pool, backend.url + "/next")
        assert (status, body) == (200, b"/next")
        assert asyncio.get_running_loop().time() - started < 0.5
        assert backend.requests == [(1, "/big"), (1, "/next")]


async def test_a_body_over_the_limit_is_refused_and_its_connection_closed(pool: ConnectionPool) -> None:
    async def serve(wire: Wire) -> None:
        while (path := await wire.request()) is not None:
            if path == "/chunked":  # no declared length: the limit is met while reading
                await wire.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                for _ in range(50):
                    await wire.send(b"400\r\n" + b"y" * 1024 + b"\r\n")
                await wire.send(b"0\r\n\r\n")
            else:
                await wire.send(answer(b"x" * 100_000 if path == "/long" else str(path).encode()))

    async with RawBackend(serve) as backend:
        for path in ("/long", "/chunked"):
            response = await get(pool, backend.url + path)
            with pytest.raises(UpstreamBodyTooLarge):
                await response.read(BOUND, limit=10_000)
            response.release()
        await until(lambda: backend.closed == 2)

        assert await fetch(pool, backend.url + "/small") == (200, b"/small")
        response = await get(pool, backend.url + "/fits")
        assert await response.read(BOUND, limit=5) == b"/fits"
        response.release()
        assert backend.connections == 3  # neither refused answer's connection was reused
        assert backend.requests == [(1, "/long"), (2, "/chunked"), (3, "/small"), (3, "/fits")]


# -- close-delimited bodies and bodiless statuses


async def close_delimited(wire: Wire) -> None:
    path = await wire.request()
    await wire.send(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n")
    for part in range(3):
        await wire.send(b"%s part %d;" % (str(path).encode(), part))
    # returning closes the connection with a FIN: the end of the body


@pytest.mark.parametrize("streamed", [False, True])
async def test_close_delimited_body_is_complete_at_eof_and_never_pooled(pool: ConnectionPool, streamed: bool) -> None:
    async with RawBackend(close_delimited) as backend:
        for path in ("/one", "/two"):
            response = await get(pool, backend.url + path)
            if streamed:
                body = b"".join([chunk async for chunk in response.chunks(BOUND)])
            else:
                body = await response.read(BOUND)
            response.release()
            assert (response.status, body) == (200, b"%s part 0;%s part 1;%s part 2;" % ((path.encode(),) * 3))
        assert backend.connections == 2
        assert backend.requests == [(1, "/one"), (2, "/two")]


async def test_close_delimited_body_cut_by_a_reset_is_an_error(pool: ConnectionPool) -> None:
    head_read = asyncio.Event()

    async def serve(wire: Wire) -> None:
        await wire.request()
        await wire.send(b"HTTP/1.0 200 OK\r\n\r\npartial")
        await head_read.wait()
        wire.reset()

    async with RawBackend(serve) as backend:
        response = await get(pool, backend.url + "/")
        head_read.set()
        with pytest.raises(UpstreamConnectionError):
            await response.read(BOUND)
        response.release()
        assert backend.requests == [(1, "/")]


async def test_bodiless_statuses_end_at_their_head(pool: ConnectionPool) -> None:
    async def serve(wire: Wire) -> None:
        await wire.request()
        await wire.send(b"HTTP/1.1 204 No Content\r\n\r\n")
        await wire.request()
        await wire.send(b"HTTP/1.1 304 Not Modified\r\netag: x\r\n\r\n")
        await wire.request()
        await wire.send(b"HTTP/1.1 100 Continue\r\nx-interim: 1\r\n\r\n" + answer(b"final", extra=b"x-final: 1\r\n"))
        await serve_paths(wire)

    async with RawBackend(serve) as backend:
        assert await fetch(pool, backend.url + "/a") == (204, b"")
        assert await fetch(pool, backend.url + "/b") == (304, b"")
        response = await get(pool, backend.url + "/c")
        assert (response.status, await response.read(BOUND)) == (200, b"final")
        assert (response.header("x-final"), response.header("x-interim")) == ("1", None)
        response.release()
        assert await fetch(pool, backend.url + "/d") == (200, b"/d")
        assert backend.connections == 1
        assert [path for _, path in backend.requests] == ["/a", "/b", "/c", "/d"]


async def test_switching_protocols_unasked_is_a_connection_error(pool: ConnectionPool) -> None:
    async def serve(wire: Wire) -> None:
        await wire.request()
        await wire.send(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: evil\r\nconnection: upgrade\r\n\r\nraw")
        await wire.reader.read()

    async with RawBackend(serve) as backend:
        with pytest.raises(UpstreamConnectionError):
            await get(pool, backend.url + "/")
        await until(lambda: backend.closed == 1)
        assert backend.requests == [(1, "/")]


# -- chunked with trailers


@pytest.mark.parametrize("streamed", [False, True])
async def test_chunked_body_with_trailers_is_read_and_trailers_are_not_headers(
    pool: ConnectionPool, streamed: bool
) -> None:
    async def serve(wire: Wire) -> None:
        await wire.request()
        await wire.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-evil\r\n\r\n")
        await wire.send(b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-evil: 1\r\ncontent-type: text/html\r\n\r\n")
        await serve_paths(wire)

    async with RawBackend(serve) as backend:
        response = await get(pool, backend.url + "/")
        if streamed:
            body = b"".join([chunk async for chunk in response.chunks(BOUND)])
        else:
            body = await response.read(BOUND)
        response.release()
        assert (response.status, body) == (200, b"hello world")
        assert (response.header("x-evil"), response.header("content-type")) == (None, None)
        assert await fetch(pool, backend.url + "/next") == (200, b"/next")
        assert backend.requests == [(1, "/"), (1, "/next")]


# -- bytes beyond the answer


@pytest.mark.parametrize(
    "extra",
    [
        answer(b"EVIL"),  # a whole unsolicited second answer
        b"HTTP/1.1 200 OK\r\ncontent-le",  # the start of one, to be completed later
    ],
)
async def test_bytes_beyond_an_answer_never_answer_the_next_request(pool: ConnectionPool, extra: bytes) -> None:
    async def serve(wire: Wire) -> None:
        if wire.number == 1:
            path = await wire.request()
            await wire.send(answer(str(path).encode()) + extra)  # one write: both arrive together
        await serve_paths(wire)

    async with RawBackend(serve) as backend:
        assert await fetch(pool, backend.url + "/first") == (200, b"/first")
        assert await fetch(pool, backend.url + "/second") == (200, b"/second")
        assert backend.connections == 2
        assert backend.requests == [(1, "/first"), (2, "/second")]


async def test_bytes_sent_to_an_idle_connection_close_it(pool: ConnectionPool) -> None:
    async def serve(wire: Wire) -> None:
        if wire.number == 1:
            await wire.request()
            await wire.send(answer(b"/first"))
            await wire.reader.readexactly(0)
            await wire.send(answer(b"EVIL"))  # while the connection idles in the pool
            await wire.reader.read()  # until the client hangs up on it
            return
        await serve_paths(wire)

    async with RawBackend(serve) as backend:
        assert await fetch(pool, backend.url + "/first") == (200, b"/first")
        await until(lambda: backend.closed == 1)
        assert await fetch(pool, backend.url + "/second") == (200, b"/second")
        assert backend.requests == [(1, "/first"), (2, "/second")]


async def test_a_204_with_a_body_does_not_leak_it_into_the_next_answer(pool: ConnectionPool) -> None:
    async def serve(wire: Wire) -> None:
        if wire.number == 1:
            await wire.request()
            await wire.send(b"HTTP/1.1 204 No Content\r\ncontent-length: 4\r\n\r\nEVIL")
        await serve_paths(wire)

    async with RawBackend(serve) as backend:
        assert await fetch(pool, backend.url + "/a") == (204, b"")
        assert await fetch(pool, backend.url + "/b") == (200, b"/b")
        assert backend.requests == [(1, "/a"), (2, "/b")]


async def test_malformed_head_is_a_connection_error_and_is_not_retried(pool: ConnectionPool) -> None:
    async def serve(wire: Wire) -> None:
        await wire.request()
        await wire.send(answer(b"ok"))
        await wire.request()
        await wire.send(b"HTTP/1.1 OK maybe\r\n\r\n")
        await wire.reader.read()

    async with RawBackend(serve) as backend:
        assert await fetch(pool, backend.url + "/a") == (200, b"ok")
        with pytest.raises(UpstreamConnectionError):
            await get(pool, backend.url + "/b")  # on the reused connection
        await until(lambda: backend.closed == 1)
        assert backend.connections == 1  # a backend that answered was not sent the request again
        assert backend.requests == [(1, "/a"), (1, "/b")]


# -- resets


async def test_reset_before_the_head_is_a_connection_error(pool: ConnectionPool) -> None:
    async def serve(wire: Wire) -> None:
        await wire.request()
        wire.reset()

    async with RawBackend(serve) as backend:
        with pytest.raises(UpstreamConnectionError):
            await get(pool, backend.url + "/")
        assert backend.requests == [(1, "/")]


@pytest.mark.parametrize("streamed", [False, True])
async def test_reset_mid_body_is_a_connection_error(pool: ConnectionPool, streamed: bool) -> None:
    head_read = asyncio.Event()

    async def serve(wire: Wire) -> None:
        await wire.request()
        await wire.send(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"z" * 10)
        await head_read.wait()
        wire.reset()

    async with RawBackend(serve) as backend:
        response = await get(pool, backend.url + "/")
        head_read.set()
        with pytest.raises(UpstreamConnectionError):
            if streamed:
                async for _ in response.chunks(BOUND):
                    pass
            else:
                await response.read(BOUND)
        response.release()
        assert backend.requests == [(1, "/")]


# -- time


async def test_slow_head_times_out_at_the_request_timeout(pool: ConnectionPool) -> None:
    async def serve(wire: Wire) -> None:
        await wire.request()
        await wire.send(b"HTTP/1.1 200 OK\r\n")
        for _ in range(100):  # 10 s at most: far past the timeout
            await wire.send(b"x")
            await asyncio.sleep(0.1)

    async with RawBackend(serve) as backend:
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamTimeoutError):
            await get(pool, backend.url + "/", timeout=0.5)
        elapsed = asyncio.get_running_loop().time() - started
        assert 0.45 <= elapsed < 1.5
        await until(lambda: backend.closed == 1)  # the client hung up on it
        assert backend.requests == [(1, "/")]


async def trickle(wire: Wire) -> None:
    """A declared 30-byte body sent one byte every 100 ms (3 s in all)."""
    await wire.request()
    await wire.send(b"HTTP/1.1 200 OK\r\ncontent-length: 30\r\n\r\n")
    for _ in range(30):
        await asyncio.sleep(0.1)
        await wire.send(b"t")


async def test_read_timeout_bounds_the_whole_body(pool: ConnectionPool) -> None:
    async with RawBackend(trickle) as backend:
        response = await get(pool, backend.url + "/")
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamTimeoutError):
            await response.read(0.5)
        elapsed = asyncio.get_running_loop().time() - started
        response.release()
        assert 0.45 <= elapsed < 1.5  # each byte came within 100 ms: only a deadline stops it
        await until(lambda: backend.closed == 1)
        assert backend.requests == [(1, "/")]


async def test_streaming_timeout_bounds_each_wait_not_the_stream(pool: ConnectionPool) -> None:
    async with RawBackend(trickle) as backend:
        response = await get(pool, backend.url + "/")
        body = b"".join([chunk async for chunk in response.chunks(0.5)])
        response.release()
        assert body == b"t" * 30
        assert backend.requests == [(1, "/")]


# -- reuse after the backend closed an idle connection


async def test_idle_connection_closed_by_the_backend_is_replaced(pool: ConnectionPool) -> None:
    async def serve(wire: Wire) -> None:
        path = await wire.request()
        await wire.send(answer(str(path).encode()))  # keep-alive by default, then closed

    async with RawBackend(serve) as backend:
        assert await fetch(pool, backend.url + "/a") == (200, b"/a")
        await until(lambda: backend.closed == 1)
        assert await fetch(pool, backend.url + "/b") == (200, b"/b")
        assert backend.requests == [(1, "/a"), (2, "/b")]


async def test_reused_connection_closed_before_answering_is_retried_once_fresh(pool: ConnectionPool) -> None:
    async def serve(wire: Wire) -> None:
        if wire.number == 1:
            await wire.request()
            await wire.send(answer(b"/a"))
            await wire.request()  # read, then dropped unanswered: the race with an idle close
            return
        await serve_paths(wire)

    async with RawBackend(serve) as backend:
        assert await fetch(pool, backend.url + "/a") == (200, b"/a")
        assert await fetch(pool, backend.url + "/b") == (200, b"/b")
        assert backend.requests == [(1, "/a"), (1, "/b"), (2, "/b")]


async def test_reused_connection_that_started_answering_is_not_retried(pool: ConnectionPool) -> None:
    async def serve(wire: Wire) -> None:
        await wire.request()
        await wire.send(answer(b"/a"))
        await wire.request()
        await wire.send(b"HTTP/1.1 200")  # half a status line, then the close

    async with RawBackend(serve) as backend:
        assert await fetch(pool, backend.url + "/a") == (200, b"/a")
        with pytest.raises(UpstreamConnectionError):
            await get(pool, backend.url + "/b")
        assert backend.requests == [(1, "/a"), (1, "/b")]
