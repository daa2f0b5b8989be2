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
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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


def wrk(url: str, session_id: str, connections: int, seconds: int, setup: str) -> Result:
    threads = 1 if connections == 1 else WRK_THREADS
    output = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "-s", str(LUA), url],
        env={**os.environ, "SESSION_ID": session_id},
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


async def open_session(port: int, path: str) -> str:
    headers = [
        ("Host", f"127.0.0.1:{port}"),
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ]
    response = await raw_request(port, "POST", path, headers, initialize_body())
    assert response.status == 200, response.body
    session_id = response.header("mcp-session-id")
    assert session_id
    return session_id


def start_gateway(tmp: Path, backend_port: int, store: dict[str, str], workers: int) -> Process:
    port = free_port()
    config = {
        "server": {"listen": f"127.0.0.1:{port}", "metrics_listen": "", "workers": workers},
        "session_store": store,
        "policies": [str(ROOT / "policies")],
        "mcp": {"targets": [{"name": "bench", "backends": [{"url": f"http://127.0.0.1:{backend_port}/mcp"}]}]},
    }
    config_file = tmp / f"gateway-{port}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    args = [sys.executable, "-m", "agentgw", "serve", "--config", str(config_file)]
    return Process(args, port, log=tmp / f"gateway-{port}.log").start()


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


def measure(name: str, port: int, path: str, seconds: int, repeat: int, pid: int | None = None) -> list[Result]:
    """wrk at 64 and at 1 connection, `repeat` times each, the median run of each kept.

    With `pid`, that process's CPU time per request is measured too.
    """
    session_id = asyncio.run(open_session(port, path))
    url = f"http://127.0.0.1:{port}{path}"
    wrk(url, session_id, 16, 2, name)  # warm-up: connection pools, caches
    results = []
    for connections in (64, 1):
        runs = []
        for _ in range(repeat):
            before = cpu_seconds(pid) if pid else 0.0
            result = wrk(url, session_id, connections, seconds, name)
            if pid:
                used = cpu_seconds(pid) - before
                result.cpu_us_per_request = used / (result.requests_per_second * seconds) * 1e6
            runs.append(result)
        runs.sort(key=lambda r: r.requests_per_second)
        results.append(runs[len(runs) // 2])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--redis-workers", type=int, default=2, help="gateway workers with the Redis store")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is reported")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not on PATH (apt-get install wrk)")

    tmp = Path(tempfile.mkdtemp(prefix="agentgw-bench-"))
    backend_port = free_port()
    backend = Process(
        [sys.executable, str(Path(__file__).with_name("fast_backend.py")), str(backend_port)], backend_port
    )
    redis_port = free_port()
    redis = redis_process(redis_port)
    processes = [backend.start(), redis.start()]
    results: list[Result] = []
    round_trips = None
    try:
        results += measure("direct", backend_port, "/mcp", args.seconds, args.repeat)
        gateway = start_gateway(tmp, backend_port, {"type": "memory"}, 1)
        processes.append(gateway)
        results += measure("gateway memory x1", gateway.port, "/mcp/v1", args.seconds, args.repeat, _pid(gateway))
        gateway.stop()

        store = {"type": "redis", "url": f"redis://127.0.0.1:{redis_port}/0"}
        gateway = start_gateway(tmp, backend_port, store, args.redis_workers)
        processes.append(gateway)
        session_id = asyncio.run(open_session(gateway.port, "/mcp/v1"))
        before = redis_commands(redis_port)
        counted = wrk(f"http://127.0.0.1:{gateway.port}/mcp/v1", session_id, 16, 3, "count")
        after = redis_commands(redis_port)
        requests = counted.requests_per_second * 3
        round_trips = {k: (after[k] - before.get(k, 0)) / requests for k in after if after[k] != before.get(k, 0)}
        results += measure(
            f"gateway redis x{args.redis_workers}", gateway.port, "/mcp/v1", args.seconds, args.repeat, _pid(gateway)
        )
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    report(results, round_trips)


def _pid(process: Process) -> int:
    assert process.process is not None
    return process.process.pid


def report(results: list[Result], round_trips: dict[str, float] | None) -> None:
    columns = f"{'setup':<22} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
    print(f"\n{columns} {'gateway CPU us/req':>19}")
    for r in results:
        cpu = f"{r.cpu_us_per_request:.0f}" if r.cpu_us_per_request is not None else "-"
        print(
            f"{r.setup:<22} {r.connections:>5} {r.requests_per_second:>9.0f} {r.p50_ms:>8.3f} {r.p99_ms:>8.3f}"
            f" {r.errors:>6} {cpu:>19}"
        )
    direct = {r.connections: r for r in results if r.setup == "direct"}
    print("\nthrough the gateway, relative to direct:")
    for r in results:
        if r.setup == "direct":
            continue
        base = direct[r.connections]
        print(
            f"  {r.setup:<20} c{r.connections:<3} throughput {r.requests_per_second / base.requests_per_second:6.2f}x"
            f"   added p50 {r.p50_ms - base.p50_ms:+.3f} ms"
        )
    if round_trips is not None:
        per_request = ", ".join(f"{name} {count:.2f}" for name, count in sorted(round_trips.items()))
        print(f"\nRedis commands per tools/call (scripted commands counted inside evalsha): {per_request}")


if __name__ == "__main__":
    main()
