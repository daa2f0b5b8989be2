"""The hand-written RESP client behind the store's hot path (sessions/resp.py).

Encoding and reply parsing are checked against raw bytes fed to the protocol object; pipelining,
error replies, the NOSCRIPT fallback and connection setup against a real redis-server; outages
against a Redis the test kills and restarts, and against raw servers that hang, hang up or talk nonsense.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis.asyncio as aioredis

import agentgw.sessions.resp as redis_store
from agentgw.errors import StoreUnavailable
from agentgw.sessions.redis import RedisSessionStore, one_server
from agentgw.sessions.resp import OneServer, _encode, _RespProtocol, _sha1
from agentgw.sessions.store import SessionRecord, new_session_id
from tests.support import Process, poll, started_redis

# Tries at starting a redis-server of the test's own: the free port may be taken before it binds.
# The time a failure that must not wait for the store timeout is allowed to take.
PROMPTLY = 3.0
# Slack above STORE_TIMEOUT for a timeout on a loaded 2-core machine.
TIMEOUT_SLACK = 1.5

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def error(message: str) -> tuple[str, str]:
    """How `plain` shows an error reply."""
    return ("error", message)


def plain(reply: Any) -> Any:
    """A reply with its error replies made comparable (hiredis.ReplyError compares by identity)."""
    if isinstance(reply, hiredis.ReplyError):
        return error(str(reply))
    if isinstance(reply, list):
        return [plain(item) for item in reply]
    return reply


def bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


# Every RESP2 reply type as it comes off the wire, and what the client must hand its caller.
REPLIES: list[tuple[str, bytes, Any]] = [
    ("simple string", b"+OK\r\n", b"OK"),
    ("empty simple string", b"+\r\n", b""),
    ("error", b"-ERR something went wrong\r\n", error("ERR something went wrong")),
    ("typed error", b"-WRONGTYPE Operation against a key\r\n", error("WRONGTYPE Operation against a key")),
    ("integer", b":42\r\n", 42),
    ("negative integer", b":-7\r\n", -7),
    ("largest integer", b":9223372036854775807\r\n", 2**63 - 1),
    ("bulk", bulk(b"hello"), b"hello"),
    ("bulk holding CRLF and NUL", bulk(b"a\r\nb\x00c"), b"a\r\nb\x00c"),
    ("bulk of UTF-8", bulk("clé ✓ 日本".encode()), "clé ✓ 日本".encode()),
    ("empty bulk", b"$0\r\n\r\n", b""),
    ("null bulk", b"$-1\r\n", None),
    ("empty array", b"*0\r\n", []),
    ("null array", b"*-1\r\n", None),
    ("array", b"*3\r\n:1\r\n" + bulk(b"x") + b"$-1\r\n", [1, b"x", None]),
    ("nested array", b"*3\r\n*2\r\n+a\r\n*1\r\n:7\r\n*-1\r\n*0\r\n", [[b"a", [7]], None, []]),
    ("array holding an error", b"*2\r\n-ERR inner\r\n" + bulk(b""), [error("ERR inner"), b""]),
]
STREAM = b"".join(wire for _, wire, _ in REPLIES)
EXPECTED = [expected for _, _, expected in REPLIES]


class RecordingTransport(asyncio.Transport):
    """Stands in for the socket: keeps what the protocol writes, notes that it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def fed_protocol() -> tuple[_RespProtocol, RecordingTransport]:
    protocol, transport = _RespProtocol(), RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def issue(protocol: _RespProtocol, count: int) -> list[asyncio.Task[Any]]:
    """`count` calls in flight on `protocol`, each written before this returns."""
    calls = [asyncio.create_task(protocol.call(["ECHO", str(i)])) for i in range(count)]
    await asyncio.sleep(0)  # one loop turn: every task runs up to its wait for the reply
    return calls


