"""Redis session store: every gateway process sharing the Redis sees every session."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool, SSLConnection, parse_url
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

from agentgw.errors import StoreUnavailable
from agentgw.sessions.store import SessionRecord, StoredCatalogue

T = TypeVar("T")

log = logging.getLogger("agentgw.sessions")

# Reads the record, slides its lifetime and its place in the per-backend
# index in one round trip: the hot path's only store call.
_TOUCH = """
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return fields end
redis.call('HSET', KEYS[1], 'last_seen', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local target, backend
for i = 1, #fields, 2 do
  if fields[i] == 'target' then target = fields[i + 1] elseif fields[i] == 'backend' then backend = fields[i + 1] end
end
redis.call('ZADD', ARGV[3] .. target .. '|' .. backend, ARGV[4], ARGV[5])
return fields
"""

# A catalogue write, its version bump and its announcement as one step, so a process that
# hears of version N and reads the catalogue finds at least what N wrote.
_PUT_TOOLS = """
local i = 4
for _ = 1, tonumber(ARGV[3]) do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
  i = i + 1
end
local version = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[1], version .. ' ' .. ARGV[2])
return version
"""

# Counters created with their lifetime on first use, then added to: the rate limits' one round trip.
_ADD_MANY = """
local totals = {}
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], 0, 'PX', ARGV[1], 'NX')
  totals[i] = redis.call('INCRBY', KEYS[i], ARGV[i + 1])
