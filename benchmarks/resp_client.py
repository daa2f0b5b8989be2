"""The store's per-request round trip through our RESP client and through redis-py: a measurement, not a test.

`RedisSessionStore.touch`, the one store call of every MCP request, is one EVALSHA of the touch
script. This sends that EVALSHA, with touch's keys and arguments, to a redis-server started here
on 127.0.0.1, through `OneServer` in sessions/resp.py (ours: one pipelined connection, hiredis replies)
and through the store's own redis-py client (redis.asyncio.Redis on its BlockingConnectionPool of
64, hiredis parser), one caller at a time and 64 callers at once. Each run stops at --count calls
or --seconds, whichever comes first. Client CPU is this process's CPU time per call (redis-server
runs apart); on a shared machine, ops/s move with the neighbours, CPU per call much less.

    .venv/bin/python benchmarks/resp_client.py [--seconds 2] [--count 50000] [--loop uvloop|asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentgw.sessions.redis import _TOUCH, RedisSessionStore, _shard  # noqa: E402
from agentgw.sessions.resp import _sha1  # noqa: E402
from agentgw.sessions.store import SessionRecord, new_session_id  # noqa: E402
from tests.support import Process, free_port, redis_process  # noqa: E402

SESSIONS = 1000  # touched in turn, as many clients' requests would
TTL = 3600.0
CONCURRENT = 64  # the store's redis-py pool size: every caller there gets a connection of its own
WARM_UP = 500
START_ATTEMPTS = 5

Call = Callable[[int], Awaitable[Any]]


@dataclass
class Run:
    calls: int
    seconds: float
    cpu_seconds: float

    @property
    def per_second(self) -> float:
        return self.calls / self.seconds

    @property
    def cpu_micros_per_call(self) -> float:
        return 1e6 * self.cpu_seconds / self.calls


def start_redis() -> Process:
    for _ in range(START_ATTEMPTS):
        server = redis_process(free_port())
        try:
            return server.start()
        except RuntimeError:  # exited before listening: the port was taken meanwhile
            continue
    sys.exit(f"no redis-server started in {START_ATTEMPTS} attempts")


async def measure(call: Call, callers: int, count: int, seconds: float) -> Run:
    """`callers` loops sharing `count` calls, stopped early at `seconds`."""
    issued = 0
    deadline = time.monotonic() + seconds

    async def caller() -> None:
        nonlocal issued
        while issued < count and time.monotonic() < deadline:
            issued += 1
            await call(issued)

    cpu, started = time.process_time(), time.monotonic()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return Run(issued, time.monotonic() - started, time.process_time() - cpu)


async def benchmark(count: int, seconds: float) -> None:
    server = start_redis()
    prefix = f"bench-{uuid.uuid4().hex}:"
    store = RedisSessionStore.for_url(f"redis://127.0.0.1:{server.port}/0", prefix)
    try:
        now = time.time()
        ids = [new_session_id() for _ in range(SESSIONS)]
        for session_id in ids:
            record = SessionRecord(session_id, "docs", "http://127.0.0.1:1/mcp", "2025-11-25", now, now)
            await store.create(record, TTL)

        def touch_arguments(i: int) -> tuple[str, list[str]]:
            """What `RedisSessionStore.touch` sends for the i-th call: its key and script arguments."""
            session_id = ids[i % SESSIONS]
            at = time.time()
            index_prefix = store._index_prefix(_shard(session_id))
            args = [repr(at), str(int(TTL * 1000)), index_prefix, repr(at + TTL), session_id]
            return store._key(session_id), args

        async def ours(i: int) -> Any:
            key, args = touch_arguments(i)
            return await store._hot.eval_script(_TOUCH, [key], args)

        sha = _sha1(_TOUCH)

        async def redis_py(i: int) -> Any:
            key, args = touch_arguments(i)
            return await store._redis.evalsha(sha, 1, key, *args)  # type: ignore[no-untyped-call]

        clients: dict[str, Call] = {"ours": ours, "redis-py": redis_py}
        for call in clients.values():  # loads the script, opens the connections, checks the answer
            assert len(await call(0)) == 14, "touch read back a whole record"
            await measure(call, CONCURRENT, WARM_UP, seconds)

        print(f"touch EVALSHA on 127.0.0.1, redis-server {server.port}; at most {count} calls or {seconds}s per run")
        for callers in (1, CONCURRENT):
            runs = {name: await measure(call, callers, count, seconds) for name, call in clients.items()}
            for name, run in runs.items():
                print(
                    f"  {name:<8} callers={callers:<3} calls={run.calls:<7} {run.per_second:>9.0f} ops/s"
                    f"  client CPU {run.cpu_micros_per_call:6.1f} µs/call"
                )
            ratio = runs["ours"].per_second / runs["redis-py"].per_second
            cpu_ratio = runs["redis-py"].cpu_micros_per_call / runs["ours"].cpu_micros_per_call
            print(f"  callers={callers}: ours/redis-py = {ratio:.2f}x ops/s, {cpu_ratio:.2f}x less client CPU per call")
    finally:
        await store.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="longest run of one client at one concurrency")
    parser.add_argument("--count", type=int, default=50_000, help="most calls of one client at one concurrency")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop", help="agentgw serves on uvloop")
    options = parser.parse_args()
    if options.loop == "uvloop":
        import uvloop

        uvloop.run(benchmark(options.count, options.seconds))
    else:
        asyncio.run(benchmark(options.count, options.seconds))


if __name__ == "__main__":
    main()