async def finished(calls: list[asyncio.Task[Any]]) -> int:
    await asyncio.sleep(0)  # a task whose reply was set finishes in this turn
    return sum(call.done() for call in calls)


def ends_of_replies() -> list[int]:
    """The offset in STREAM just past each reply."""
    ends, offset = [], 0
    for _, wire, _ in REPLIES:
        offset += len(wire)
        ends.append(offset)
    return ends


def record(target: str = "docs") -> SessionRecord:
    now = time.time()
    return SessionRecord(
        id=new_session_id(),
        target=target,
        backend="http://127.0.0.1:1/mcp",
        protocol_version="2025-11-25",
        created_at=now,
        last_seen=now,
        subject="alice",
        scopes=["read"],
    )


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Process]:
    server = started_redis(tmp_path / "redis.log")
    yield server
    server.stop()


@contextlib.asynccontextmanager
async def raw_server(handle: Handler) -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 whose every connection `handle` serves; its port."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await handle(reader, writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()


async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)
    writer.close()


async def answer_nonsense(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)
    writer.write(b"?this is not RESP\r\n")
    await reader.read()


@pytest.fixture
async def connection(redis_url: str) -> AsyncIterator[OneServer]:
    conn = one_server(redis_url)
    yield conn
    conn.close()


@pytest.fixture
async def redis_py(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def key(name: str = "") -> str:
    return f"resp-test-{uuid.uuid4().hex}:{name}"


# -- encoding ---------------------------------------------------------------------------------


def test_arguments_are_bulk_strings_counted_in_utf8_bytes() -> None:
    assert _encode(["SET", "clé", ""]) == b"*3\r\n$3\r\nSET\r\n$4\r\ncl\xc3\xa9\r\n$0\r\n\r\n"
    assert _encode(["ECHO", "🎉"]) == b"*2\r\n$4\r\nECHO\r\n$4\r\n\xf0\x9f\x8e\x89\r\n"
    assert _encode(["ECHO", "a\r\n$1\r\n\x00"]) == b"*2\r\n$4\r\nECHO\r\n$8\r\na\r\n$1\r\n\x00\r\n"


@pytest.mark.parametrize(
    "value", ["", "clé", "日本語", "emoji 🎉", "a\r\nb", "\x00\x01\x7f\xff", "*1\r\n$3\r\nfoo\r\n", " "]
)
async def test_non_ascii_binary_ish_and_empty_values_round_trip_through_redis(
    connection: OneServer, value: str
) -> None:
    name = key(value)
    assert await connection.connection.call(["SET", name, value]) == b"OK"
    assert await connection.connection.call(["GET", name]) == value.encode()
    assert await connection.connection.call(["STRLEN", name]) == len(value.encode())
    assert await connection.connection.call(["DEL", name]) == 1


async def test_commands_are_written_whole_and_in_call_order() -> None:
    protocol, transport = fed_protocol()
    calls = await issue(protocol, 3)
    assert bytes(transport.written) == b"".join(_encode(["ECHO", str(i)]) for i in range(3))
    protocol.close()
    await asyncio.gather(*calls, return_exceptions=True)


# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("wire", "expected"), [(w, e) for _, w, e in REPLIES], ids=[n for n, _, _ in REPLIES])
async def test_each_reply_type_parses_when_it_arrives_whole(wire: bytes, expected: Any) -> None:
    protocol, _ = fed_protocol()
    [call] = await issue(protocol, 1)
    protocol.data_received(wire)
    assert plain(await call) == expected


@pytest.mark.parametrize(("wire", "expected"), [(w, e) for _, w, e in REPLIES], ids=[n for n, _, _ in REPLIES])
async def test_each_reply_type_parses_when_it_arrives_one_byte_at_a_time(wire: bytes, expected: Any) -> None:
    protocol, _ = fed_protocol()
    [call] = await issue(protocol, 1)
    for i in range(len(wire) - 1):
        protocol.data_received(wire[i : i + 1])
        assert await finished([call]) == 0, f"answered after {i + 1} of {len(wire)} bytes"
    protocol.data_received(wire[-1:])
    assert plain(await call) == expected


async def test_pipelined_replies_of_every_type_reach_their_callers_one_byte_at_a_time() -> None:
    protocol, _ = fed_protocol()
    calls = await issue(protocol, len(REPLIES))
    ends = ends_of_replies()
    for i in range(len(STREAM)):
        protocol.data_received(STREAM[i : i + 1])
        assert await finished(calls) == sum(end <= i + 1 for end in ends)
    assert [plain(call.result()) for call in calls] == EXPECTED


async def test_pipelined_replies_of_every_type_survive_a_split_at_every_offset() -> None:
    for split in range(1, len(STREAM)):
        protocol, _ = fed_protocol()
        calls = await issue(protocol, len(REPLIES))
        protocol.data_received(STREAM[:split])
        protocol.data_received(STREAM[split:])
        assert [plain(await call) for call in calls] == EXPECTED, f"split at {split}"


async def test_a_cancelled_caller_does_not_shift_the_replies_of_the_others() -> None:
    protocol, _ = fed_protocol()
    first, second, third = await issue(protocol, 3)
    second.cancel()
    protocol.data_received(bulk(b"0") + bulk(b"1") + bulk(b"2"))
    assert (await first, await third) == (b"0", b"2")
    assert second.cancelled()


async def test_an_unanswered_call_times_out_closing_the_connection_and_failing_every_waiting_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_store, "STORE_TIMEOUT", 0.05)
    protocol, transport = fed_protocol()
    calls = await issue(protocol, 2)
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), PROMPTLY)
    assert [type(result) for result in results] == [StoreUnavailable, StoreUnavailable]
    assert transport.closed and protocol.lost
    with pytest.raises(StoreUnavailable):
        await protocol.call(["PING"])  # replies could no longer be matched: no further calls


