"""tools/call throughput and latency: direct to a backend vs through agentgw, in one run.

    make bench            (or: .venv/bin/python benchmarks/mcp_tools_call.py [--seconds 10])

Needs `wrk` on PATH (Debian/Ubuntu: apt-get install wrk). Everything runs on
127.0.0.1: the fast backend (benchmarks/fast_backend.py), a redis-server for
the Redis runs, and the gateway, each in its own process. Prints one row per
setup and the gateway/direct ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentgw.auth.jwt import mint_token  # noqa: E402
from tests.support import Process, free_port, initialize_body, raw_request, redis_process  # noqa: E402

LUA = Path(__file__).with_name("tools_call.lua")
# One wrk thread leaves the most CPU to what is measured; it still pushes 20k+ req/s here.
WRK_THREADS = int(os.environ.get("WRK_THREADS", "1"))


@dataclass
class Result:
    setup: str
    connections: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us_per_request: float | None = None


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (the uvicorn workers), from /proc."""
    total = 0.0
    pids = [pid] + [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for one in pids:
        fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@dataclass(frozen=True)
class Setup:
    """One way of running the gateway in front of the fast backend."""

    name: str
    store: dict[str, str]
    workers: int
    secured: bool  # the shipped policies/ (SessionAuthPolicy + ToolPolicy) and a bearer token


def wrk(url: str, session_id: str, token: str, connections: int, seconds: int, setup: str) -> Result:
    threads = 1 if connections == 1 else WRK_THREADS
    output = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "-s", str(LUA), url],
        env={**os.environ, "SESSION_ID": session_id, "TOKEN": token},
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    data = json.loads(line[len("RESULT ") :])
    return Result(
        setup,
        connections,
        data["requests"] / data["seconds"],
        data["p50_us"] / 1000,
        data["p99_us"] / 1000,
        data["errors"],
    )


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


def start_gateway(tmp: Path, backend_port: int, setup: Setup, secret: str) -> Process:
    port = free_port()
    policies = ROOT / "policies" if setup.secured else tmp / "no-policies"
    policies.mkdir(exist_ok=True)
    config = {
        "server": {"listen": f"127.0.0.1:{port}", "metrics_listen": "", "workers": setup.workers},
        "session_store": setup.store,
        "policies": [str(policies)],
        "mcp": {"targets": [{"name": "bench", "backends": [{"url": f"http://127.0.0.1:{backend_port}/mcp"}]}]},
    }
    config_file = tmp / f"gateway-{port}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    args = [sys.executable, "-m", "agentgw", "serve", "--config", str(config_file)]
    env = {"AGENTGW_JWT_SECRET": secret}
    return Process(args, port, env=env, log=tmp / f"gateway-{port}.log").start()


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


def measure(
    name: str, port: int, path: str, token: str, seconds: int, repeat: int, pid: int | None = None
) -> list[Result]:
    """wrk at 64 and at 1 connection, `repeat` times each, the median run of each kept.

    With `pid`, that process's CPU time per request is measured too.
    """
    session_id = asyncio.run(open_session(port, path, token))
    url = f"http://127.0.0.1:{port}{path}"
    wrk(url, session_id, token, 16, 2, name)  # warm-up: connection pools, caches
    results = []
    for connections in (64, 1):
        runs = []
        for _ in range(repeat):
            before = cpu_seconds(pid) if pid else 0.0
            result = wrk(url, session_id, token, connections, seconds, name)
            if pid:
                used = cpu_seconds(pid) - before
                result.cpu_us_per_request = used / (result.requests_per_second * seconds) * 1e6
            runs.append(result)
        runs.sort(key=lambda r: r.requests_per_second)
        results.append(runs[len(runs) // 2])
    return results


def redis_round_trips(redis_port: int, gateway_port: int, token: str) -> dict[str, float]:
    """Redis commands per tools/call, counted by the server over a short run."""
    session_id = asyncio.run(open_session(gateway_port, "/mcp/v1", token))
    before = redis_commands(redis_port)
    counted = wrk(f"http://127.0.0.1:{gateway_port}/mcp/v1", session_id, token, 16, 3, "count")
    after = redis_commands(redis_port)
    requests = counted.requests_per_second * 3
    return {k: (after[k] - before.get(k, 0)) / requests for k in after if after[k] != before.get(k, 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--redis-workers", type=int, default=2, help="gateway workers with the Redis store")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is reported")
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
    redis_store = {"type": "redis", "url": f"redis://127.0.0.1:{redis_port}/0"}
    setups = [
        Setup("gateway memory x1", {"type": "memory"}, 1, secured=False),
        Setup("memory x1 +auth+policy", {"type": "memory"}, 1, secured=True),
        Setup(f"gateway redis x{args.redis_workers}", redis_store, args.redis_workers, secured=False),
        Setup(f"redis x{args.redis_workers} +auth+policy", redis_store, args.redis_workers, secured=True),
    ]
    processes = [backend.start(), redis_process(redis_port).start()]
    results: list[Result] = []
    round_trips = None
    try:
        results += measure("direct", backend_port, "/mcp", "", args.seconds, args.repeat)
        for setup in setups:
            gateway = start_gateway(tmp, backend_port, setup, secret)
            processes.append(gateway)
            setup_token = token if setup.secured else ""
            if setup.store["type"] == "redis" and setup.secured:
                round_trips = redis_round_trips(redis_port, gateway.port, setup_token)
            results += measure(
                setup.name, gateway.port, "/mcp/v1", setup_token, args.seconds, args.repeat, _pid(gateway)
            )
            gateway.stop()
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    report(results, round_trips)


def _pid(process: Process) -> int:
    assert process.process is not None
    return process.process.pid


def report(results: list[Result], round_trips: dict[str, float] | None) -> None:
    columns = f"{'setup':<24} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
    print(f"\n{columns} {'gateway CPU us/req':>19}")
    for r in results:
        cpu = f"{r.cpu_us_per_request:.0f}" if r.cpu_us_per_request is not None else "-"
        print(
            f"{r.setup:<24} {r.connections:>5} {r.requests_per_second:>9.0f} {r.p50_ms:>8.3f} {r.p99_ms:>8.3f}"
            f" {r.errors:>6} {cpu:>19}"
        )
    direct = {r.connections: r for r in results if r.setup == "direct"}
    print("\nthrough the gateway, relative to direct:")
    for r in results:
        if r.setup != "direct":
            _compare(r, direct[r.connections])
    print("\nauth + ToolPolicy in the path, relative to the same gateway without them:")
    plain = {(r.setup.split()[1], r.connections): r for r in results if r.setup.startswith("gateway ")}
    for r in results:
        if r.setup.endswith("+auth+policy"):
            _compare(r, plain[(r.setup.split()[0], r.connections)])
    if round_trips is not None:
        per_request = ", ".join(f"{name} {count:.2f}" for name, count in sorted(round_trips.items()))
        print(f"\nRedis commands per tools/call, with auth+policy (inside evalsha counted too): {per_request}")


def _compare(result: Result, base: Result) -> None:
    ratio = result.requests_per_second / base.requests_per_second
    added = result.p50_ms - base.p50_ms
    print(f"  {result.setup:<24} c{result.connections:<3} throughput {ratio:6.2f}x   added p50 {added:+.3f} ms")


if __name__ == "__main__":
    main()
