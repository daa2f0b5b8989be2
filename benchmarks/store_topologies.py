"""tools/call through the gateway on a Redis Cluster against a single Redis (contract 17), in one run.

    make bench     (or: .venv/bin/python benchmarks/store_topologies.py [--seconds 2] [--repeat 3]
                                                                      [--workers 1,2])

About 70 s with the defaults, a few of them starting the cluster. On a machine
shared with other work, runs of the same setup differ by tens of percent: the
median of many short alternating runs (--repeat) tells a 10% difference better
than a few long ones.

Issue #15 asks that with `session_store.type: redis-cluster` the MCP tools/call
throughput stay within 10% of a single Redis, and that an MCP request cost one
store round trip at most. Everything runs on 127.0.0.1 (needs `wrk`, and a
redis-server): the fast backend (benchmarks/fast_backend.py), one redis-server,
and a six-node Redis Cluster (3 masters, each with a replica, as
tests/redis_topologies.py starts it), all without persistence. Two measurements:

1. For each --workers count, two gateways on uvicorn, one on each store, in
   front of the same backend, running side by side. The same tools/call (the
   backend's `add`, in one session per gateway) is run with wrk at 64 and 1
   connections on each, the two taking turns so that a neighbour's load falls on
   both alike; the median of --repeat runs is kept, with the gateway's CPU per
   request. One session's keys share a hash slot, so its calls land on one
   master: this compares the cost of a call, not the spread of many sessions.
2. The store commands each tools/call costs on the cluster (and on the single
   Redis beside it), over a run of a known number of calls at one connection,
   counted from the masters' own INFO commandstats: the EVALSHA/EVAL calls (the
   gateway's round trips, about 1.0) apart from the rest, which INFO counts
   alike whether the scripts ran them inside Redis or a client sent them.

The verdicts are printed, not asserted: a benchmark reports, the tests decide.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fast_backend
import mcp_tools_call
import servers
import setups
import side_by_side
import wrk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.redis_topologies import Address, command_calls, redis_cluster, reset_stats  # noqa: E402
from tests.support import Process, free_port, mcp_target, raw_call, started_redis, tool_text  # noqa: E402

TARGET = "bench"
TOOL = fast_backend.TOOLS["tools"][0]["name"]  # "add", the one tool the fast backend lists
PATH = f"/mcp/v1/{TARGET}"
SINGLE, CLUSTER = "redis", "redis-cluster"
# Issue #15's bound: the cluster's throughput at least this fraction below the single Redis's.
ALLOWED_SHORTFALL = 0.10
# Calls counted for the store commands, at one connection so that none is in flight when counting ends.
COUNTED_CALLS = 2_000
COUNTING_SECONDS = 60
# What the gateway's own round trips are: one script call per request.
SCRIPT_CALLS = ("evalsha", "eval")
# Above one script call per tools/call by less than this: the audit lines' batches, shared by many calls.
BATCHED_PER_CALL = 0.05
# The audit batch after the last counted call: polled until the script calls stop changing, within a bound.
FLUSH_POLL_SECONDS = 0.2
FLUSH_TIMEOUT = 5.0


@dataclass(frozen=True)
class Store:
    """A session store measured: its gateway config, and the masters where its commands are counted."""

    name: str
    config: dict[str, Any]
    masters: list[Address]


# -- the gateways ---------------------------------------------------------------------


def start_gateway(tmp: Path, name: str, store: dict[str, Any], workers: int, backend_port: int) -> Process:
    policies = tmp / "no-policies"
    policies.mkdir(exist_ok=True)
    setup = setups.Setup(name, store, workers, secured=False)
    config = {"mcp": {"targets": [mcp_target(TARGET, backend_port)]}}
    return setups.start_gateway(tmp, setup, servers.UVICORN, policies, config, {})


async def checked_session(port: int) -> str:
    """A session that has listed the tools once, and whose tools/call was answered with the backend's result."""
    session_id = await mcp_tools_call.open_session(port, PATH, "")
    answered = await raw_call(port, session_id, TOOL, {"a": 20, "b": 22}, PATH)
    assert answered.status == 200 and tool_text(answered) == "42", answered.body
    return session_id


def tools_call_load(port: int) -> wrk.Load:
    session_id = asyncio.run(checked_session(port))
    return wrk.Load(f"http://127.0.0.1:{port}{PATH}", mcp_tools_call.LUA, {"SESSION_ID": session_id, "TOKEN": ""})


def setup_name(store: str, workers: int) -> str:
    return f"{setups.PLAIN_PREFIX}{store} x{workers}"


# -- 1. tools/call, single Redis against the cluster ------------------------------------


def print_ratios(results: list[wrk.Result], workers: list[int]) -> None:
    print("\nredis-cluster / redis, same workers and connections (req/s ratio; p50, p99 and CPU as ratios too):")
    for count in workers:
        for cluster, single in side_by_side.pairs(results, setup_name(CLUSTER, count), setup_name(SINGLE, count)):
            within = side_by_side.throughput_ratio(cluster, single) >= 1 - ALLOWED_SHORTFALL
            verdict = f"{'within' if within else 'OUTSIDE'} the {ALLOWED_SHORTFALL:.0%} bound"
            print(f"  x{count} {side_by_side.ratio_columns(cluster, single)}   {verdict}")