# -- a real Redis -----------------------------------------------------------------------------


async def test_concurrent_calls_on_one_connection_get_their_own_answers_in_order(
    connection: OneServer,
) -> None:
    counter = key("counter")
    commands = [["INCR", counter] if i % 2 else ["ECHO", f"value {i} é"] for i in range(600)]
    commands += [["CLIENT", "ID"]] * 20
    replies = await asyncio.gather(*(connection.connection.call(command) for command in commands))
    assert replies[:600:2] == [f"value {i} é".encode() for i in range(0, 600, 2)]
    assert replies[1:600:2] == list(range(1, 301))  # Redis ran them in the order they were called
    assert len(set(replies[600:])) == 1  # all on one connection
    await connection.connection.call(["DEL", counter])


async def test_concurrent_scripts_get_their_own_answers(connection: OneServer) -> None:
    script = "return {KEYS[1], ARGV[1], tonumber(ARGV[2]) * 2}"
    replies = await asyncio.gather(*(connection.eval_script(script, [f"k{i}"], [f"ä{i}", str(i)]) for i in range(300)))
    assert replies == [[f"k{i}".encode(), f"ä{i}".encode(), 2 * i] for i in range(300)]


async def test_error_replies_are_returned_and_the_connection_keeps_serving(connection: OneServer) -> None:
    a_hash = key("hash")
    await connection.connection.call(["HSET", a_hash, "field", "value"])
    before = await connection.connection.call(["CLIENT", "ID"])
    replies = await asyncio.gather(
        connection.connection.call(["ECHO", "before"]),
        connection.connection.call(["INCR", a_hash]),
        connection.connection.call(["NO-SUCH-COMMAND", "x"]),
        connection.connection.call(["ECHO", "after"]),
    )
    assert replies[0] == b"before" and replies[3] == b"after"
    assert isinstance(replies[1], hiredis.ReplyError) and str(replies[1]).startswith("WRONGTYPE ")
    assert isinstance(replies[2], hiredis.ReplyError) and str(replies[2]).startswith("ERR ")
    assert await connection.connection.call(["CLIENT", "ID"]) == before
    await connection.connection.call(["DEL", a_hash])


