"""Chat completions throughput, latency and memory: direct to a fast stub vs through agentgw, in one run.

    make bench            (or: .venv/bin/python benchmarks/chat_completions.py [--seconds 5] [--requests 100000]
                                                                               [--server both])

Needs `wrk` on PATH (Debian/Ubuntu: apt-get install wrk), and granian for
`--server granian|both` (pip install -e ".[bench]"). Everything runs on
127.0.0.1: the stub provider (benchmarks/fast_chat_stub.py) and the gateway,
each in its own process. The gateway routes `stub/fast` to the stub as an
`openai` provider; requests are non-streaming. Two gateways are measured: one
with no policies, and one with the shipped SessionAuthPolicy (a bearer JWT on
every request) and a RateLimitPolicy whose limits are never reached, so the
per-request counting in the session store is in the path but no 429 is.
Each is run on each server named (benchmarks/servers.py), one after the other.

For each: wrk at 64 and at 1 connection (median of --repeat runs), the
gateway's CPU per request, then its RSS after a warm-up and again after
--requests more requests. The memory line is printed, not asserted: a
benchmark reports, the tests decide.
"""

from __future__ import annotations

import argparse
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

import servers
import wrk
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentgw.auth.jwt import mint_token  # noqa: E402
from tests.support import Process, free_port  # noqa: E402

LUA = Path(__file__).with_name("chat_completions.lua")
STUB = Path(__file__).with_name("fast_chat_stub.py")
CHAT_PATH = "/v1/chat/completions"
WARM_UP_REQUESTS = 5_000
BENCH_TIER = "bench"


@dataclass(frozen=True)
class Setup:
    name: str
    secured: bool  # the shipped SessionAuthPolicy, a never-reached RateLimitPolicy, and a bearer token


@dataclass
class Memory:
    setup: str
    server: str
    requests: int
    seconds: float
    errors: int
    rss_before_kib: int
    rss_after_kib: int
    hwm_after_kib: int


def chat_load(port: int, model: str, token: str) -> wrk.Load:
    """The same chat completion for `model`, with `token` as a bearer token unless it is empty."""
    return wrk.Load(f"http://127.0.0.1:{port}{CHAT_PATH}", LUA, {"MODEL": model, "TOKEN": token, "LIMIT": "0"})


def drive(load: wrk.Load, requests: int, connections: int, seconds: int) -> tuple[int, float, int]:
    """About `requests` requests with wrk, or fewer if `seconds` run out first: (requests, seconds, errors).

    wrk has no request count: each of its threads stops itself after its share
    (the Lua LIMIT) and says STOPPED, and once all have, SIGINT ends wrk's wait
    for -d. The count can pass `requests` by the few responses read in the same
    event-loop pass as the last one; up to `connections` - 1 requests still in
    flight then are not counted.
    """
    threads = min(wrk.WRK_THREADS, connections)
    started = time.monotonic()
    wrk_process = subprocess.Popen(
        wrk.command(load, connections, seconds, threads),
        env={**os.environ, **load.env, "LIMIT": str(-(-requests // threads))},
        stdout=subprocess.PIPE,
        text=True,
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
    data = wrk.parse_result("".join(output))
    return int(data["requests"]), time.monotonic() - started, int(data["errors"])


def measure_memory(name: str, server: str, port: int, pid: int, token: str, requests: int, time_limit: int) -> Memory:
    """The gateway's RSS after a warm-up, and again after `requests` more requests."""
    load = chat_load(port, "stub/fast", token)
    drive(load, WARM_UP_REQUESTS, 64, time_limit)
    before = wrk.status_kib(pid, "VmRSS")
    done, seconds, errors = drive(load, requests, 64, time_limit)
    after, peak = wrk.status_kib(pid, "VmRSS"), wrk.status_kib(pid, "VmHWM")
    return Memory(name, server, done, seconds, errors, before, after, peak)


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


def start_gateway(tmp: Path, stub_port: int, setup: Setup, secret: str, server: str) -> Process:
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
    args, env = servers.command(server, config_file, port, 1)
    env |= {"AGENTGW_JWT_SECRET": secret, "BENCH_STUB_API_KEY": "sk-bench"}
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
    parser.add_argument("--server", choices=[*servers.SERVERS, "both"], default="both", help="HTTP server(s)")
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
    results: list[wrk.Result] = []
    memory: list[Memory] = []
    try:
        results += wrk.measure("direct", chat_load(stub_port, "fast", ""), args.seconds, args.repeat)
        for setup in setups:
            for server in servers.choices(args.server):
                gateway = start_gateway(tmp, stub_port, setup, secret, server)
                processes.append(gateway)
                setup_token = token if setup.secured else ""
                assert gateway.process is not None
                pid = gateway.process.pid
                load = chat_load(gateway.port, "stub/fast", setup_token)
                results += wrk.measure(setup.name, load, args.seconds, args.repeat, pid, server)
                memory.append(
                    measure_memory(setup.name, server, gateway.port, pid, setup_token, args.requests, args.time_limit)
                )
                gateway.stop()
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    report(results, memory)


def report(results: list[wrk.Result], memory: list[Memory]) -> None:
    wrk.print_table(results)
    direct = {r.connections: r for r in results if r.setup == "direct"}
    print("\nthrough the gateway, relative to direct (added per request: 1/req/s at c1, less direct's):")
    for r in results:
        if r.setup != "direct":
            base = direct[r.connections]
            ratio = r.requests_per_second / base.requests_per_second
            added_p50_us = (r.p50_ms - base.p50_ms) * 1000
            line = (
                f"  {r.setup:<24} {r.server:<8} c{r.connections:<3}"
                f" throughput {ratio:6.3f}x   added p50 {added_p50_us:+7.0f} us"
            )
            if r.connections == 1:
                added_us = 1e6 / r.requests_per_second - 1e6 / base.requests_per_second
                line += f"   added per request {added_us:+7.0f} us"
            print(line)
    wrk.print_servers_side_by_side(results)
    print("\ngateway RSS (VmRSS, the server process and its workers) after a warm-up, and after the counted run:")
    for m in memory:
        growth = m.rss_after_kib - m.rss_before_kib
        print(
            f"  {m.setup:<24} {m.server:<8} {m.requests} requests in {m.seconds:.1f} s, {m.errors} errors:"
            f" {m.rss_before_kib / 1024:.1f} MiB -> {m.rss_after_kib / 1024:.1f} MiB"
            f" ({growth / 1024:+.1f} MiB, {growth / m.rss_before_kib * 100:+.1f}%),"
            f" peak {m.hwm_after_kib / 1024:.1f} MiB"
        )


if __name__ == "__main__":
    main()
