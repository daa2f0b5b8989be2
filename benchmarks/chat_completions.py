"""Chat completions throughput, latency and memory: direct to a fast stub vs through agentgw, in one run.

    make bench            (or: .venv/bin/python benchmarks/chat_completions.py [--seconds 5] [--requests 100000])

Needs `wrk` on PATH (Debian/Ubuntu: apt-get install wrk). Everything runs on
127.0.0.1: the stub provider (benchmarks/fast_chat_stub.py) and the gateway,
each in its own process. The gateway routes `stub/fast` to the stub as an
`openai` provider; requests are non-streaming. Two gateways are measured: one
with no policies, and one with the shipped SessionAuthPolicy (a bearer JWT on
every request) and a RateLimitPolicy whose limits are never reached, so the
per-request counting in the session store is in the path but no 429 is.

For each: wrk at 64 and at 1 connection (median of --repeat runs), the
gateway's CPU per request, then its RSS after a warm-up and again after
--requests more requests. The memory line is printed, not asserted: a
benchmark reports, the tests decide.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentgw.auth.jwt import mint_token  # noqa: E402
from tests.support import Process, free_port  # noqa: E402

LUA = Path(__file__).with_name("chat_completions.lua")
STUB = Path(__file__).with_name("fast_chat_stub.py")
CHAT_PATH = "/v1/chat/completions"
# One wrk thread leaves the most CPU to what is measured (two cores here); it still pushes 100k req/s.
WRK_THREADS = int(os.environ.get("WRK_THREADS", "1"))
WARM_UP_REQUESTS = 5_000
BENCH_TIER = "bench"


@dataclass
class Result:
    setup: str
    connections: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us_per_request: float | None = None


@dataclass(frozen=True)
class Setup:
    name: str
    secured: bool  # the shipped SessionAuthPolicy, a never-reached RateLimitPolicy, and a bearer token


@dataclass
class Memory:
    setup: str
    requests: int
    seconds: float
    errors: int
    rss_before_kib: int
    rss_after_kib: int
    hwm_after_kib: int


def process_tree(pid: int) -> list[int]:
    """The process and its children (uvicorn workers, when there are several)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid] + [int(child) for child in children]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children, from /proc."""
    total = 0.0
    for one in process_tree(pid):
        fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def status_kib(pid: int, field: str) -> int:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM), summed over the process and its children."""
    total = 0
    for one in process_tree(pid):
        for line in Path(f"/proc/{one}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                total += int(line.split()[1])
    return total


def wrk_command(url: str, connections: int, seconds: int, threads: int) -> list[str]:
    return ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "-s", str(LUA), url]


def wrk_env(model: str, token: str, limit: int = 0) -> dict[str, str]:
    return {**os.environ, "MODEL": model, "TOKEN": token, "LIMIT": str(limit)}


def parse_result(output: str) -> dict[str, float]:
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    data: dict[str, float] = json.loads(line[len("RESULT ") :])
    return data