async def test_a_script_error_raises_store_unavailable_and_later_calls_succeed(
    connection: OneServer,
) -> None:
    results = await asyncio.gather(
        connection.eval_script("return 'before'", [], []),
        connection.eval_script("return redis.error_reply('BOOM failed on purpose')", [], []),
        connection.eval_script("return 'after'", [], []),
        return_exceptions=True,
    )
    assert results[0] == b"before" and results[2] == b"after"
    assert isinstance(results[1], StoreUnavailable)
    assert isinstance(results[1].__cause__, hiredis.ReplyError)
    assert str(results[1].__cause__).startswith("BOOM failed on purpose")
    assert await connection.eval_script("return 3", [], []) == 3


async def test_evalsha_after_script_flush_falls_back_to_eval_once(
    connection: OneServer, redis_py: aioredis.Redis
) -> None:
    script = f"return 'flushed {uuid.uuid4().hex}'"
    expected = script[8:-1].encode()
    assert await connection.eval_script(script, [], []) == expected
    await redis_py.script_flush()
    assert await redis_py.script_exists(_sha1(script)) == [False]

    async def calls() -> tuple[int, int]:
        stats = await redis_py.info("commandstats")
        return stats["cmdstat_evalsha"]["calls"], stats.get("cmdstat_eval", {}).get("calls", 0)

    evalsha, eval_ = await calls()
    assert await connection.eval_script(script, [], []) == expected
    assert await calls() == (evalsha + 1, eval_ + 1)  # NOSCRIPT, then EVAL loaded it
    assert await connection.eval_script(script, [], []) == expected
    assert await calls() == (evalsha + 2, eval_ + 1)  # cached again: EVALSHA alone


async def test_concurrent_calls_after_script_flush_all_succeed(connection: OneServer, redis_py: aioredis.Redis) -> None:
    script = f"-- {uuid.uuid4().hex}\nreturn tonumber(ARGV[1]) + 1"
    assert await connection.eval_script(script, [], ["0"]) == 1
    await redis_py.script_flush()
    replies = await asyncio.gather(*(connection.eval_script(script, [], [str(i)]) for i in range(100)))
    assert replies == list(range(1, 101))


async def test_store_touch_works_after_script_flush(redis_url: str, redis_py: aioredis.Redis) -> None:
    store = RedisSessionStore.for_url(redis_url, key())
    try:
        created = record()
        await store.create(created, ttl=60)
        assert (await store.touch(created.id, time.time(), 60)) is not None
        await redis_py.script_flush()
        touched = await store.touch(created.id, time.time(), 60)
        assert touched is not None and touched.id == created.id and touched.subject == "alice"
    finally:
        await store.close()


async def test_the_database_in_the_url_is_selected(redis_url: str, redis_py: aioredis.Redis) -> None:
    conn = one_server(redis_url.rsplit("/", 1)[0] + "/5")
    name = key("db")
    try:
        assert await conn.connection.call(["SET", name, "in five"]) == b"OK"
    finally:
        conn.close()
    fifth = aioredis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/5")
    try:
        assert await fifth.get(name) == b"in five"
        assert await redis_py.get(name) is None
        await fifth.delete(name)
    finally:
        await fifth.aclose()


