"""Session stores beyond one Redis (contract 17), on real topologies started on loopback: a Redis
that keeps every write (AOF), a master and a replica watched by three sentinels, a six-node
cluster. Gateways share everything the store holds on each; failovers and restarts are followed,
with every request during them answered 200 or 503 in under 2 s; one store round trip per MCP
request, counted by the servers themselves."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agentgw.config import SessionStoreConfig
from agentgw.sessions.redis import RedisSessionStore, _shard
from tests.policy.test_catalogue import replicas_share_quarantine_and_approval
from tests.redis_topologies import (
    Address,
    Cluster,
    RedisNode,
    SentinelSet,
    command_calls,
    key_slot,
    redis_cluster,
    reset_stats,
    sentinel_set,
    single_redis_with_aof,
)
from tests.support import (
    InProcessGateway,
    Process,
    gateway,
    in_process_gateway,
    initialize_body,
    mcp_headers,
    mcp_target,
    raw_call,
    raw_request,
    raw_session,
    tool_text,
)

# Each worker starts a topology once for all of this module's tests.
pytestmark = pytest.mark.xdist_group("store-topologies")

# What the contract allows a request during a failover, and a failover to be followed.
ANSWER_WITHIN = 2.0
FOLLOWED_WITHIN = 5.0
RATE_LIMIT = 8


@dataclass
class Topology:
    name: str
    store: dict[str, Any]
    redis: Any = field(repr=False)

    def masters(self) -> list[Address]:
        """Where the gateway's commands land (a replica runs them again, as it copies them)."""
        if self.name == "aof":
            return [self.redis.address]
        if self.name == "sentinel":
            return [self.redis.master()]
        return sorted({served.master for served in self.redis.settle()})

    def config(self, backends: list[Process], prefix: str, **extra: Any) -> dict[str, Any]:
        return {
            "session_store": {**self.store, "key_prefix": prefix},
            "mcp": {"targets": [mcp_target("docs", *(b.port for b in backends))]},
            **extra,
        }


