"""Redis session store: every gateway process sharing the Redis sees every session."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from agentgw.errors import StoreUnavailable
from agentgw.sessions.store import SessionRecord

T = TypeVar("T")

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

# Fail fast: a store that does not answer within this many seconds is down,
# and the client gets 503 rather than a hang.
STORE_TIMEOUT = 1.0
# Connections per gateway process; a request beyond them waits (up to
# STORE_TIMEOUT) instead of failing, as redis-py's default pool would.
MAX_CONNECTIONS = 64


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
        self._touch = self._redis.register_script(_TOUCH)

    def _key(self, session_id: str) -> str:
        return f"{self._prefix}session:{session_id}"

    def _backend_index(self, target: str, backend: str) -> str:
        return f"{self._prefix}backend_sessions:{target}|{backend}"

    async def create(self, record: SessionRecord, ttl: float) -> None:
        await self._replace(record, ttl, record.created_at)

    async def touch(self, session_id: str, now: float, ttl: float) -> SessionRecord | None:
        fields = await _call(
            lambda: self._touch(
                keys=[self._key(session_id)],
                args=[now, int(ttl * 1000), f"{self._prefix}backend_sessions:", now + ttl, session_id],
            )
        )
        if not fields:
            return None
        record = SessionRecord.from_fields(dict(zip(fields[::2], fields[1::2])))
        record.last_seen = now  # the script read the record before it slid it
        return record

    async def replace_backend(self, record: SessionRecord, ttl: float) -> None:
        await self._replace(record, ttl, record.last_seen)

    async def _replace(self, record: SessionRecord, ttl: float, now: float) -> None:
        async def write() -> Any:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._key(record.id))
                pipe.hset(self._key(record.id), mapping=record.to_fields())
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

    async def ping(self) -> None:
        await _call(self._redis.ping)

    async def close(self) -> None:
        await self._redis.aclose()


async def _call(operation: Callable[[], Awaitable[T]]) -> T:
    try:
        return await operation()
    except (RedisError, OSError) as exc:
        raise StoreUnavailable("Session store unavailable") from exc
