"""Contract 17 under a steady load of clients: `kill -9` of one of three gateway replicas on each
Redis type, a Sentinel failover, a cluster node failover (a master killed, and a manual failover)
and a Redis restart with AOF. Each scenario counts what the clients got (`chaos.load`) and holds
the goal: no answer but 200 or 503 (with Retry-After) within 2 s, 503s only from the disruption to
5 s after it, and no session lost."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx2
import pytest

from agentgw.sessions.redis import _shard
from chaos.load import (
    ANSWER_WITHIN,
    CLIENTS,
    Figures,
    LoadBalancer,
    Session,
    check_sessions,
    open_sessions,
    under_load,
)
from tests.redis_topologies import Cluster, RedisNode, SentinelSet, key_slot
from tests.support import Gateway, Process, gateway, mcp_target

# The session_store type, and the fixture that starts its topology.
TOPOLOGIES = {"redis": "aof_redis", "redis-sentinel": "sentinels", "redis-cluster": "cluster"}
# How long a killed Redis stays down before its supervisor starts it again: requests meet a store
# that is gone, not one that is merely restarting.
REDIS_DOWNTIME = 1.0

Record = Callable[[Figures], None]
Disruption = Callable[[Sequence[Session]], object]


def key_prefix() -> str:
    return f"chaos{uuid.uuid4().hex[:8]}:"


def gateway_config(store: dict[str, Any], backends: list[Process], prefix: str) -> dict[str, Any]:
    return {
        "session_store": {**store, "key_prefix": prefix},
        "mcp": {"targets": [mcp_target("docs", *(backend.port for backend in backends))]},
    }


@contextlib.contextmanager
def replicas(tmp: Path, config: dict[str, Any], count: int) -> Iterator[list[Gateway]]:
    """`count` `agentgw serve` processes sharing one config and so one store; stopped on exit."""
    with contextlib.ExitStack() as running:
        gateways = []
        for index in range(count):
            started = gateway(tmp, config, name=f"replica-{index}")
            running.callback(started.stop)
            gateways.append(started)
        yield gateways


async def run_scenario(
    scenario: str,
    store_type: str,
    gateways: list[Gateway],
    disrupt: Disruption,
    after_settling: Callable[[], object] | None = None,
) -> Figures:
    """Open a session per client, load them through a load balancer while `disrupt(sessions)` runs
    and, at the end of the settle period, `after_settling`; then check that every session continues."""
    balancer = LoadBalancer([replica.port for replica in gateways])
    async with httpx2.AsyncClient(timeout=ANSWER_WITHIN, trust_env=False) as http:
        sessions = await open_sessions(http, balancer, CLIENTS)
        run = await under_load(http, balancer, sessions, functools.partial(disrupt, sessions), after_settling)
        await check_sessions(http, balancer, sessions)
    return Figures.of(scenario, store_type, run, sessions)


def assert_goal(figures: Figures, gateways: list[Gateway], killed: Sequence[Gateway] = ()) -> None:
    assert figures.ok > 0, "no request was answered"
    assert figures.errors == 0, figures.problems
    assert figures.lost == 0, figures.problems
    assert figures.late_unavailable == 0, figures.problems
    # A retry means a connection failed before its answer: only a killed replica's may.
    assert figures.fled <= {replica.port for replica in killed}, figures.problems
    exited = [replica.port for replica in gateways if replica not in killed and not running(replica)]
    assert exited == [], f"replicas that exited by themselves: {exited}"


def running(replica: Gateway) -> bool:
    child = replica.process.process
    return child is not None and child.poll() is None


# -- 1. kill -9 of a gateway replica ------------------------------------------------------------------


@pytest.mark.parametrize("store_type", list(TOPOLOGIES))
async def test_kill_9_of_one_of_three_replicas_loses_no_session(
    store_type: str, request: pytest.FixtureRequest, tmp_path: Path, backends: list[Process], record: Record
) -> None:
    topology = request.getfixturevalue(TOPOLOGIES[store_type])
    config = gateway_config(topology.store_config(), backends, key_prefix())
    with replicas(tmp_path, config, 3) as gateways:
        killed = gateways[0]
        figures = await run_scenario(
            "kill -9 of 1 of 3 replicas", store_type, gateways, lambda _sessions: killed.process.kill()
        )
        record(figures)
        assert_goal(figures, gateways, killed=[killed])


# -- 2. Sentinel failover -----------------------------------------------------------------------------


async def test_sentinel_failover_loses_no_session(
    tmp_path: Path, backends: list[Process], sentinels: SentinelSet, record: Record
) -> None:
    config = gateway_config(sentinels.store_config(), backends, key_prefix())
    with replicas(tmp_path, config, 2) as gateways:
        figures = await run_scenario(
            "sentinel failover",
            "redis-sentinel",
            gateways,
            lambda _sessions: sentinels.failover(),
            # The old master stays writable after the failover; made a replica under load once the
            # gateways had their 5 s to follow (the sentinels would do it some 8 s after the failover),
            # it fails every request of a gateway still writing to it.
            after_settling=sentinels.settle,
        )
        record(figures)
        assert_goal(figures, gateways)


# -- 3. cluster node failover -------------------------------------------------------------------------


def session_slot(prefix: str, session_id: str) -> int:
    """The hash slot of a session's record (`RedisSessionStore._key`)."""
    return key_slot(f"{prefix}session:{{{_shard(session_id)}}}:{session_id}")


@pytest.mark.parametrize("kill", [True, False], ids=["kill-9-of-the-slot-master", "manual-failover"])
async def test_cluster_node_failover_loses_no_session(
    kill: bool, tmp_path: Path, backends: list[Process], cluster: Cluster, record: Record
) -> None:
    prefix = key_prefix()

    def fail_over(sessions: Sequence[Session]) -> None:
        slot = session_slot(prefix, sessions[0].session_id)  # a slot that holds sessions
        if kill:
            cluster.kill_master_of_slot(slot)
        else:
            cluster.failover_slot(slot)

    scenario = "cluster: kill -9 of a slot's master" if kill else "cluster: failover of a slot"
    try:
        with replicas(tmp_path, gateway_config(cluster.store_config(), backends, prefix), 2) as gateways:
            figures = await run_scenario(scenario, "redis-cluster", gateways, fail_over)
            record(figures)
            assert_goal(figures, gateways)
    finally:
        await asyncio.to_thread(cluster.revive)  # the killed master back, as a replica


# -- 4. Redis restart with AOF --------------------------------------------------------------------------


async def test_redis_restart_with_aof_loses_no_session(
    tmp_path: Path, backends: list[Process], aof_redis: RedisNode, record: Record
) -> None:
    def restart(_sessions: Sequence[Session]) -> None:
        aof_redis.kill()
        time.sleep(REDIS_DOWNTIME)
        aof_redis.start()  # same port and directory: the AOF brings every session back

    with replicas(tmp_path, gateway_config(aof_redis.store_config(), backends, key_prefix()), 2) as gateways:
        figures = await run_scenario("redis restart (AOF)", "redis", gateways, restart)
        record(figures)
        assert_goal(figures, gateways)