async def test_the_password_in_the_url_authenticates_and_a_wrong_one_is_refused(tmp_path: Path) -> None:
    server = started_redis(tmp_path / "redis.log", "--requirepass", "s3cret é")
    base = f"127.0.0.1:{server.port}/0"
    try:
        for url in (f"redis://:s3cret%20%C3%A9@{base}", f"redis://default:s3cret%20%C3%A9@{base}"):
            conn = one_server(url)
            assert await conn.eval_script("return 'in'", [], []) == b"in"
            conn.close()
        conn = one_server(f"redis://:wrong@{base}")
        with pytest.raises(StoreUnavailable):
            await conn.eval_script("return 'in'", [], [])
        conn.close()
        conn = one_server(f"redis://{base}")
        with pytest.raises(StoreUnavailable) as refused:
            await conn.eval_script("return 'in'", [], [])
        assert str(refused.value.__cause__).startswith("NOAUTH")
        conn.close()
    finally:
        server.stop()


# -- outages ----------------------------------------------------------------------------------


async def test_redis_killed_mid_call_fails_the_call_at_once_and_the_next_call_reconnects(
    own_redis: Process, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_store, "STORE_TIMEOUT", 30.0)  # only the lost connection can end the call in time
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    conn, observer = one_server(url), aioredis.Redis.from_url(url)
    try:
        blocked = asyncio.create_task(conn.connection.call(["BLPOP", key("never"), "0"]))

        async def waiting_in_redis() -> bool:
            return int((await observer.info("clients"))["blocked_clients"]) == 1

        await poll(waiting_in_redis, timeout=5, interval=0.02)
        await observer.aclose()
        started = time.monotonic()
        own_redis.kill()
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(blocked, PROMPTLY)
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(conn.connection.call(["PING"]), PROMPTLY)  # down: refused, not waited on
        assert time.monotonic() - started < PROMPTLY
        own_redis.start()
        assert await conn.connection.call(["PING"]) == b"PONG"
    finally:
        conn.close()
        await observer.aclose()


async def test_store_touch_is_unavailable_while_redis_is_down_and_works_once_it_is_back(own_redis: Process) -> None:
    url, prefix = f"redis://127.0.0.1:{own_redis.port}/0", key()
    store = RedisSessionStore.for_url(url, prefix)
    try:
        created = record()
        await store.create(created, ttl=60)
        assert (await store.touch(created.id, time.time(), 60)) is not None
        own_redis.kill()
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(store.touch(created.id, time.time(), 60), PROMPTLY)
            assert time.monotonic() - started < redis_store.STORE_TIMEOUT
        own_redis.start()
        assert await store.touch(created.id, time.time(), 60) is None  # a fresh Redis: the record is gone
        # Written by a second store: the first one's redis-py pool still holds connections to the dead Redis.
        writer = RedisSessionStore.for_url(url, prefix)
        await writer.create(created, ttl=60)
        await writer.close()
        touched = await store.touch(created.id, time.time(), 60)
        assert touched is not None and touched.id == created.id
    finally:
        await store.close()


async def test_a_server_that_never_answers_times_out_every_waiting_call() -> None:
    async with raw_server(never_answer) as port:
        conn = one_server(f"redis://127.0.0.1:{port}/0")
        started = time.monotonic()
        results = await asyncio.gather(
            *(conn.eval_script("return 1", [], []) for _ in range(5)), return_exceptions=True
        )
        elapsed = time.monotonic() - started
        conn.close()
    assert [type(result) for result in results] == [StoreUnavailable] * 5
    assert redis_store.STORE_TIMEOUT * 0.9 <= elapsed < redis_store.STORE_TIMEOUT + TIMEOUT_SLACK


async def test_store_touch_against_a_server_that_never_answers_fails_in_bounded_time() -> None:
    async with raw_server(never_answer) as port:
        store = RedisSessionStore.for_url(f"redis://127.0.0.1:{port}/0", "silent:")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(store.touch("any", time.time(), 60), redis_store.STORE_TIMEOUT + 5)
        elapsed = time.monotonic() - started
        store._hot.close()  # not store.close(): redis-py's pool never connected
    assert elapsed < redis_store.STORE_TIMEOUT + TIMEOUT_SLACK