end
return totals
"""

# A batch of audit lines appended in one round trip, the stream trimmed to about ARGV[1] entries.
_APPEND_AUDIT = """
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'entry', ARGV[i])
end
return #ARGV - 1
"""
# Audit lines per script call: one call keeps Redis busy for about a millisecond.
AUDIT_BATCH = 1000

# Fail fast: a store that does not answer within this many seconds is down,
# and the client gets 503 rather than a hang.
STORE_TIMEOUT = 1.0
# Connections per gateway process; a request beyond them waits (up to
# STORE_TIMEOUT) instead of failing, as redis-py's default pool would.
MAX_CONNECTIONS = 64
# The audit stream keeps about this many entries (XADD MAXLEN ~).
AUDIT_LENGTH = 100_000
# A silent catalogue subscription is pinged this often, and given up when a whole interval
# passes without the answer: a Redis gone without a reset is noticed within twice this.
WATCH_PING_INTERVAL = 30.0
# Wait between attempts to subscribe again after the subscription was lost.
WATCH_RETRY_DELAY = 1.0


class RedisSessionStore:
    def __init__(self, url: str, key_prefix: str) -> None:
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=STORE_TIMEOUT,
            decode_responses=True,
            socket_timeout=STORE_TIMEOUT,
            socket_connect_timeout=STORE_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        self._prefix = key_prefix
        self._hot = _PipelinedConnection(url)

    def _key(self, session_id: str) -> str:
        return f"{self._prefix}session:{session_id}"

    def _backend_index(self, target: str, backend: str) -> str:
        return f"{self._prefix}backend_sessions:{target}|{backend}"

    async def create(self, record: SessionRecord, ttl: float) -> None:
        await self._replace(record, ttl, record.created_at)

    async def touch(self, session_id: str, now: float, ttl: float) -> SessionRecord | None:
        fields = await self._hot.eval_script(
            _TOUCH,
            [self._key(session_id)],
            [repr(now), str(int(ttl * 1000)), f"{self._prefix}backend_sessions:", repr(now + ttl), session_id],
        )
        if not fields:
            return None
        decoded = [field.decode() for field in fields]
        record = SessionRecord.from_fields(dict(zip(decoded[::2], decoded[1::2], strict=True)))
        record.last_seen = now  # the script read the record before it slid it
        return record

    async def replace_backend(self, record: SessionRecord, ttl: float) -> None:
        await self._replace(record, ttl, record.last_seen)

    async def _replace(self, record: SessionRecord, ttl: float, now: float) -> None:
        async def write() -> Any:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._key(record.id))
                pipe.hset(self._key(record.id), mapping=dict(record.to_fields()))  # type: ignore[arg-type]
                pipe.pexpire(self._key(record.id), int(ttl * 1000))
                pipe.zadd(self._backend_index(record.target, record.backend), {record.id: now + ttl})
                return await pipe.execute()

        await _call(write)

    async def delete(self, session_id: str) -> SessionRecord | None:
        async def take() -> Any:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(self._key(session_id))
                pipe.delete(self._key(session_id))
                return await pipe.execute()

        fields, _ = await _call(take)
        if not fields:
            return None
        record = SessionRecord.from_fields(fields)
        await _call(lambda: self._redis.zrem(self._backend_index(record.target, record.backend), session_id))
        return record

    async def count_by_backend(self, target: str, backends: list[str], now: float) -> dict[str, int]:
        async def count() -> Any:
            async with self._redis.pipeline(transaction=False) as pipe:
                for backend in backends:
                    key = self._backend_index(target, backend)
                    pipe.zremrangebyscore(key, "-inf", now)
                    pipe.zcard(key)
                return await pipe.execute()

        results = await _call(count)
        return {backend: int(results[2 * i + 1]) for i, backend in enumerate(backends)}

    async def get(self, session_id: str) -> SessionRecord | None:
        fields: Any = await _call(lambda: self._redis.hgetall(self._key(session_id)))
        return SessionRecord.from_fields(fields) if fields else None

    async def sessions(self, target: str, backends: list[str], now: float, limit: int) -> list[SessionRecord]:
        async def newest_ids() -> Any:
            async with self._redis.pipeline(transaction=False) as pipe:
                for backend in backends:
                    # Scores are expiry times: the highest were used last.
                    pipe.zrevrangebyscore(self._backend_index(target, backend), "+inf", now, start=0, num=limit)
                return await pipe.execute()

        ids = [session_id for found in await _call(newest_ids) for session_id in found]

        async def read() -> Any:
            async with self._redis.pipeline(transaction=False) as pipe:
                for session_id in ids:
                    pipe.hgetall(self._key(session_id))
                return await pipe.execute()

        records = [SessionRecord.from_fields(fields) for fields in await _call(read) if fields]
        records.sort(key=lambda r: r.last_seen, reverse=True)
        return records[:limit]

    def _tools_key(self, target: str) -> str:
        return f"{self._prefix}tools:{target}"

    def _tools_version_key(self, target: str) -> str:
        return f"{self._prefix}tools_version:{target}"

    def _tools_channel(self) -> str:
        return f"{self._prefix}tools_changed"

    async def tool_entries(self, target: str) -> StoredCatalogue:
        async def read() -> Any:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(self._tools_version_key(target))
                pipe.hgetall(self._tools_key(target))
                return await pipe.execute()

        version, entries = await _call(read)
        return StoredCatalogue(int(version or 0), dict(entries))

    async def put_tool_entries(self, target: str, entries: dict[str, str], removed: Collection[str] = ()) -> int:
        keys = [self._tools_key(target), self._tools_version_key(target)]
        pairs = [part for name, entry in entries.items() for part in (name, entry)]
        args = [self._tools_channel(), target, str(len(entries)), *pairs, *removed]
        version: Any = await _call(lambda: self._redis.eval(_PUT_TOOLS, len(keys), *keys, *args))
        return int(version)

    async def catalogue_changes(self, targets: list[str]) -> AsyncGenerator[tuple[str, int], None]:
        lost = False
        while True:
            try:
                async with contextlib.aclosing(self._watch_catalogues(targets)) as changes:
                    async for change in changes:
                        if lost:
                            log.warning("catalogue change notifications resumed")
                            lost = False
                        yield change
            except (RedisError, OSError) as exc:
                if not lost:  # once per outage, not once per attempt
                    log.warning("catalogue change notifications lost (%s); subscribing again", type(exc).__name__)
                lost = True
            await asyncio.sleep(WATCH_RETRY_DELAY)

    async def _watch_catalogues(self, targets: list[str]) -> AsyncGenerator[tuple[str, int], None]:
        wanted = set(targets)
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self._tools_channel())
            # Writes made while nobody here listened went unannounced: compare every version once.
            versions = await self._redis.mget([self._tools_version_key(t) for t in targets]) if targets else []
            for target, version in zip(targets, versions, strict=True):
                yield target, int(version or 0)
            pinged = False
            while True:
                message = await pubsub.get_message(timeout=WATCH_PING_INTERVAL)
                if message is None:
                    if pinged:
                        raise RedisConnectionError("the subscription did not answer a ping")
                    await pubsub.ping()
                    pinged = True
                    continue
                pinged = False
                if message["type"] != "message":
                    continue
                version, _, target = str(message["data"]).partition(" ")
                if target in wanted and version.isdigit():
                    yield target, int(version)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def append_audit(self, entries: list[str]) -> None:
        # On the hot connection: redis-py's cost per command, times every audited call, was a tenth
        # of the gateway's CPU under load.
        for start in range(0, len(entries), AUDIT_BATCH):
            batch = entries[start : start + AUDIT_BATCH]
            await self._hot.eval_script(_APPEND_AUDIT, [f"{self._prefix}audit"], [str(AUDIT_LENGTH), *batch])

    async def audit_tail(self, count: int) -> list[str]:
        if count <= 0:
            return []
        latest: Any = await _call(lambda: self._redis.xrevrange(f"{self._prefix}audit", count=count))
        return [str(fields["entry"]) for _, fields in reversed(latest)]

    async def get_value(self, key: str) -> str | None:
        value: Any = await _call(lambda: self._redis.get(f"{self._prefix}{key}"))
        return None if value is None else str(value)

    async def put_value(self, key: str, value: str, ttl: float) -> None:
        await _call(lambda: self._redis.set(f"{self._prefix}{key}", value, px=int(ttl * 1000)))

    async def claim_value(self, key: str, value: str, ttl: float) -> str:
        async def claim() -> Any:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(f"{self._prefix}{key}", value, px=int(ttl * 1000), nx=True)
                pipe.get(f"{self._prefix}{key}")
                return await pipe.execute()

        _, held = await _call(claim)
        return str(held)

    async def add(self, key: str, amount: int, ttl: float) -> int:
        async def add() -> Any:
            async with self._redis.pipeline(transaction=True) as pipe:
                # Created with its lifetime on first use (SET NX works on every Redis version).
                pipe.set(f"{self._prefix}{key}", 0, px=int(ttl * 1000), nx=True)
                pipe.incrby(f"{self._prefix}{key}", amount)
                return await pipe.execute()

        _, total = await _call(add)
        return int(total)

    async def add_many(self, amounts: Sequence[tuple[str, int]], ttl: float) -> list[int]:
        keys = [f"{self._prefix}{key}" for key, _ in amounts]
        totals = await self._hot.eval_script(_ADD_MANY, keys, [str(int(ttl * 1000)), *(str(n) for _, n in amounts)])
        return [int(total) for total in totals]

    async def ping(self) -> None:
        await _call(self._redis.ping)

    async def close(self) -> None:
        self._hot.close()
        await self._redis.aclose()


async def _call(operation: Callable[[], Awaitable[T]]) -> T:
    try:
        return await operation()
    except (RedisError, OSError) as exc:
        raise StoreUnavailable("Session store unavailable") from exc


class _PipelinedConnection:
    """One connection for the per-request script call: pipelined, replies parsed by hiredis.

    redis-py spends ~120 µs of CPU on each command, more than the rest of the
    gateway's hot path together; this costs ~16 µs. Every other store operation
    goes through redis-py. Any failure closes the connection and fails every
    call waiting on it; the next call reconnects.
    """

    def __init__(self, url: str) -> None:
        options = parse_url(url)
        self._socket_path: str | None = options.get("path")  # unix:// URLs
        self._host: str = options.get("host", "127.0.0.1")
        self._port: int = options.get("port", 6379)
        self._ssl = ssl.create_default_context() if options.get("connection_class") is SSLConnection else None
        self._setup: list[list[str]] = []
        if options.get("password") is not None:
            self._setup.append(
                ["AUTH", *([options["username"]] if options.get("username") else []), options["password"]]
            )
        if options.get("db"):
            self._setup.append(["SELECT", str(options["db"])])
        self._protocol: _RespProtocol | None = None
        self._connecting: asyncio.Future[_RespProtocol] | None = None

    async def eval_script(self, script: str, keys: list[str], args: list[str]) -> Any:
        sha = _sha1(script)
        reply = await self._call(["EVALSHA", sha, str(len(keys)), *keys, *args])
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            reply = await self._call(["EVAL", script, str(len(keys)), *keys, *args])
        if isinstance(reply, hiredis.ReplyError):
            raise StoreUnavailable("Session store refused the request") from reply
        return reply

    async def _call(self, command: list[str]) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        return await protocol.call(command)

    async def _connect(self) -> _RespProtocol:
        """The one connection attempt every caller waits on: all of them fail within one
        STORE_TIMEOUT when it fails, rather than each trying in turn."""
        if self._connecting is None:
            connecting = self._connecting = asyncio.ensure_future(self._open())
            connecting.add_done_callback(self._opened)
        return await asyncio.shield(self._connecting)

    def _opened(self, connecting: asyncio.Future[_RespProtocol]) -> None:
        self._connecting = None
        if not connecting.cancelled() and connecting.exception() is None:
            self._protocol = connecting.result()

    async def _open(self) -> _RespProtocol:
        loop = asyncio.get_running_loop()
        protocol: _RespProtocol | None = None
        try:
            async with asyncio.timeout(STORE_TIMEOUT):
                if self._socket_path is not None:
                    _, protocol = await loop.create_unix_connection(_RespProtocol, self._socket_path)
                else:
                    _, protocol = await loop.create_connection(_RespProtocol, self._host, self._port, ssl=self._ssl)
                for command in self._setup:
                    if isinstance(await protocol.call(command), hiredis.ReplyError):
                        raise StoreUnavailable("Session store refused the connection")
        except BaseException as exc:
            if protocol is not None:
                protocol.close()
            if isinstance(exc, (TimeoutError, OSError)):
                raise StoreUnavailable("Session store unavailable") from exc
            raise
        return protocol

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol.close()


class _RespProtocol(asyncio.Protocol):
    """One Redis connection: commands written in order, replies matched in order."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader()
        self._pending: deque[asyncio.Future[Any]] = deque()
        self.lost = False

    async def call(self, command: list[str]) -> Any:
        if self.lost or self._transport is None:
            raise StoreUnavailable("Session store unavailable")
        data = _encode(command)  # before the reply is awaited: a command that cannot be sent takes none
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(future)
        self._transport.write(data)
        timer = asyncio.get_running_loop().call_later(STORE_TIMEOUT, self._timed_out, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _timed_out(self, future: asyncio.Future[Any]) -> None:
        if not future.done():
            self.close()  # later replies would no longer line up with their callers

    def close(self) -> None:
        self.lost = True
        if self._transport is not None:
            self._transport.close()
        self._fail_pending()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while self._pending and (reply := self._reader.gets()) is not False:
            future = self._pending.popleft()
            if not future.done():
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail_pending()

    def _fail_pending(self) -> None:
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(StoreUnavailable("Session store unavailable"))


_SHA1: dict[str, str] = {}


def _sha1(script: str) -> str:
    sha = _SHA1.get(script)
    if sha is None:
        sha = _SHA1[script] = hashlib.sha1(script.encode()).hexdigest()
    return sha


def _encode(command: list[str]) -> bytes:
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        # A lone surrogate (a token's subject may hold one) becomes bytes no valid text encodes to:
        # its own key, never another's.
        data = arg.encode("utf-8", "surrogatepass")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)
