"""The Redis topologies the session-store tests run on (tests/redis_topologies.py) do what they
promise: they start settled, fail over when told, and persist where they say they do."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

from tests.redis_topologies import (
    Cluster,
    SentinelSet,
    command_calls,
    connect,
    key_slot,
    reset_stats,
    single_redis_with_aof,
    started_cluster,
    started_sentinels,
)

sentinels = pytest.fixture(started_sentinels, scope="module", name="sentinels")
cluster = pytest.fixture(started_cluster, scope="module", name="cluster")


def test_aof_redis_keeps_a_write_across_a_sigkill_restart_on_the_same_port(tmp_path: Path) -> None:
    with single_redis_with_aof(tmp_path) as redis:
        port = redis.port
        with redis.client() as client:
            client.set("session", "kept")
        redis.restart(signal.SIGKILL)
        assert redis.port == port
        with redis.client() as client:
            assert client.get("session") == "kept"


def test_command_calls_count_what_the_server_served_since_a_reset(tmp_path: Path) -> None:
    with single_redis_with_aof(tmp_path) as redis:
        with redis.client() as client:
            client.set("before", "1")
            reset_stats(redis.address)
            client.hset("session", "target", "docs")
            client.hgetall("session")
            client.hgetall("session")
        assert command_calls(redis.address) == {"hset": 1, "hgetall": 2}


def test_sentinels_report_the_node_that_is_master(sentinels: SentinelSet) -> None:
    master = sentinels.master()
    with connect(master) as client:
        assert client.execute_command("ROLE")[0] == "master"
    assert master in [node.address for node in sentinels.nodes]


def test_sentinel_failover_moves_the_master_and_writes_follow(sentinels: SentinelSet) -> None:
    old = sentinels.master()
    Sentinel(sentinels.sentinels, socket_timeout=2).master_for(sentinels.service).set("before", "1")
    new = sentinels.failover()
    assert new != old
    assert sentinels.master() == new
    # A new client: one already connected keeps writing to the old master until it is demoted.
    master = Sentinel(sentinels.sentinels, socket_timeout=2).master_for(sentinels.service, decode_responses=True)
    master.set("after", "2")
    with connect(new) as client:
        assert (client.get("before"), client.get("after")) == ("1", "2")


def test_killing_the_sentinel_master_promotes_the_replica(sentinels: SentinelSet) -> None:
    old = sentinels.master()
    with connect(old) as client:
        client.set("kept", "yes")
    try:
        new = sentinels.kill_master()
        assert new != old
        with connect(new) as client:
            assert client.get("kept") == "yes"
    finally:
        sentinels.revive()
    assert all(node.alive for node in sentinels.nodes)


def _cluster_client(cluster: Cluster) -> RedisCluster:
    nodes = [ClusterNode(host, port) for host, port in cluster.startup_nodes]
    return RedisCluster(startup_nodes=nodes, decode_responses=True, socket_timeout=2)


def _key_per_master(cluster: Cluster) -> dict[tuple[str, int], str]:
    """A key served by each master."""
    keys: dict[tuple[str, int], str] = {}
    for index in range(1000):
        keys.setdefault(cluster.master_of_slot(key_slot(f"key-{index}")), f"key-{index}")
        if len(keys) == 3:
            break
    return keys


def test_cluster_serves_keys_in_every_masters_slots(cluster: Cluster) -> None:
    keys = _key_per_master(cluster)
    assert len(keys) == 3
    client = _cluster_client(cluster)
    try:
        for key in keys.values():
            client.set(key, key)
        assert [client.get(key) for key in keys.values()] == list(keys.values())
    finally:
        client.close()
    for master, key in keys.items():
        with connect(master) as node:
            assert node.get(key) == key


def test_killing_a_slots_master_promotes_its_replica(cluster: Cluster) -> None:
    slot = key_slot("{session-1}")
    with connect(cluster.master_of_slot(slot)) as node:
        node.set("{session-1}", "kept")
        node.execute_command("WAIT", 1, 2000)
    old = cluster.master_of_slot(slot)
    try:
        new = cluster.kill_master_of_slot(slot)
        assert new != old
        assert cluster.master_of_slot(slot) == new
        client = _cluster_client(cluster)
        try:
            assert client.get("{session-1}") == "kept"
        finally:
            client.close()
    finally:
        cluster.revive()
    assert all(server.alive for server in cluster.servers)


def test_failover_of_a_slot_swaps_its_master_and_replica(cluster: Cluster) -> None:
    slot = key_slot("{session-2}")
    old = cluster.master_of_slot(slot)
    new = cluster.failover_slot(slot)
    assert new != old
    assert cluster.master_of_slot(slot) == new
    with connect(old) as node:
        assert node.execute_command("ROLE")[0] == "slave"