@pytest.fixture(scope="module", params=["aof", "sentinel", "cluster"])
def topology(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "aof":
        with single_redis_with_aof(tmp) as node:
            yield Topology("aof", node.store_config(), node)
    elif request.param == "sentinel":
        with sentinel_set(tmp) as sentinels:
            yield Topology("sentinel", sentinels.store_config(), sentinels)
    else:
        with redis_cluster(tmp) as cluster:
            yield Topology("cluster", cluster.store_config(), cluster)


def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"


async def whoami(port: int, session_id: str) -> tuple[str, int]:
    response = await raw_call(port, session_id, "whoami", {})
    assert response.status == 200, response.body
    replica, count = tool_text(response).split()
    return replica, int(count)


@contextlib.asynccontextmanager
async def two_gateways(
    tmp: Path, config: dict[str, Any], policies: str | None = None
) -> AsyncIterator[tuple[InProcessGateway, InProcessGateway]]:
    async with (
        in_process_gateway(tmp, config, policies, name="first") as first,
        in_process_gateway(tmp, config, policies, name="second") as second,
    ):
        yield first, second


# -- what gateways share ---------------------------------------------------------------------------


async def test_sessions_and_revocations_are_shared_by_two_gateways(
    tmp: Path, topology: Topology, backends: list[Process]
) -> None:
    config = topology.config(backends, prefix(), server={"metrics_listen": "127.0.0.1:0"})
    async with two_gateways(tmp, config) as (first, second):
        sessions = [await raw_session(first.port) for _ in range(4)]  # over several shards, and cluster nodes
        for session_id in sessions:
            replica, count = await whoami(first.port, session_id)
            assert await whoami(second.port, session_id) == (replica, count + 1)
        assert first.admin_port is not None
        revoked = sessions[0]
        answer = await raw_request(
            first.admin_port, "DELETE", f"/admin/sessions/{revoked}", [("Host", f"127.0.0.1:{first.admin_port}")]
        )
        assert answer.status == 200, answer.body
        assert (await raw_call(second.port, revoked, "whoami", {})).status == 404
        assert (await raw_call(second.port, sessions[1], "whoami", {})).status == 200


async def test_rate_limit_counters_are_shared_by_two_gateways(
    tmp: Path, topology: Topology, backends: list[Process]
) -> None:
    limits = (
        "apiVersion: agentgw.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: limits}\nspec:\n"
        f"  appliesTo: [mcp]\n  defaultTier: free\n  tiers:\n    free: {{requestsPerMinute: {RATE_LIMIT}}}\n"
    )
    async with two_gateways(tmp, topology.config(backends, prefix()), limits) as (first, second):
        statuses = []
        for turn in range(RATE_LIMIT + 2):
            port = (first, second)[turn % 2].port
            answer = await raw_request(port, "POST", "/mcp/v1", mcp_headers(port), initialize_body())
            statuses.append(answer.status)
    # Counted together: the limit holds across both gateways, not per gateway.
    assert statuses == [200] * RATE_LIMIT + [429, 429]


async def test_quarantines_approvals_and_values_are_shared_by_two_stores(topology: Topology) -> None:
    shared = prefix()
    first, second = (
        RedisSessionStore.for_config(SessionStoreConfig(**topology.store, key_prefix=shared), {}) for _ in range(2)
    )
    # What A2A pins, stateless handles and approvals keep: values set by one, read and claimed by the other.
    await first.put_value("pin:task-1", "replica-a", 60)
    assert await second.get_value("pin:task-1") == "replica-a"
    assert await second.claim_value("owner:task-2", "bob", 60) == "bob"
    assert await first.claim_value("owner:task-2", "alice", 60) == "bob"
    assert await first.add("counter", 2, 60) == 2 and await second.add("counter", 3, 60) == 5
    await replicas_share_quarantine_and_approval(first, second)


# -- one round trip ---------------------------------------------------------------------------------


async def test_one_store_round_trip_per_mcp_request(tmp: Path, topology: Topology, backends: list[Process]) -> None:
    calls = 40
    async with in_process_gateway(tmp, topology.config(backends, prefix())) as gw:
        session_id = await raw_session(gw.port)
        await whoami(gw.port, session_id)  # the catalogue read and the first audit line are behind
        await asyncio.sleep(0.3)
        masters = topology.masters()
        for node in masters:
            reset_stats(node)
        for _ in range(calls):
            await whoami(gw.port, session_id)
        await asyncio.sleep(0.3)  # the last audit batch
        counted: dict[str, int] = {}
        for node in masters:
            for command, n in command_calls(node).items():
                counted[command] = counted.get(command, 0) + n
    scripts = counted.get("evalsha", 0) + counted.get("eval", 0)
    # One script per request (the session read and slid), and the audit lines in a few batches.
    assert counted.get("hgetall") == calls, counted
    assert calls <= scripts <= calls + 4, counted
    sent_alone = {c: n for c, n in counted.items() if c not in {"evalsha", "eval"} and not _run_by_scripts(c)}
    assert sent_alone == {}, counted


def _run_by_scripts(command: str) -> bool:
    """What the touch and audit scripts run inside Redis; replication and topology upkeep."""
    return command in {"hgetall", "hset", "pexpire", "zadd", "xadd"} or command.split("|")[0] in {
        "cluster",
        "replconf",
        "ping",
        "publish",
        "sentinel",
        "info",
        "role",
        "client",
        "command",
    }


# -- failovers and restarts -------------------------------------------------------------------------


@dataclass
class Load:
    """Steady requests in open sessions, each timed; what came back."""

    statuses: list[tuple[float, int, float]] = field(default_factory=list)  # (when, status, seconds)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, port: int, session_id: str) -> None:
        """One request at a time in the session: its requests all carry the same JSON-RPC id."""
        while not self.stop.is_set():
            started = time.monotonic()
            answer = await raw_call(port, session_id, "whoami", {})
            took = time.monotonic() - started
            if answer.status == 503:
                assert answer.header("retry-after") is not None
            self.statuses.append((started, answer.status, took))
            await asyncio.sleep(0.02)


async def survive(gw: InProcessGateway, sessions: list[str], disrupt: Any) -> tuple[Load, float]:
    """Load on the sessions while `disrupt` runs (in a thread: the topology helpers block), then
    until FOLLOWED_WITHIN after it returned; the load and when `disrupt` returned."""
    load = Load()
    loads = [asyncio.create_task(load.run(gw.port, session_id)) for session_id in sessions]
    try:
        await asyncio.to_thread(disrupt)
        settled = time.monotonic()
        await asyncio.sleep(FOLLOWED_WITHIN + 1.0)
    finally:
        load.stop.set()
        await asyncio.gather(*loads)
    return load, settled


def check_survived(load: Load, settled: float) -> None:
    assert load.statuses, "no request was made"
    bad = [(status, took) for _, status, took in load.statuses if status not in (200, 503) or took >= ANSWER_WITHIN]
    assert bad == [], bad
    after = [status for started, status, _ in load.statuses if started > settled + FOLLOWED_WITHIN]
    assert after and set(after) == {200}, after


def _session_slot(prefix_: str, session_id: str) -> int:
    return key_slot(f"{prefix_}session:{{{_shard(session_id)}}}:{session_id}")


async def test_a_failover_is_followed_and_every_request_answered_in_time(
    tmp: Path, topology: Topology, backends: list[Process]
) -> None:
    shared = prefix()
    async with in_process_gateway(tmp, topology.config(backends, shared)) as gw:
        sessions = [await raw_session(gw.port) for _ in range(4)]
        before = {s: await whoami(gw.port, s) for s in sessions}
        await asyncio.sleep(1.2)  # replicas have the sessions (the replica syncs every second or sooner)
        if topology.name == "sentinel":
            sentinels: SentinelSet = topology.redis
            disrupt: Any = sentinels.failover  # the old master stays writable a while: only the sentinels tell
        elif topology.name == "cluster":
            cluster: Cluster = topology.redis
            slot = _session_slot(shared, sessions[0])

            def disrupt() -> None:
                cluster.kill_master_of_slot(slot)

        else:
            node: RedisNode = topology.redis

            def disrupt() -> None:
                node.restart(signal.SIGKILL)  # AOF, appendfsync always: nothing acknowledged is lost

        try:
            load, settled = await survive(gw, sessions, disrupt)
            check_survived(load, settled)
            # The writes go to the master now serving, not to one that merely still accepts them.
            masters = topology.masters()
            for node in masters:
                reset_stats(node)
            # No session lost: each continues on its backend session, its counter climbing on.
            for session_id, (replica, count) in before.items():
                now_replica, now_count = await whoami(gw.port, session_id)
                assert now_replica == replica and now_count > count
            served = sum(command_calls(node).get("hgetall", 0) for node in masters)
            assert served == len(sessions)
        finally:
            if topology.name in ("sentinel", "cluster"):
                await asyncio.to_thread(topology.redis.revive)


# One topology is enough here: `make chaos` kills replicas under load on every type.
@pytest.mark.parametrize("topology", ["cluster"], indirect=True)
async def test_kill_9_of_a_gateway_replica_loses_no_session(
    tmp: Path, topology: Topology, backends: list[Process]
) -> None:
    config = topology.config(backends, prefix())
    first, second = gateway(tmp, config, name="first"), gateway(tmp, config, name="second")
    try:
        sessions = [await raw_session(first.port) for _ in range(4)]
        before = {s: await whoami(first.port, s) for s in sessions}
        first.process.kill()
        for session_id, (replica, count) in before.items():
            assert await whoami(second.port, session_id) == (replica, count + 1)
    finally:
        first.stop()
        second.stop()
