"""Chat completions throughput, latency and memory: direct to a fast stub vs through agentgw, in one run.

    make bench            (or: .venv/bin/python benchmarks/chat_completions.py [--seconds 5] [--requests 100000]
                                                                               [--server both])

Needs `wrk` on PATH (Debian/Ubuntu: apt-get install wrk), and granian for
`--server granian|both` (pip install -e ".[bench]"). Everything runs on
127.0.0.1: the stub provider (benchmarks/fast_chat_stub.py), a redis-server
for the Redis runs, and the gateway, each in its own process. The gateway
routes `stub/fast` to the stub as an `openai` provider; requests are
non-streaming. Four setups (benchmarks/setups.py): the memory store with 1
worker and the Redis store with --redis-workers, each with no policies and
with the shipped SessionAuthPolicy (a bearer JWT on every request) plus a
RateLimitPolicy whose limits are never reached, so the per-request counting in
the session store is in the path but no 429 is. Each is run on each server
named (benchmarks/servers.py), one after the other.

For each: wrk at 64 and at 1 connection (median of --repeat runs), the
gateway's CPU per request, then, for every setup on every server, the RSS of
each worker process after a warm-up and again after --requests more requests
(at most --time-limit seconds). Prints one row per setup and server, the
gateway/direct ratios, granian against uvicorn, each worker's RSS, and a
closing summary block. The memory lines are printed, not asserted: a
benchmark reports, the tests decide.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

import servers
import setups
import summary
import wrk
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentgw.auth.jwt import mint_token  # noqa: E402
from tests.support import Process, free_port, redis_process  # noqa: E402

LUA = Path(__file__).with_name("chat_completions.lua")
STUB = Path(__file__).with_name("fast_chat_stub.py")
CHAT_PATH = "/v1/chat/completions"
BENCH_TIER = "bench"


def chat_load(port: int, model: str, token: str) -> wrk.Load:
    """The same chat completion for `model`, with `token` as a bearer token unless it is empty."""
    return wrk.Load(f"http://127.0.0.1:{port}{CHAT_PATH}", LUA, {"MODEL": model, "TOKEN": token})


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


def start_gateway(tmp: Path, stub_port: int, setup: setups.Setup, secret: str, server: str) -> Process:
    providers = {
        "llm": {
            "providers": [
                {
                    "name": "stub",
                    "type": "openai",
                    "base_url": f"http://127.0.0.1:{stub_port}/v1",
                    "api_key_env": "BENCH_STUB_API_KEY",
                }
            ]
        }
    }
    env = {"AGENTGW_JWT_SECRET": secret, "BENCH_STUB_API_KEY": "sk-bench"}
    return setups.start_gateway(tmp, setup, server, write_policies(tmp, setup.secured), providers, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run")
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

    tmp = Path(tempfile.mkdtemp(prefix="agentgw-chat-bench-"))
    secret = secrets.token_urlsafe(32)
    token = mint_token(secret, "bench", [], 3600, issuer="agentgw-dev", audience="agentgw", extra={"tier": BENCH_TIER})
    stub_port = free_port()
    stub = Process([sys.executable, str(STUB), str(stub_port)], stub_port)
    redis_port = free_port()
    gateway_setups = setups.gateway_setups(redis_port, args.redis_workers, "+auth+ratelimit")
    processes = [stub.start(), redis_process(redis_port).start()]
    results: list[wrk.Result] = []
    memory: list[wrk.Memory] = []
    try:
        results += wrk.measure(summary.DIRECT, chat_load(stub_port, "fast", ""), args.seconds, args.repeat)
        for setup in gateway_setups:
            for server in servers.choices(args.server):
                gateway = start_gateway(tmp, stub_port, setup, secret, server)
                processes.append(gateway)
                assert gateway.process is not None
                pid = gateway.process.pid
                load = chat_load(gateway.port, "stub/fast", token if setup.secured else "")
                results += wrk.measure(setup.name, load, args.seconds, args.repeat, pid, server)
                memory.append(wrk.measure_memory(setup.name, server, load, pid, args.requests, args.time_limit))
                gateway.stop()
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    report(results, memory)


def report(results: list[wrk.Result], memory: list[wrk.Memory]) -> None:
    wrk.print_table(results)
    direct = {r.connections: r for r in results if r.setup == summary.DIRECT}
    print("\nthrough the gateway, relative to direct (added per request: 1/req/s at c1, less direct's):")
    for r in results:
        if r.setup != summary.DIRECT:
            base = direct[r.connections]
            ratio = r.requests_per_second / base.requests_per_second
            added_p50_us = (r.p50_ms - base.p50_ms) * 1000
            line = (
                f"  {r.setup:<26} {r.server:<8} c{r.connections:<3}"
                f" throughput {ratio:6.3f}x   added p50 {added_p50_us:+7.0f} us"
            )
            if r.connections == 1:
                added_us = 1e6 / r.requests_per_second - 1e6 / base.requests_per_second
                line += f"   added per request {added_us:+7.0f} us"
            print(line)
    wrk.print_servers_side_by_side(results)
    summary.print_memory(memory)
    summary.print_summary("chat completions", results, memory)


if __name__ == "__main__":
    main()
