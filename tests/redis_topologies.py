"""Redis topologies on loopback for the session-store tests (contract 17): one Redis that keeps
every write across a restart (AOF), a master and a replica watched by three sentinels, and a
six-node cluster.

Each is started from redis-server on free ports (redis-server cannot bind port 0 and tell the
port, see `tests.support.started_redis`), started again on other ports when one was taken first,
waits with a bound until the topology is settled, and stops every process it started on exit,
a failure included. Failovers wait until the topology says it has moved, also with a bound.
"""

from __future__ import annotations

import contextlib
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from redis.crc import key_slot as _crc_key_slot
from redis.driver_info import DriverInfo

from tests.support import (
    REDIS_READY,
    START_ATTEMPTS,
    Process,
    free_port,
    redis_process,
    redis_server_binary,
    wait_for_line,
)

T = TypeVar("T")
Address = tuple[str, int]

HOST = "127.0.0.1"
SETTLE_TIMEOUT = 15.0  # a topology starting, or coming back to one master per replica set
FAILOVER_TIMEOUT = 15.0
CLUSTER_FAILOVER_TIMEOUT = 20.0
POLL_INTERVAL = 0.05
QUERY_TIMEOUT = 2.0
SENTINEL_READY = re.compile(rb"Sentinel ID is")  # a sentinel logs no "Ready to accept connections"
# Without these a replica waits 5 s for other replicas before its first full sync.
FAST_SYNC = ("--repl-diskless-sync-delay", "0")
# No CLIENT SETINFO on connect, and RESP2 (redis-py's default RESP3 costs a HELLO): the helpers'
# own commands stay out of the command statistics, and replies are the flat lists parsed below.
NO_DRIVER_INFO = DriverInfo(name=None, lib_version=None)


class RedisNode:
    """One redis-server or sentinel on a loopback port it keeps across restarts, as a crashed
    server restarted by its supervisor would: a gateway keeps the address it was configured with."""

    def __init__(self, name: str, process: Process, ready: re.Pattern[bytes] = REDIS_READY) -> None:
        self.name = name
        self.process = process
        self.ready = ready

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def address(self) -> Address:
        return (HOST, self.port)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def store_config(self) -> dict[str, Any]:
        """The gateway's session_store section for this one server."""
        return {"type": "redis", "url": self.url}

    @property
    def alive(self) -> bool:
        return self.process.process is not None and self.process.process.poll() is None

    def start(self) -> None:
        """Start it on its port; returns once it accepts commands (an AOF loaded)."""
        assert self.process.log is not None
        offset = self.process.log.stat().st_size if self.process.log.exists() else 0
        self.process.start()
        assert self.process.process is not None
        wait_for_line(self.process.log, offset, self.ready, self.process.process)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.process.stop(sig)

    def kill(self) -> None:
        self.process.kill()

    def restart(self, sig: int = signal.SIGTERM) -> None:
        """Stop it with `sig` (SIGKILL: a crash) and start it again on the same port and dir."""
        self.stop(sig)
        self.start()

    def client(self) -> redis.Redis:
        """A redis-py client, to be closed (`with node.client() as c:`)."""
        return connect(self.address)


def connect(address: Address) -> redis.Redis:
    """A redis-py client of one node that answers str, to be closed after use."""
    host, port = address
    return redis.Redis(
        host=host,
        port=port,
        socket_timeout=QUERY_TIMEOUT,
        socket_connect_timeout=QUERY_TIMEOUT,
        decode_responses=True,
        protocol=2,
        driver_info=NO_DRIVER_INFO,
    )


def _command(address: Address, *args: Any) -> Any:
    with connect(address) as conn:
        return conn.execute_command(*args)


def host_port(address: Address) -> str:
    """The address as session_store.sentinels and session_store.nodes name a server: host:port."""
    return f"{address[0]}:{address[1]}"


def key_slot(key: str | bytes) -> int:
    """The cluster hash slot of `key`, hash tags included."""
    return int(_crc_key_slot(key.encode() if isinstance(key, str) else key))


def command_calls(address: Address) -> dict[str, int]:
    """Calls per command the node has served since it started or `reset_stats`, from its own
    INFO commandstats ("evalsha", "hgetall", "client|setname"...). INFO and CONFIG RESETSTAT are
    left out: these helpers send them."""
    with connect(address) as conn:
        stats = conn.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(fields["calls"]) for name, fields in stats.items()}
    return {name: count for name, count in calls.items() if count and name not in ("info", "config|resetstat")}


