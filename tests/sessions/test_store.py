"""The SessionStore protocol, held to the same behaviour by memory and a real Redis."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agentgw.errors import StoreUnavailable
from agentgw.sessions.memory import MemorySessionStore
from agentgw.sessions.redis import RedisSessionStore
from agentgw.sessions.store import SessionRecord, SessionStore, StoredCatalogue, new_session_id
from tests.support import poll


def record(now: float, backend: str = "http://127.0.0.1:1/mcp", target: str = "docs") -> SessionRecord:
    return SessionRecord(
        id=new_session_id(),
        target=target,
        backend=backend,
        protocol_version="2025-11-25",
        created_at=now,
        last_seen=now,
        backend_session_id="backend-id",
        issuer="https://issuer.test",
        subject="alice",
        scopes=["read:documents", "write:email"],
        initialize='{"jsonrpc":"2.0","id":1,"method":"initialize"}',
    )


def test_session_ids_carry_at_least_128_random_bits() -> None:
    ids = {new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) >= 22 for i in ids)


async def test_a_created_record_reads_back_whole(store: SessionStore) -> None:
    now = time.time()
    created = record(now)
    await store.create(created, ttl=60)
    touched = await store.touch(created.id, now + 1, ttl=60)
    assert touched is not None
    assert touched.last_seen == now + 1
    created.last_seen = now + 1
    assert touched == created


async def test_unknown_id_reads_nothing(store: SessionStore) -> None:
    assert await store.touch("unknown", time.time(), ttl=60) is None
    assert await store.delete("unknown") is None


async def test_delete_ends_a_session(store: SessionStore) -> None:
    now = time.time()
    created = record(now)
    await store.create(created, ttl=60)
    assert (await store.delete(created.id)) is not None
    assert await store.touch(created.id, now, ttl=60) is None


async def test_touch_slides_the_lifetime(store: SessionStore) -> None:
    # Real time passes here, since Redis expires keys on its own clock.
    created = record(time.time())
    await store.create(created, ttl=0.6)
    for _ in range(4):
        time.sleep(0.3)
        assert await store.touch(created.id, time.time(), ttl=0.6) is not None
    time.sleep(0.8)
    assert await store.touch(created.id, time.time(), ttl=0.6) is None


async def test_counts_live_sessions_per_backend(store: SessionStore) -> None:
    now = time.time()
    backends = ["http://127.0.0.1:1/mcp", "http://127.0.0.1:2/mcp"]
    for _ in range(3):
        await store.create(record(now, backends[0]), ttl=60)
    ended = record(now, backends[1])
    await store.create(ended, ttl=60)
    await store.create(record(now, backends[1], target="other"), ttl=60)
    assert await store.count_by_backend("docs", backends, now) == {backends[0]: 3, backends[1]: 1}
    await store.delete(ended.id)
    assert await store.count_by_backend("docs", backends, now) == {backends[0]: 3, backends[1]: 0}
    assert await store.count_by_backend("docs", backends, now + 61) == {backends[0]: 0, backends[1]: 0}


async def test_replace_backend_moves_the_session(store: SessionStore) -> None:
    now = time.time()
    moved = record(now)
    await store.create(moved, ttl=60)
    moved.backend, moved.backend_session_id = "http://127.0.0.1:2/mcp", "new-backend-id"
    await store.replace_backend(moved, ttl=60)
    touched = await store.touch(moved.id, now, ttl=60)
    assert touched is not None
    assert (touched.backend, touched.backend_session_id) == ("http://127.0.0.1:2/mcp", "new-backend-id")


async def test_memory_store_stays_bounded_under_churn() -> None:
    store = MemorySessionStore(max_sessions=100)
    now = time.time()
    for i in range(10_000):
        await store.create(record(now + i * 0.001), ttl=3600)
    assert len(store._records) == 100
    counts = await store.count_by_backend("docs", ["http://127.0.0.1:1/mcp"], now)
    assert counts == {"http://127.0.0.1:1/mcp": 100}


async def test_memory_store_forgets_expired_sessions_as_new_ones_arrive() -> None:
    store = MemorySessionStore(max_sessions=1000)
    now = time.time()
    for _ in range(500):
        await store.create(record(now), ttl=1)
    await store.create(record(now + 2), ttl=1)
    assert len(store._records) == 1


async def test_unreachable_redis_raises_store_unavailable_quickly(dead_port: int) -> None:
    store = RedisSessionStore.for_url(f"redis://127.0.0.1:{dead_port}/0", "x:")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.touch("anything", time.time(), ttl=60)
    with pytest.raises(StoreUnavailable):
        await store.ping()
    assert time.monotonic() - started < 3
    await store.close()


async def test_redis_url_password_and_database_are_honoured(tmp_path: Path) -> None:
    import redis.asyncio as aioredis

    from tests.support import started_redis

    server = started_redis(tmp_path / "redis.log", "--requirepass", "s3cret")
    port = server.port
    try:
        store = RedisSessionStore.for_url(f"redis://:s3cret@127.0.0.1:{port}/3", "auth:")
        now = time.time()
        created = record(now)
        await store.create(created, ttl=60)
        assert (await store.touch(created.id, now, ttl=60)) == created
        await store.close()
        # The record landed in database 3, where both of the store's connections looked.
        check = aioredis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{port}/3")
        assert await check.exists(store._key(created.id)) == 1
        await check.aclose()

        wrong = RedisSessionStore.for_url(f"redis://:wrong@127.0.0.1:{port}/3", "auth:")
        with pytest.raises(StoreUnavailable):
            await wrong.touch(created.id, now, ttl=60)
        await wrong.close()
    finally:
        server.stop()


async def test_catalogue_writes_bump_one_version_and_remove_what_they_name(store: SessionStore) -> None:
    assert await store.tool_entries("docs") == StoredCatalogue(0, {})
    first = await store.put_tool_entries("docs", {"a": "1", "b": "2"})
    second = await store.put_tool_entries("docs", {"c": "3", "b": "4"}, removed=["a", "never-there"])
    assert second == first + 1
    assert await store.tool_entries("docs") == StoredCatalogue(second, {"b": "4", "c": "3"})
    assert await store.tool_entries("mail") == StoredCatalogue(0, {})


async def test_the_memory_store_announces_no_catalogue_changes() -> None:
    # One process writes it: the catalogue already holds every change, and watching ends at once.
    store = MemorySessionStore(max_sessions=10)
    await store.put_tool_entries("docs", {"a": "1"})
    assert [change async for change in store.catalogue_changes(["docs"])] == []


async def test_redis_announces_catalogue_writes_and_catches_up_after_losing_the_subscription(
    redis_url: str,
) -> None:
    import redis.asyncio as aioredis

    prefix = f"changes-{time.monotonic_ns()}:"
    watcher, writer = RedisSessionStore.for_url(redis_url, prefix), RedisSessionStore.for_url(redis_url, prefix)
    admin = aioredis.Redis.from_url(redis_url, decode_responses=True)
    changes = watcher.catalogue_changes(["docs", "mail"])

    async def next_change() -> tuple[str, int]:
        return await asyncio.wait_for(anext(changes), timeout=5)

    try:
        assert [await next_change(), await next_change()] == [("docs", 0), ("mail", 0)]
        docs = await writer.put_tool_entries("docs", {"a": "1"})
        await writer.put_tool_entries("unwatched", {"a": "1"})
        assert await next_change() == ("docs", docs)
        # The watcher's own answer comes from Redis, so it hears its own writes as well.
        again = await watcher.put_tool_entries("docs", {"a": "2"})
        assert await next_change() == ("docs", again)

        assert await admin.client_kill_filter(_type="pubsub") >= 1

        async def nobody_listens() -> bool:
            numsub = await admin.pubsub_numsub(f"{prefix}tools_changed")
            return bool(numsub[0][1] == 0)

        await poll(nobody_listens, timeout=5, interval=0.01)
        mail = await writer.put_tool_entries("mail", {"b": "1"})  # announced to nobody
        # Subscribed again, the watcher compares every version once: the missed write is found.
        assert {await next_change(), await next_change()} == {("docs", again), ("mail", mail)}
    finally:
        await changes.aclose()
        await admin.aclose()
        await watcher.close()
        await writer.close()


async def test_add_many_adds_to_each_counter_and_answers_every_total(store: SessionStore) -> None:
    requests, tokens = f"requests-{time.monotonic_ns()}", f"tokens-{time.monotonic_ns()}"
    assert await store.add_many([(requests, 1), (tokens, 0)], ttl=60) == [1, 0]
    assert await store.add_many([(tokens, 12)], ttl=60) == [12]
    assert await store.add_many([(requests, 1), (tokens, 0)], ttl=60) == [2, 12]
    assert await store.add(requests, 3, ttl=60) == 5  # the same counters as `add`
    assert await store.add_many([], ttl=60) == []


async def test_add_many_counters_end_with_their_lifetime_from_first_use(store: SessionStore) -> None:
    # Real time passes here, since Redis expires keys on its own clock.
    counter = f"counter-{time.monotonic_ns()}"
    assert await store.add_many([(counter, 4)], ttl=0.3) == [4]
    assert await store.add_many([(counter, 1)], ttl=60) == [5]  # a later use does not extend it

    async def started_again() -> bool:
        return await store.add_many([(counter, 0)], ttl=0.3) == [0]

    assert await poll(started_again, timeout=5, interval=0.05)