# -- 2. store commands per tools/call ---------------------------------------------------


@dataclass(frozen=True)
class StoreCommands:
    """Commands per tools/call over `calls` calls, summed over the masters: the script calls (the
    gateway's round trips), how many masters served them, and every other command INFO counted."""

    calls: int
    scripts: float
    masters_serving: int
    masters: int
    others: dict[str, float]


def script_calls(counted: dict[str, int]) -> int:
    return sum(counted.get(name, 0) for name in SCRIPT_CALLS)


def counted_on(masters: list[Address]) -> list[dict[str, int]]:
    return [command_calls(master) for master in masters]


def flushed_counts(masters: list[Address]) -> list[dict[str, int]]:
    """The masters' command counts once the script calls stop changing (the last audit batch written),
    or as they are after FLUSH_TIMEOUT."""
    deadline = time.monotonic() + FLUSH_TIMEOUT
    counts = counted_on(masters)
    while time.monotonic() < deadline:
        time.sleep(FLUSH_POLL_SECONDS)
        latest = counted_on(masters)
        if [script_calls(c) for c in latest] == [script_calls(c) for c in counts]:
            return latest
        counts = latest
    return counts


def store_commands_per_call(masters: list[Address], load: wrk.Load) -> StoreCommands:
    """What the masters run for COUNTED_CALLS tools/calls, from their own INFO commandstats."""
    flushed_counts(masters)  # what the measured runs left behind, written before the counting starts
    for master in masters:
        reset_stats(master)
    calls, _, errors = wrk.run_requests(load, COUNTED_CALLS, 1, COUNTING_SECONDS)
    assert errors == 0, f"{errors} errors while counting"
    per_master = flushed_counts(masters)
    totals: dict[str, int] = {}
    for counts in per_master:
        for name, count in counts.items():
            totals[name] = totals.get(name, 0) + count
    others = {name: count / calls for name, count in totals.items() if name not in SCRIPT_CALLS}
    serving = sum(1 for counts in per_master if script_calls(counts))
    return StoreCommands(calls, script_calls(totals) / calls, serving, len(masters), others)


def print_store_commands(costs: dict[str, StoreCommands]) -> None:
    print("\nstore commands per tools/call (x1, one connection, from the masters' INFO commandstats):")
    for store, cost in costs.items():
        one_trip = 1.0 <= cost.scripts < 1.0 + BATCHED_PER_CALL
        others = ", ".join(f"{name} {value:.3f}" for name, value in sorted(cost.others.items())) or "none"
        print(
            f"  {store:<14} {cost.calls} calls: evalsha/eval {cost.scripts:.3f} per call,"
            f" on {cost.masters_serving} of {cost.masters} master(s):"
            f" {'meets' if one_trip else 'MISSES'} one store round trip per call"
        )
        print(f"  {'':<14} others (run inside the scripts, or replication and topology upkeep): {others}")


# -- the run --------------------------------------------------------------------------


def worker_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("worker counts are positive integers, comma-separated")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=2, help="length of each wrk run")
    parser.add_argument("--repeat", type=int, default=3, help="wrk runs per store and connections; the median kept")
    parser.add_argument("--workers", type=worker_counts, default=[1, 2], help="gateway worker counts, e.g. 1,2")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not on PATH (apt-get install wrk)")

    tmp = Path(tempfile.mkdtemp(prefix="agentgw-bench-stores-"))
    results: list[wrk.Result] = []
    costs: dict[str, StoreCommands] = {}
    try:
        with contextlib.ExitStack() as running:
            backend_port = free_port()
            backend_script = str(Path(__file__).with_name("fast_backend.py"))
            backend = Process([sys.executable, backend_script, str(backend_port)], backend_port).start()
            running.callback(backend.stop)
            single = started_redis(tmp / "redis.log")
            running.callback(single.stop)
            cluster = running.enter_context(redis_cluster(tmp))
            single_config = {"type": "redis", "url": f"redis://127.0.0.1:{single.port}/0"}
            stores = [
                Store(SINGLE, single_config, [("127.0.0.1", single.port)]),
                Store(CLUSTER, cluster.store_config(), sorted({served.master for served in cluster.settle()})),
            ]
            for workers in args.workers:
                # This worker count's gateways are stopped before the next count's start.
                with contextlib.ExitStack() as gateways:
                    contenders = []
                    for store in stores:
                        name = setup_name(store.name, workers)
                        gateway = start_gateway(tmp, name, store.config, workers, backend_port)
                        gateways.callback(gateway.stop)
                        assert gateway.process is not None
                        load = tools_call_load(gateway.port)
                        contenders.append(side_by_side.Contender(name, load, gateway.process.pid))
                    side_by_side.warm_up(contenders)
                    results += side_by_side.measure(contenders, args.seconds, args.repeat, servers.UVICORN)
                    if workers == 1:
                        for contender, store in zip(contenders, stores, strict=True):
                            costs[store.name] = store_commands_per_call(store.masters, contender.load)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    wrk.print_table(results)
    print_ratios(results, args.workers)
    if costs:
        print_store_commands(costs)


if __name__ == "__main__":
    main()
