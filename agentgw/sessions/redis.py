"""Redis session store: every gateway process sharing the Redis sees every session.

One server, a Sentinel-watched master or a cluster (contract 17). The hot path's one script call
per request goes through the gateway's own client (`sessions/resp.py`); everything else through
redis-py's client for the same topology. Every key one request touches shares a hash tag, so a
cluster serves it from one slot: a session's record and its place in the per-backend index share
the session's shard (one of SHARDS), a target's catalogue and its version share the target's name,
and a caller's rate-limit counters share a digest of what they count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, SSLConnection, parse_url
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

from agentgw.background import in_background
from agentgw.config import SessionStoreConfig
from agentgw.errors import StoreUnavailable
from agentgw.sessions.resp import (
    STORE_TIMEOUT,
    ClusterSlots,
    HotPath,
    Login,
    OneServer,
    SentinelMaster,
    Server,
)
from agentgw.sessions.store import SessionRecord, StoredCatalogue

T = TypeVar("T")

log = logging.getLogger("agentgw.sessions")

# Reads the record, slides its lifetime and its place in the per-backend
# index in one round trip: the hot path's only store call.
_SLIDE = """
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return fields end
redis.call('HSET', KEYS[1], 'last_seen', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local target, backend
for i = 1, #fields, 2 do
  if fields[i] == 'target' then target = fields[i + 1] elseif fields[i] == 'backend' then backend = fields[i + 1] end
end
redis.call('ZADD', ARGV[3] .. target .. '|' .. backend, ARGV[4], ARGV[5])
"""
_TOUCH = _SLIDE + "return fields\n"

# `_TOUCH`, and the client's answers to server-to-client requests taken from the session's set of
# requests awaiting one (KEYS[2], the same slot): the ids it did not hold come back beside the record.
_TOUCH_ANSWERING = (
    _SLIDE
    + """local unasked = {}
for i = 6, #ARGV do
  if redis.call('SREM', KEYS[2], ARGV[i]) == 0 then unasked[#unasked + 1] = ARGV[i] end
end
return {fields, unasked}
"""
)

# Requests the client was sent, each to be answered once; only for a live session, and bounded.
_EXPECT_ANSWERS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('SCARD', KEYS[2]) + #ARGV - 1 > tonumber(ARGV[1]) then return 0 end
for i = 2, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
redis.call('PEXPIRE', KEYS[2], redis.call('PTTL', KEYS[1]))
return 1
"""
# Server-to-client requests awaiting the client's answer, per session; beyond it, answers are refused.
MAX_ASKED = 1000

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

# Sessions are spread over this many hash tags: a cluster spreads them over its nodes, and a count
# of one backend's sessions reads this many index keys.
SHARDS = 16
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
    def __init__(self, redis: aioredis.Redis | RedisCluster, hot: HotPath, key_prefix: str) -> None:
        self._redis = redis
        self._hot = hot
        self._prefix = key_prefix

    @classmethod
    def for_url(cls, url: str, key_prefix: str) -> RedisSessionStore:
        """`type: redis`: the one server of `url` (credentials and database in it)."""
        pool = BlockingConnectionPool.from_url(url, **_POOL_OPTIONS)
        return cls(aioredis.Redis(connection_pool=pool), one_server(url), key_prefix)

    @classmethod
    def for_config(cls, config: SessionStoreConfig, env: Mapping[str, str]) -> RedisSessionStore:
        """Any Redis type of `session_store`, with its `username`, `password_env` and `tls`."""
        password = env.get(config.password_env) if config.password_env else None
        if config.password_env and not password:
            log.warning("session_store.password_env names %s, which is not set", config.password_env)
        if config.type == "redis":
            url = _with_login(config.url, config.username, password, config.tls)
            return cls.for_url(url, config.key_prefix)
        login = Login(config.username, password)
        credentials: dict[str, Any] = {"username": config.username, "password": password, "ssl": config.tls}
        servers = [Server(host, port, tls=config.tls) for host, port in config.addresses()]
        if config.type == "redis-sentinel":
            return cls._sentinel(config, servers, login, credentials)
        nodes = [ClusterNode(server.host, server.port) for server in servers]
        cluster = RedisCluster(startup_nodes=nodes, **credentials, **_CONNECTION_OPTIONS)
        return cls(cluster, ClusterSlots(servers, login), config.key_prefix)

    @classmethod
    def _sentinel(
        cls, config: SessionStoreConfig, servers: list[Server], login: Login, credentials: dict[str, Any]
    ) -> RedisSessionStore:
        # Sentinels take the same credentials as the servers they watch (a common deployment);
        # redis-py asks them for the master on each new connection.
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            [(server.host, server.port) for server in servers],
            sentinel_kwargs={**credentials, "socket_timeout": STORE_TIMEOUT},
            **credentials,
            **_CONNECTION_OPTIONS,
        )
        redis = sentinel.master_for(config.service_name)
        hot = SentinelMaster(servers, config.service_name, login, login)

        def promoted(_: Server) -> None:
            # redis-py's connections to the old master go too: it finds the new one as it reconnects.
            in_background(redis.connection_pool.disconnect())

        hot.on_promotion.append(promoted)
        return cls(redis, hot, config.key_prefix)

    def _key(self, session_id: str) -> str:
        return f"{self._prefix}session:{{{_shard(session_id)}}}:{session_id}"

    def _index_prefix(self, shard: str) -> str:
        return f"{self._prefix}backend_sessions:{{{shard}}}:"

    def _backend_index(self, session_id: str, target: str, backend: str) -> str:
        return f"{self._index_prefix(_shard(session_id))}{target}|{backend}"

    def _backend_indexes(self, target: str, backend: str) -> list[str]:
        return [f"{self._index_prefix(shard)}{target}|{backend}" for shard in _SHARD_TAGS]

    async def create(self, record: SessionRecord, ttl: float) -> None:
        await self._replace(record, ttl, record.created_at)

    async def touch(self, session_id: str, now: float, ttl: float) -> SessionRecord | None:
        fields = await self._hot.eval_script(
            _TOUCH,
            [self._key(session_id)],
            [repr(now), str(int(ttl * 1000)), self._index_prefix(_shard(session_id)), repr(now + ttl), session_id],
        )
        if not fields:
            return None
        decoded = [field.decode() for field in fields]
        record = SessionRecord.from_fields(dict(zip(decoded[::2], decoded[1::2], strict=True)))
        record.last_seen = now  # the script read the record before it slid it
        return record

    async def touch_answering(
        self, session_id: str, now: float, ttl: float, answer_ids: list[str]
    ) -> tuple[SessionRecord | None, list[str]]:
        keys = [self._key(session_id), self._asked_key(session_id)]
        args = [repr(now), str(int(ttl * 1000)), self._index_prefix(_shard(session_id)), repr(now + ttl), session_id]
        reply = await self._hot.eval_script(_TOUCH_ANSWERING, keys, [*args, *answer_ids])
        if not reply or not reply[0]:
            return None, list(answer_ids)
        fields, unasked = reply
        decoded = [field.decode() for field in fields]
        record = SessionRecord.from_fields(dict(zip(decoded[::2], decoded[1::2], strict=True)))
        record.last_seen = now
        return record, [answer.decode() for answer in unasked]

    async def expect_answers(self, session_id: str, request_ids: list[str]) -> None:
        keys = [self._key(session_id), self._asked_key(session_id)]
        await _call(lambda: self._redis.eval(_EXPECT_ANSWERS, 2, *keys, str(MAX_ASKED), *request_ids))

    def _asked_key(self, session_id: str) -> str:
        return f"{self._prefix}asked:{{{_shard(session_id)}}}:{session_id}"

    async def replace_backend(self, record: SessionRecord, ttl: float) -> None:
        await self._replace(record, ttl, record.last_seen)

    async def _replace(self, record: SessionRecord, ttl: float, now: float) -> None:
        async def write() -> Any:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._key(record.id))
                pipe.hset(self._key(record.id), mapping=dict(record.to_fields()))  # type: ignore[arg-type]
                pipe.pexpire(self._key(record.id), int(ttl * 1000))
                pipe.zadd(self._backend_index(record.id, record.target, record.backend), {record.id: now + ttl})
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
        index = self._backend_index(session_id, record.target, record.backend)
        await _call(lambda: self._redis.zrem(index, session_id))
        return record

    async def count_by_backend(self, target: str, backends: list[str], now: float) -> dict[str, int]:
        async def count() -> Any:
            async with self._redis.pipeline(transaction=False) as pipe:
                for backend in backends:
                    for key in self._backend_indexes(target, backend):
                        pipe.zremrangebyscore(key, "-inf", now)
                        pipe.zcard(key)
                return await pipe.execute()

        results = await _call(count)
        per_backend = 2 * SHARDS
        return {
            backend: sum(int(n) for n in results[i * per_backend + 1 : (i + 1) * per_backend : 2])
            for i, backend in enumerate(backends)
        }

    async def get(self, session_id: str) -> SessionRecord | None:
        fields: Any = await _call(lambda: self._redis.hgetall(self._key(session_id)))
        return SessionRecord.from_fields(fields) if fields else None

    async def sessions(self, target: str, backends: list[str], now: float, limit: int) -> list[SessionRecord]:
        async def newest_ids() -> Any:
            async with self._redis.pipeline(transaction=False) as pipe:
                for backend in backends:
                    for key in self._backend_indexes(target, backend):
                        # Scores are expiry times: the highest were used last.
                        pipe.zrevrangebyscore(key, "+inf", now, start=0, num=limit)
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
        return f"{self._prefix}tools:{{{target}}}"

    def _tools_version_key(self, target: str) -> str:
        return f"{self._prefix}tools_version:{{{target}}}"

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
            versions = await self._versions(targets)
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

    async def _versions(self, targets: list[str]) -> list[Any]:
        """Each target's catalogue version: one GET each, as the keys may sit on several cluster nodes."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for target in targets:
                pipe.get(self._tools_version_key(target))
            return list(await pipe.execute())

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


# Fail fast: a request gets its 503 within STORE_TIMEOUT, and the next one finds the server (or
# the master, or the slot map) anew.
_CONNECTION_OPTIONS: dict[str, Any] = {
    "max_connections": MAX_CONNECTIONS,
    "decode_responses": True,
    "socket_timeout": STORE_TIMEOUT,
    "socket_connect_timeout": STORE_TIMEOUT,
    "retry": Retry(NoBackoff(), 0),
}
# One server: a request beyond MAX_CONNECTIONS waits (up to STORE_TIMEOUT) instead of failing.
_POOL_OPTIONS: dict[str, Any] = {**_CONNECTION_OPTIONS, "timeout": STORE_TIMEOUT}
_SHARD_TAGS = [f"s{shard:x}" for shard in range(SHARDS)]


def _shard(session_id: str) -> str:
    return _SHARD_TAGS[zlib.crc32(session_id.encode("utf-8", "surrogatepass")) % SHARDS]


def one_server(url: str) -> OneServer:
    """The hot path to the server of a `redis://`, `rediss://` or `unix://` URL."""
    options = parse_url(url)
    tls = options.get("connection_class") is SSLConnection
    server = Server(options.get("host", "127.0.0.1"), options.get("port", 6379), options.get("path"), tls)
    return OneServer(server, Login(options.get("username"), options.get("password"), int(options.get("db") or 0)))


def _with_login(url: str, username: str | None, password: str | None, tls: bool) -> str:
    """`url` with the configured credentials and scheme, where the config gives them."""
    from urllib.parse import quote, urlsplit, urlunsplit

    parts = urlsplit(url)
    scheme = "rediss" if tls and parts.scheme == "redis" else parts.scheme
    if username is None and password is None:
        return urlunsplit(parts._replace(scheme=scheme))
    user = quote(username or parts.username or "", safe="")
    secret = quote(password or parts.password or "", safe="")
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user}:{secret}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(scheme=scheme, netloc=netloc))


async def _call(operation: Callable[[], Awaitable[T]]) -> T:
    try:
        return await operation()
    except (RedisError, OSError) as exc:
        raise StoreUnavailable("Session store unavailable") from exc