def wrk(url: str, model: str, token: str, connections: int, seconds: int, setup: str) -> Result:
    threads = 1 if connections == 1 else WRK_THREADS
    output = subprocess.run(
        wrk_command(url, connections, seconds, threads),
        env=wrk_env(model, token),
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    data = parse_result(output)
    return Result(
        setup,
        connections,
        data["requests"] / data["seconds"],
        data["p50_us"] / 1000,
        data["p99_us"] / 1000,
        int(data["errors"]),
    )


def drive(url: str, model: str, token: str, requests: int, connections: int, seconds: int) -> tuple[int, float, int]:
    """About `requests` requests with wrk, or fewer if `seconds` run out first: (requests, seconds, errors).

    wrk has no request count: each of its threads stops itself after its share
    (the Lua LIMIT) and says STOPPED, and once all have, SIGINT ends wrk's wait
    for -d. The count can pass `requests` by the few responses read in the same
    event-loop pass as the last one; up to `connections` - 1 requests still in
    flight then are not counted.
    """
    threads = min(WRK_THREADS, connections)
    command = wrk_command(url, connections, seconds, threads)
    started = time.monotonic()
    wrk_process = subprocess.Popen(
        command, env=wrk_env(model, token, -(-requests // threads)), stdout=subprocess.PIPE, text=True
    )
    # wrk ends itself after -d; the watchdog is for a wrk that does not.
    watchdog = threading.Timer(seconds + 30, wrk_process.kill)
    watchdog.start()
    output = []
    stopped = 0
    try:
        assert wrk_process.stdout is not None
        for line in wrk_process.stdout:
            output.append(line)
            if line.startswith("STOPPED"):
                stopped += 1
                if stopped == threads:
                    wrk_process.send_signal(signal.SIGINT)
        wrk_process.wait(timeout=30)
    finally:
        watchdog.cancel()
        if wrk_process.poll() is None:
            wrk_process.kill()
            wrk_process.wait()
    data = parse_result("".join(output))
    return int(data["requests"]), time.monotonic() - started, int(data["errors"])


def measure(
    name: str, port: int, model: str, token: str, seconds: int, repeat: int, pid: int | None = None
) -> list[Result]:
    """wrk at 64 and at 1 connection, `repeat` times each, the median run of each kept.

    With `pid`, that process's CPU time per request is measured too.
    """
    url = f"http://127.0.0.1:{port}{CHAT_PATH}"
    wrk(url, model, token, 16, 2, name)  # warm-up: connection pools, caches
    results = []
    for connections in (64, 1):
        runs = []
        for _ in range(repeat):
            before = cpu_seconds(pid) if pid else 0.0
            result = wrk(url, model, token, connections, seconds, name)
            if pid:
                used = cpu_seconds(pid) - before
                result.cpu_us_per_request = used / (result.requests_per_second * seconds) * 1e6
            runs.append(result)
        runs.sort(key=lambda r: r.requests_per_second)
        results.append(runs[len(runs) // 2])
    return results


def measure_memory(name: str, port: int, pid: int, token: str, requests: int, time_limit: int) -> Memory:
    """The gateway's RSS after a warm-up, and again after `requests` more requests."""
    url = f"http://127.0.0.1:{port}{CHAT_PATH}"
    drive(url, "stub/fast", token, WARM_UP_REQUESTS, 64, time_limit)
    before = status_kib(pid, "VmRSS")
    done, seconds, errors = drive(url, "stub/fast", token, requests, 64, time_limit)
    return Memory(name, done, seconds, errors, before, status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM"))


def write_policies(tmp: Path, secured: bool) -> Path:
    """None, or the shipped policies with the rate limit swapped for one whose limits are never reached."""
    folder = tmp / ("policies-secured" if secured else "policies-none")
    folder.mkdir(exist_ok=True)
    if not secured:
        return folder
    for shipped in (ROOT / "policies").glob("*.yaml"):
        if "RateLimitPolicy" not in shipped.read_text():
            shutil.copy(shipped, folder / shipped.name)
    limits = {
        "apiVersion": "agentgw.dev/v1alpha1",
        "kind": "RateLimitPolicy",
        "metadata": {"name": "bench-limits"},
        "spec": {
            "appliesTo": ["llm"],
            "tierClaim": "tier",
            "defaultTier": BENCH_TIER,
            "tiers": {BENCH_TIER: {"requestsPerMinute": 10**12, "tokensPerMinute": 10**15}},
        },
    }
    (folder / "rate-limits.yaml").write_text(yaml.safe_dump(limits))
    return folder


def start_gateway(tmp: Path, stub_port: int, setup: Setup, secret: str) -> Process:
    port = free_port()
    config = {
        "server": {"listen": f"127.0.0.1:{port}", "metrics_listen": "", "workers": 1},
        "session_store": {"type": "memory"},
        "policies": [str(write_policies(tmp, setup.secured))],
        "llm": {
            "providers": [
                {
                    "name": "stub",
                    "type": "openai",
                    "base_url": f"http://127.0.0.1:{stub_port}/v1",
                    "api_key_env": "BENCH_STUB_API_KEY",
                }
            ]
        },
    }
    config_file = tmp / f"gateway-{port}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    args = [sys.executable, "-m", "agentgw", "serve", "--config", str(config_file)]
    env = {"AGENTGW_JWT_SECRET": secret, "BENCH_STUB_API_KEY": "sk-bench"}
    # The gateway may log a line per request: into a file in the temp dir, not onto the report.
    return Process(args, port, env=env, log=tmp / f"gateway-{port}.log").start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is reported")
    parser.add_argument("--requests", type=int, default=100_000, help="requests between the two RSS readings")
    parser.add_argument(
        "--time-limit", type=int, default=300, help="seconds the RSS run may take at most, whatever the count"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not on PATH (apt-get install wrk)")

    tmp = Path(tempfile.mkdtemp(prefix="agentgw-chat-bench-"))
    secret = secrets.token_urlsafe(32)
    token = mint_token(secret, "bench", [], 3600, issuer="agentgw-dev", audience="agentgw", extra={"tier": BENCH_TIER})
    stub_port = free_port()
    stub = Process([sys.executable, str(STUB), str(stub_port)], stub_port)
    setups = [Setup("gateway", secured=False), Setup("gateway +auth+ratelimit", secured=True)]
    processes = [stub.start()]
    results: list[Result] = []
    memory: list[Memory] = []
    try:
        results += measure("direct", stub_port, "fast", "", args.seconds, args.repeat)
        for setup in setups:
            gateway = start_gateway(tmp, stub_port, setup, secret)
            processes.append(gateway)
            setup_token = token if setup.secured else ""
            pid = _pid(gateway)
            results += measure(setup.name, gateway.port, "stub/fast", setup_token, args.seconds, args.repeat, pid)
            memory.append(measure_memory(setup.name, gateway.port, pid, setup_token, args.requests, args.time_limit))
            gateway.stop()
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    report(results, memory)


def _pid(process: Process) -> int:
    assert process.process is not None
    return process.process.pid


def report(results: list[Result], memory: list[Memory]) -> None:
    columns = f"{'setup':<24} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
    print(f"\n{columns} {'gateway CPU us/req':>19}")
    for r in results:
        cpu = f"{r.cpu_us_per_request:.0f}" if r.cpu_us_per_request is not None else "-"
        print(
            f"{r.setup:<24} {r.connections:>5} {r.requests_per_second:>9.0f} {r.p50_ms:>8.3f} {r.p99_ms:>8.3f}"
            f" {r.errors:>6} {cpu:>19}"
        )
    direct = {r.connections: r for r in results if r.setup == "direct"}
    print("\nthrough the gateway, relative to direct (added per request: 1/req/s at c1, less direct's):")
    for r in results:
        if r.setup != "direct":
            base = direct[r.connections]
            ratio = r.requests_per_second / base.requests_per_second
            added_p50_us = (r.p50_ms - base.p50_ms) * 1000
            line = f"  {r.setup:<24} c{r.connections:<3} throughput {ratio:6.3f}x   added p50 {added_p50_us:+7.0f} us"
            if r.connections == 1:
                added_us = 1e6 / r.requests_per_second - 1e6 / base.requests_per_second
                line += f"   added per request {added_us:+7.0f} us"
            print(line)
    print("\ngateway RSS (VmRSS, process and workers) after a warm-up, and after the counted run:")
    for m in memory:
        growth = m.rss_after_kib - m.rss_before_kib
        print(
            f"  {m.setup:<24} {m.requests} requests in {m.seconds:.1f} s, {m.errors} errors:"
            f" {m.rss_before_kib / 1024:.1f} MiB -> {m.rss_after_kib / 1024:.1f} MiB"
            f" ({growth / 1024:+.1f} MiB, {growth / m.rss_before_kib * 100:+.1f}%),"
            f" peak {m.hwm_after_kib / 1024:.1f} MiB"
        )


if __name__ == "__main__":
    main()
