"""tools/call throughput, latency and memory: direct to a backend vs through agentgw, in one run.

    make bench            (or: .venv/bin/python benchmarks/mcp_tools_call.py [--seconds 10] [--requests 100000]
                                                                             [--server both])

Needs `wrk` on PATH (Debian/Ubuntu: apt-get install wrk), and granian for
`--server granian|both` (pip install -e ".[bench]"). Everything runs on
127.0.0.1: the fast backend (benchmarks/fast_backend.py), a redis-server for
the Redis runs, and the gateway, each in its own process. Four setups
(benchmarks/setups.py): the memory store with 1 worker and the Redis store
with --redis-workers, each without policies and with the shipped policies/
(SessionAuthPolicy, a bearer JWT on every request, and a ToolPolicy). Each is
run on each server named (benchmarks/servers.py), one right after the other.

For each: wrk at 64 and at 1 connection (median of --repeat runs), the
gateway's CPU per request, then, for every setup on every server, the RSS of
each worker process after a warm-up and again after --requests more requests
(at most --time-limit seconds; about half a minute at the gateway's ~3k req/s).
Prints one row per setup and server, the gateway/direct ratios, the cost of
auth + ToolPolicy, granian against uvicorn, the Redis commands per request,
each worker's RSS, and a closing summary block. The memory lines are printed,
not asserted: a benchmark reports, the tests decide.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import servers
import setups
import summary
import wrk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentgw.auth.jwt import mint_token  # noqa: E402
from tests.support import Process, free_port, initialize_body, raw_request, redis_process  # noqa: E402

LUA = Path(__file__).with_name("tools_call.lua")


async def open_session(port: int, path: str, token: str) -> str:
    """Initialize, then list the tools once, as a client does (the gateway learns their schemas)."""
    headers = [
        ("Host", f"127.0.0.1:{port}"),
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ]
    if token:
        headers.append(("Authorization", f"Bearer {token}"))
    response = await raw_request(port, "POST", path, headers, initialize_body())
    assert response.status == 200, response.body
    session_id = response.header("mcp-session-id")
    assert session_id
    headers += [("Mcp-Session-Id", session_id), ("MCP-Protocol-Version", "2025-11-25")]
    listed = await raw_request(port, "POST", path, headers, b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}')
    assert listed.status == 200, listed.body
    return session_id


def tools_call_load(port: int, path: str, token: str) -> wrk.Load:
    """The same tools/call in a session of its own, with `token` as a bearer token unless it is empty."""
    session_id = asyncio.run(open_session(port, path, token))
    return wrk.Load(f"http://127.0.0.1:{port}{path}", LUA, {"SESSION_ID": session_id, "TOKEN": token})


def start_gateway(tmp: Path, backend_port: int, setup: setups.Setup, secret: str, server: str) -> Process:
    policies = ROOT / "policies" if setup.secured else tmp / "no-policies"
    policies.mkdir(exist_ok=True)
    backends = {"mcp": {"targets": [{"name": "bench", "backends": [{"url": f"http://127.0.0.1:{backend_port}/mcp"}]}]}}
    return setups.start_gateway(tmp, setup, server, policies, backends, {"AGENTGW_JWT_SECRET": secret})


def redis_commands(port: int) -> dict[str, int]:
    output = subprocess.run(
        [shutil.which("redis-cli") or "redis-cli", "-p", str(port), "info", "commandstats"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts = {}
    for line in output.splitlines():
        if line.startswith("cmdstat_"):
            name, stats = line[len("cmdstat_") :].split(":", 1)
            counts[name] = int(stats.split(",")[0].split("=")[1])
    return counts


def redis_round_trips(redis_port: int, gateway_port: int, token: str) -> dict[str, float]:
    """Redis commands per tools/call, counted by the server over a short run."""
    load = tools_call_load(gateway_port, "/mcp/v1", token)
    before = redis_commands(redis_port)
    counted = wrk.run(load, 16, 3, "count")
    after = redis_commands(redis_port)
    requests = counted.requests_per_second * 3
    return {k: (after[k] - before.get(k, 0)) / requests for k in after if after[k] != before.get(k, 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--redis-workers", type=int, default=2, help="gateway workers with the Redis store")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is reported")
    parser.add_argument("--requests", type=int, default=100_000, help="requests between the two RSS readings")
    parser.add_argument(
        "--time-limit", type=int, default=300, help="seconds the RSS run may take at most, whatever the count"
    )
    parser.add_argument("--server", choices=[*servers.SERVERS, "both"], default="both", help="HTTP server(s)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not on PATH (apt-get install wrk)")

    tmp = Path(tempfile.mkdtemp(prefix="agentgw-bench-"))
    secret = secrets.token_urlsafe(32)
    # Scopes the shipped ToolPolicy names; `add` needs none, so the token's scopes are not what is measured.
    token = mint_token(secret, "bench", ["read:documents"], 3600, issuer="agentgw-dev", audience="agentgw")
    backend_port = free_port()
    backend = Process(
        [sys.executable, str(Path(__file__).with_name("fast_backend.py")), str(backend_port)], backend_port
    )
    redis_port = free_port()
    gateway_setups = setups.gateway_setups(redis_port, args.redis_workers, "+auth+policy")
    processes = [backend.start(), redis_process(redis_port).start()]
    results: list[wrk.Result] = []
    memory: list[wrk.Memory] = []
    round_trips = None
    try:
        results += wrk.measure(summary.DIRECT, tools_call_load(backend_port, "/mcp", ""), args.seconds, args.repeat)
        for setup in gateway_setups:
            for server in servers.choices(args.server):
                gateway = start_gateway(tmp, backend_port, setup, secret, server)
                processes.append(gateway)
                setup_token = token if setup.secured else ""
                if setup.store["type"] == "redis" and setup.secured and round_trips is None:
                    round_trips = redis_round_trips(redis_port, gateway.port, setup_token)
                load = tools_call_load(gateway.port, "/mcp/v1", setup_token)
                assert gateway.process is not None
                pid = gateway.process.pid
                results += wrk.measure(setup.name, load, args.seconds, args.repeat, pid, server)
                memory.append(wrk.measure_memory(setup.name, server, load, pid, args.requests, args.time_limit))
                gateway.stop()
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    report(results, memory, gateway_setups, round_trips)


def report(
    results: list[wrk.Result],
    memory: list[wrk.Memory],
    gateway_setups: list[setups.Setup],
    round_trips: dict[str, float] | None,
) -> None:
    wrk.print_table(results)
    direct = {r.connections: r for r in results if r.setup == summary.DIRECT}
    print("\nthrough the gateway, relative to direct:")
    for r in results:
        if r.setup != summary.DIRECT:
            _compare(r, direct[r.connections])
    print("\nauth + ToolPolicy in the path, relative to the same gateway without them:")
    by_key = {(r.setup, r.server, r.connections): r for r in results}
    secured = {setup.name: setup.plain_name for setup in gateway_setups if setup.secured}
    for r in results:
        if r.setup in secured:
            _compare(r, by_key[(secured[r.setup], r.server, r.connections)])
    wrk.print_servers_side_by_side(results)
    if round_trips is not None:
        per_request = ", ".join(f"{name} {count:.2f}" for name, count in sorted(round_trips.items()))
        print(f"\nRedis commands per tools/call, with auth+policy (inside evalsha counted too): {per_request}")
    summary.print_memory(memory)
    summary.print_summary("MCP tools/call", results, memory)


def _compare(result: wrk.Result, base: wrk.Result) -> None:
    ratio = result.requests_per_second / base.requests_per_second
    added = result.p50_ms - base.p50_ms
    print(
        f"  {result.setup:<26} {result.server:<8} c{result.connections:<3}"
        f" throughput {ratio:6.2f}x   added p50 {added:+.3f} ms"
    )


if __name__ == "__main__":
    main()