def reset_stats(address: Address) -> None:
    """CONFIG RESETSTAT: the node's command statistics count from zero."""
    _command(address, "CONFIG", "RESETSTAT")


def wait_until(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """`check()`'s first truthy value, polled within `timeout`. A node refusing or dropping a
    connection meanwhile (it is failing over, or starting) counts as not yet."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = check()
        except (redis.RedisError, OSError) as exc:
            value, last_error = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s") from last_error
        time.sleep(POLL_INTERVAL)


def _started_node(
    name: str, tmp: Path, args_for: Callable[[int], list[str]], ready: re.Pattern[bytes] = REDIS_READY
) -> RedisNode:
    """A node on a free port, on another one should a process take the first before it binds."""
    log = tmp / f"{name}.log"
    for _ in range(START_ATTEMPTS):
        port = free_port()
        node = RedisNode(name, Process(args_for(port), port, log=log), ready)
        try:
            node.start()
        except RuntimeError:  # it exited before it was ready: a port was taken
            node.kill()
            continue
        return node
    raise RuntimeError(f"{name} did not start in {START_ATTEMPTS} attempts; see {log}")


def _redis_args(port: int, *options: str) -> list[str]:
    return redis_process(port, None, *FAST_SYNC, *options).args


def _node_dir(tmp: Path, name: str, port: int) -> Path:
    """A directory per start attempt: a failed attempt leaves no files for the next one to load."""
    folder = tmp / f"{name}-{port}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _role(address: Address) -> list[Any]:
    return list(_command(address, "ROLE"))


def _replicates(address: Address, master: Address) -> bool:
    """ROLE says the node is a replica of `master` with its link up."""
    role = _role(address)
    return role[0] == "slave" and (role[1], int(role[2])) == master and role[3] == "connected"


# -- one Redis that persists ----------------------------------------------------------------------


@contextlib.contextmanager
def single_redis_with_aof(tmp: Path) -> Iterator[RedisNode]:
    """One redis-server with `appendonly yes` and `appendfsync always`: `restart()`, SIGKILL
    included, keeps every write it acknowledged."""

    def args(port: int) -> list[str]:
        folder = _node_dir(tmp, "aof", port)
        return _redis_args(port, "--appendonly", "yes", "--appendfsync", "always", "--dir", str(folder))

    node = _started_node("redis-aof", tmp, args)
    try:
        yield node
    finally:
        node.kill()


# -- Sentinel -------------------------------------------------------------------------------------


def _fields(flat: list[Any]) -> dict[str, Any]:
    """A flat [key, value, key, value...] reply as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _reachable(flags: str) -> bool:
    """A sentinel's flags for an instance it can reach now. Flags left from a failover ("promoted",
    "master_down") linger for seconds and do not keep it from a failover."""
    return not {"s_down", "o_down", "disconnected"} & set(flags.split(","))


@dataclass
class SentinelSet:
    """A master and a replica watched by three sentinels, all on loopback."""

    service: str
    nodes: list[RedisNode]  # the two redis-servers; which is master changes with failovers
    sentinel_nodes: list[RedisNode]

    @property
    def sentinels(self) -> list[Address]:
        return [sentinel.address for sentinel in self.sentinel_nodes]

    def store_config(self) -> dict[str, Any]:
        """The gateway's session_store section for this set."""
        return {
            "type": "redis-sentinel",
            "sentinels": [host_port(a) for a in self.sentinels],
            "service_name": self.service,
        }

    def node_at(self, address: Address) -> RedisNode:
        return next(node for node in self.nodes if node.address == address)

    def master(self) -> Address:
        """The master as the sentinels report it now (SENTINEL get-master-addr-by-name)."""
        with connect(self.sentinels[0]) as sentinel:
            host, port = sentinel.sentinel_get_master_addr_by_name(self.service)
        return (str(host), int(port))

    def failover(self, timeout: float = FAILOVER_TIMEOUT) -> Address:
        """SENTINEL FAILOVER, then wait until every sentinel reports the replica as master and it
        answers ROLE as one. The old master stays writable until `settle()` (or the sentinels,
        some 8 s later) turns it into a replica, as a real one would. The new master's address."""
        old = self._replicated_master()
        # Retried: a sentinel that has not yet read the replica's INFO answers NOGOODSLAVE.
        wait_until(lambda: _command(self.sentinels[0], "SENTINEL", "FAILOVER", self.service), timeout, "failover")
        return self._wait_promoted(old, timeout)

    def kill_master(self, timeout: float = FAILOVER_TIMEOUT) -> Address:
        """SIGKILL the master and wait until the sentinels promote the replica. The killed node
        stays down until `revive()`. The new master's address."""
        old = self._replicated_master()
        self.node_at(old).kill()
        return self._wait_promoted(old, timeout)

    def revive(self, timeout: float = SETTLE_TIMEOUT) -> None:
        """Start every killed node again on its port, as a replica of the current master."""
        master = self.master()
        for node in self.nodes:
            if not node.alive:
                node.start()
                # It came back an empty master; the sentinels would demote it after some 8 s.
                _command(node.address, "REPLICAOF", *master)
        self.settle(timeout)

    def settle(self, timeout: float = SETTLE_TIMEOUT) -> Address:
        """Wait until every live node replicates the master the sentinels report, and every
        sentinel knows the others and those replicas. A master left over from a failover is
        made a replica first, as the sentinels would after some 8 s. The master's address."""

        def settled() -> Address | None:
            master = self.master()
            replicas = [node.address for node in self.nodes if node.alive and node.address != master]
            for replica in replicas:
                if _role(replica)[0] == "master":
                    _command(replica, "REPLICAOF", *master)
            if _role(master)[0] != "master" or not all(_replicates(r, master) for r in replicas):
                return None
            return master if all(self._knows(s, master, replicas) for s in self.sentinels) else None

        return wait_until(settled, timeout, f"sentinel set {self.service} settled")

    def _replicated_master(self) -> Address:
        master = self.settle()
        if all(node.address == master for node in self.nodes if node.alive):
            raise RuntimeError(f"the master of {self.service} has no replica left: revive() first")
        return master

    def _knows(self, sentinel: Address, master: Address, replicas: list[Address]) -> bool:
        if self._reported_by(sentinel) != master:
            return False
        peers = [_fields(f) for f in _command(sentinel, "SENTINEL", "SENTINELS", self.service)]
        known = {(f["ip"], int(f["port"])): f["flags"] for f in map(_fields, self._replicas_of(sentinel))}
        return len([p for p in peers if _reachable(p["flags"])]) == len(self.sentinels) - 1 and all(
            _reachable(known.get(r, "s_down")) for r in replicas
        )

    def _replicas_of(self, sentinel: Address) -> list[list[Any]]:
        return list(_command(sentinel, "SENTINEL", "REPLICAS", self.service))

    def _reported_by(self, sentinel: Address) -> Address:
        host, port = _command(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return (str(host), int(port))

    def _wait_promoted(self, old: Address, timeout: float) -> Address:
        def promoted() -> Address | None:
            reported = {self._reported_by(sentinel) for sentinel in self.sentinels}
            if len(reported) != 1 or old in reported:
                return None
            (new,) = reported
            return new if _role(new)[0] == "master" else None

        return wait_until(promoted, timeout, f"a new master of {self.service}")


def _sentinel_args(tmp: Path, service: str, master: Address) -> Callable[[int], list[str]]:
    def args(port: int) -> list[str]:
        folder = _node_dir(tmp, "sentinel", port)
        config = folder / "sentinel.conf"  # in a writable dir: a sentinel rewrites its config file
        config.write_text(
            f"port {port}\nbind {HOST}\ndir {folder}\nsentinel resolve-hostnames no\n"
            f"sentinel monitor {service} {master[0]} {master[1]} 2\n"
            f"sentinel down-after-milliseconds {service} 1000\n"
            f"sentinel failover-timeout {service} 3000\n"
            f"sentinel parallel-syncs {service} 1\n"
        )
        return [redis_server_binary(), str(config), "--sentinel"]

    return args


@contextlib.contextmanager
def sentinel_set(tmp: Path, service: str = "mymaster") -> Iterator[SentinelSet]:
    """A master, its replica and three sentinels (quorum 2, down after 1 s), settled: the replica
    in sync, and every sentinel knowing the others and the replica."""
    with contextlib.ExitStack() as started:
        master = _started_node(
            "master", tmp, lambda port: _redis_args(port, "--dir", str(_node_dir(tmp, "master", port)))
        )
        started.callback(master.kill)

        def replica_args(port: int) -> list[str]:
            folder = _node_dir(tmp, "replica", port)
            return _redis_args(port, "--dir", str(folder), "--replicaof", HOST, str(master.port))

        replica = _started_node("replica", tmp, replica_args)
        started.callback(replica.kill)
        # In sync before the sentinels start: their first INFO of the master then names the replica.
        wait_until(lambda: _replicates(replica.address, master.address), SETTLE_TIMEOUT, "replica in sync")
        sentinels = []
        for index in range(3):
            args = _sentinel_args(tmp, service, master.address)
            sentinel = _started_node(f"sentinel-{index}", tmp, args, SENTINEL_READY)
            started.callback(sentinel.kill)
            sentinels.append(sentinel)
        topology = SentinelSet(service, [master, replica], sentinels)
        topology.settle()
        yield topology


# -- Cluster --------------------------------------------------------------------------------------

SLOTS = 16384


@dataclass(frozen=True)
class SlotRange:
    """One row of CLUSTER SLOTS: slots first..last, served by `master` and copied to `replicas`."""

    first: int
    last: int
    master: Address
    replicas: tuple[Address, ...]


def _slot_map(address: Address) -> frozenset[SlotRange]:
    """CLUSTER SLOTS as the node at `address` sees it (failed replicas left out by Redis)."""
    rows = _command(address, "CLUSTER", "SLOTS")
    return frozenset(
        SlotRange(int(first), int(last), (node[0], int(node[1])), tuple(sorted((r[0], int(r[1])) for r in rest)))
        for first, last, node, *rest in rows
    )


def _cluster_ok(address: Address) -> bool:
    return "cluster_state:ok" in _command(address, "CLUSTER", "INFO")


@dataclass
class Cluster:
    """Redis Cluster nodes on loopback, each master with its replicas."""

    servers: list[RedisNode]

    @property
    def nodes(self) -> list[Address]:
        """Every node's address, those killed included."""
        return [server.address for server in self.servers]

    @property
    def startup_nodes(self) -> list[Address]:
        """Every other node: a subset such as a gateway is configured with, which still reaches the
        cluster when any one node is down."""
        return self.nodes[::2]

    def store_config(self) -> dict[str, Any]:
        """The gateway's session_store section for this cluster."""
        return {"type": "redis-cluster", "nodes": [host_port(a) for a in self.startup_nodes]}

    def node_at(self, address: Address) -> RedisNode:
        return next(server for server in self.servers if server.address == address)

    def master_of_slot(self, slot: int) -> Address:
        """The master serving `slot`, once every live node agrees on it."""
        return _owner(self._agreed_map(), slot).master

    def kill_master_of_slot(self, slot: int, timeout: float = CLUSTER_FAILOVER_TIMEOUT) -> Address:
        """SIGKILL the master serving `slot` and wait until its replica is promoted and the
        cluster is ok again. The killed node stays down until `revive()`. The new master."""
        old = self._replicated_owner(slot)
        self.node_at(old.master).kill()
        return self._wait_moved(slot, old, timeout)

    def failover_slot(self, slot: int, timeout: float = CLUSTER_FAILOVER_TIMEOUT) -> Address:
        """CLUSTER FAILOVER on a replica of the master serving `slot`; wait until every node sees it
        as the master and the old master replicates it. The new master."""
        old = self._replicated_owner(slot)
        _command(old.replicas[0], "CLUSTER", "FAILOVER")
        new = self._wait_moved(slot, old, timeout)
        wait_until(lambda: _replicates(old.master, new), timeout, f"{old.master} replicating {new}")
        return new

    def revive(self, timeout: float = CLUSTER_FAILOVER_TIMEOUT) -> None:
        """Start every killed node again on its ports; the cluster makes each a replica of the node
        that took its slots. Waits until every node is in the slot map and replicas are in sync."""
        for server in self.servers:
            if not server.alive:
                server.start()
        self.settle(timeout)

    def settle(self, timeout: float = SETTLE_TIMEOUT) -> frozenset[SlotRange]:
        """Wait until every live node is ok, all see one slot map holding every live node, and every
        replica in it is in sync. That map."""
        live = [server.address for server in self.servers if server.alive]

        def settled() -> frozenset[SlotRange] | None:
            slot_map = self._agreed_map_now(live)
            if slot_map is None or not all(_cluster_ok(a) for a in live):
                return None
            listed = [r.master for r in slot_map] + [a for r in slot_map for a in r.replicas]
            if sorted(listed) != sorted(live):
                return None
            return slot_map if all(_replicates(a, r.master) for r in slot_map for a in r.replicas) else None

        return wait_until(settled, timeout, "cluster settled")

    def _agreed_map(self) -> frozenset[SlotRange]:
        live = [server.address for server in self.servers if server.alive]
        return wait_until(lambda: self._agreed_map_now(live), SETTLE_TIMEOUT, "one slot map on every node")

    @staticmethod
    def _agreed_map_now(live: list[Address]) -> frozenset[SlotRange] | None:
        maps = {_slot_map(address) for address in live}
        return maps.pop() if len(maps) == 1 else None

    def _replicated_owner(self, slot: int) -> SlotRange:
        owner = _owner(self.settle(), slot)
        if not owner.replicas:
            raise RuntimeError(f"the master of slot {slot} has no replica left: revive() first")
        return owner

    def _wait_moved(self, slot: int, old: SlotRange, timeout: float) -> Address:
        live = [server.address for server in self.servers if server.alive]

        def moved() -> Address | None:
            slot_map = self._agreed_map_now(live)
            if slot_map is None or not all(_cluster_ok(a) for a in live):
                return None
            new = _owner(slot_map, slot).master
            return new if new in old.replicas and _role(new)[0] == "master" else None

        return wait_until(moved, timeout, f"a replica of {old.master} serving slot {slot}")


def _owner(slot_map: frozenset[SlotRange], slot: int) -> SlotRange:
    return next(row for row in slot_map if row.first <= slot <= row.last)


def _cluster_args(tmp: Path, name: str) -> Callable[[int], list[str]]:
    def args(port: int) -> list[str]:
        folder = _node_dir(tmp, name, port)
        return _redis_args(
            port,
            "--dir",
            str(folder),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            # The bus port beside the client port (port + 10000 by default) may be out of range or taken.
            "--cluster-port",
            str(free_port()),
            "--cluster-node-timeout",
            "1000",
            # CLUSTER SLOTS names a replica once its replication offset is above 0, which the
            # master's pings to its replicas bring about, every 10 s by default.
            "--repl-ping-replica-period",
            "1",
        )

    return args


def _bus_port(node: RedisNode) -> int:
    args = node.process.args
    return int(args[args.index("--cluster-port") + 1])


def _meet_all(servers: list[RedisNode], masters: int) -> None:
    """Assign slots and distinct config epochs, then introduce every node to the first: the cluster
    redis-cli --cluster create builds, without depending on redis-cli."""
    for index, server in enumerate(servers):
        if index < masters:
            first, last = index * SLOTS // masters, (index + 1) * SLOTS // masters - 1
            _command(server.address, "CLUSTER", "ADDSLOTSRANGE", first, last)
        _command(server.address, "CLUSTER", "SET-CONFIG-EPOCH", index + 1)
    for server in servers[1:]:
        _command(servers[0].address, "CLUSTER", "MEET", HOST, server.port, _bus_port(server))

    def all_met() -> bool:
        for server in servers:
            lines = _command(server.address, "CLUSTER", "NODES").splitlines()
            if len(lines) != len(servers) or any("handshake" in line or "noaddr" in line for line in lines):
                return False
        return True

    wait_until(all_met, SETTLE_TIMEOUT, "every cluster node knowing every other")


@contextlib.contextmanager
def redis_cluster(tmp: Path, masters: int = 3, replicas_per_master: int = 1) -> Iterator[Cluster]:
    """`masters` masters sharing the slots, each with `replicas_per_master` replicas (node timeout
    1 s, so a failover takes a few seconds), settled: every node ok and every replica in sync."""
    with contextlib.ExitStack() as started:
        servers = []
        for index in range(masters * (1 + replicas_per_master)):
            server = _started_node(f"cluster-{index}", tmp, _cluster_args(tmp, f"cluster-{index}"))
            started.callback(server.kill)
            servers.append(server)
        _meet_all(servers, masters)
        for index, replica in enumerate(servers[masters:]):
            master_id = _command(servers[index % masters].address, "CLUSTER", "MYID")
            _command(replica.address, "CLUSTER", "REPLICATE", master_id)
        cluster = Cluster(servers)
        cluster.settle()
        yield cluster


# -- as fixtures ----------------------------------------------------------------------------------
# Plain generators, so that each suite makes them fixtures of the scope it needs (one module of the
# topology tests, the whole chaos run): `pytest.fixture(started_cluster, scope=..., name="cluster")`.


def started_sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """A sentinel set in a temp folder of its own, until the fixture made of this ends."""
    with sentinel_set(tmp_path_factory.mktemp("sentinel")) as topology:
        yield topology


def started_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A cluster (`redis_cluster`'s defaults) in a temp folder of its own, until the fixture made of this ends."""
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as topology:
        yield topology