async def test_callers_queued_behind_an_unanswered_connection_setup_fail_within_one_timeout() -> None:
    # With a password (or a database) in the URL each new connection first sends AUTH/SELECT.
    # Callers once queued behind that setup one by one, each then trying a connection of its
    # own: the k-th caller failed after k x STORE_TIMEOUT.
    async with raw_server(never_answer) as port:
        conn = one_server(f"redis://:secret@127.0.0.1:{port}/0")
        started = time.monotonic()

        async def failure_time() -> float:
            with pytest.raises(StoreUnavailable):
                await conn.eval_script("return 1", [], [])
            return time.monotonic() - started

        elapsed = await asyncio.wait_for(asyncio.gather(*(failure_time() for _ in range(4))), 30)
        conn.close()
    assert max(elapsed) < redis_store.STORE_TIMEOUT + TIMEOUT_SLACK, elapsed


@pytest.mark.parametrize("handle", [hang_up, answer_nonsense], ids=["hangs up", "answers nonsense"])
async def test_a_server_that_hangs_up_or_talks_nonsense_fails_the_call_at_once(
    handle: Handler, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_store, "STORE_TIMEOUT", 30.0)  # only the connection's end can end the call in time
    async with raw_server(handle) as port:
        conn = one_server(f"redis://127.0.0.1:{port}/0")
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(conn.eval_script("return 1", [], []), PROMPTLY)
        conn.close()


# -- bugs found by these tests (they fail until the client is fixed) ------------------------------


async def test_a_lone_surrogate_is_sent_as_its_own_bytes_and_later_replies_stay_in_line(
    connection: OneServer,
) -> None:
    # A lone surrogate was once an encoding error raised after the caller's reply was queued: the
    # orphan took the next reply, and every later caller got the reply meant for the one before.
    assert await connection.connection.call(["PING"]) == b"PONG"
    assert await connection.connection.call(["ECHO", "lone \ud800 surrogate"]) == "lone \ud800 surrogate".encode(
        "utf-8", "surrogatepass"
    )
    replies = await asyncio.gather(
        connection.connection.call(["ECHO", "first"]),
        connection.connection.call(["ECHO", "second"]),
        return_exceptions=True,
    )
    assert replies == [b"first", b"second"]


async def test_a_rate_limit_key_with_a_lone_surrogate_counts_apart_and_hands_no_session_another_ones_record(
    redis_url: str,
) -> None:
    # The previous one seen through the store: a token subject is any JSON string, lone
    # surrogates included, and rate-limit keys end with it (policy/rate_limits.py `_key`).
    store = RedisSessionStore.for_url(redis_url, key())
    try:
        sessions = [record(), record()]
        for created in sessions:
            await store.create(created, ttl=60)
        assert await store.add_many([("ratelimit:mcp:requests:1:\udc80", 1)], 120) == [1]
        assert await store.add_many([("ratelimit:mcp:requests:1:\udc80", 1)], 120) == [2]
        assert await store.add_many([("ratelimit:mcp:requests:1:\udc81", 1)], 120) == [1]
        touched = await asyncio.gather(
            *(store.touch(created.id, time.time(), 60) for created in sessions), return_exceptions=True
        )
        assert [getattr(found, "id", found) for found in touched] == [created.id for created in sessions]
    finally:
        await store.close()


async def test_a_unix_socket_url_is_where_the_hot_path_connects() -> None:
    # redis-py honours unix:// URLs (the store's other calls go there); the hot path once read only
    # host and port and connected to 127.0.0.1:6379 instead, which is refused, or worse another Redis.
    async def answer_unix(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            writer.write(b"+unix\r\n")

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "redis.sock"
        server = await asyncio.start_unix_server(answer_unix, str(path))
        conn = one_server(f"unix://{path}?db=0")
        try:
            reply: Any = await asyncio.wait_for(conn.connection.call(["PING"]), PROMPTLY)
        except StoreUnavailable as exc:
            reply = exc
        finally:
            conn.close()
            server.close()
    assert reply == b"unix"
