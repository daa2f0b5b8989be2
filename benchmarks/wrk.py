"""Running wrk against a server and reading what it measured, shared by the benchmark scripts.

Every benchmark's Lua script loads benchmarks/wrk_io.lua, which prints one
`RESULT {json}` line when wrk is done; this module runs wrk (for a time, or for
a count of requests), reads that line, keeps the median of repeated runs,
charges a server's CPU time (from /proc) to the requests it answered, and reads
the RSS of each of its workers before and after a long run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# One wrk thread leaves the most CPU to what is measured (two cores here); it still pushes
# 20k+ req/s at the MCP backend and 100k at the chat stub.
WRK_THREADS = int(os.environ.get("WRK_THREADS", "1"))
RESULT_PREFIX = "RESULT "
STOPPED_LINE = "STOPPED"
# Requests before the first RSS reading: imports, pools and caches settled.
WARM_UP_REQUESTS = 5_000


@dataclass
class Result:
    setup: str
    connections: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us_per_request: float | None = None
    server: str = ""  # the HTTP server the gateway ran on; empty for a backend measured directly


@dataclass(frozen=True)
class Load:
    """What wrk sends: its Lua `script` against `url`, with `env` holding what the script reads from os.getenv."""

    url: str
    script: Path
    env: dict[str, str]


@dataclass(frozen=True)
class WorkerRss:
    """One worker's RSS after the warm-up and after the counted run, and its peak; None once it had ended."""

    before_kib: int | None
    after_kib: int | None
    peak_kib: int | None


@dataclass
class Memory:
    """The RSS of each worker of one gateway, around a run of `requests` requests."""

    setup: str
    server: str
    requests: int
    seconds: float
    errors: int
    workers: list[WorkerRss]


def children(pid: int) -> list[int]:
    """The process's children.

    A child is listed under the thread that started it, and granian's workers
    may be started from any thread of the server, so every thread is read.
    """
    found = []
    for thread in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (thread / "children").read_text().split()]
        except FileNotFoundError:  # the thread ended meanwhile
            continue
    return found


def process_tree(pid: int) -> list[int]:
    """The process and all its descendants (uvicorn's or granian's workers)."""
    tree = [pid]
    for child in children(pid):
        tree += process_tree(child)
    return tree


def worker_pids(pid: int) -> list[int]:
    """The processes of a server that answer requests: its workers, or itself when it has none.

    uvicorn with one worker serves in its own process; with more, and granian
    always, a supervisor starts the workers. The supervisor's RSS (and that of
    uvicorn's multiprocessing resource tracker) does not grow with requests, so
    it is left out rather than summed in.
    """
    workers = [child for child in children(pid) if b"multiprocessing.resource_tracker" not in _command_line(child)]
    return workers or [pid]


def _command_line(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children, from /proc."""
    total = 0.0
    for one in process_tree(pid):
        fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def status_kib(pid: int, field: str) -> int | None:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM) of that one process; None once it has ended."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except FileNotFoundError:
        return None
    return next(int(line.split()[1]) for line in lines if line.startswith(field + ":"))


def command(load: Load, connections: int, seconds: int, threads: int) -> list[str]:
    return ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "-s", str(load.script), load.url]


def parse_result(output: str) -> dict[str, float]:
    """The numbers of the RESULT line wrk_io.lua prints."""
    line = next(line for line in output.splitlines() if line.startswith(RESULT_PREFIX))
    data: dict[str, float] = json.loads(line[len(RESULT_PREFIX) :])
    return data


def run(load: Load, connections: int, seconds: int, setup: str) -> Result:
    """One wrk run of `seconds`."""
    threads = 1 if connections == 1 else WRK_THREADS
    output = subprocess.run(
        command(load, connections, seconds, threads),
        env={**os.environ, **load.env, "LIMIT": "0"},
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


def run_requests(load: Load, requests: int, connections: int, seconds: int) -> tuple[int, float, int]:
    """About `requests` requests with wrk, or fewer if `seconds` run out first: (requests, seconds, errors).

    wrk has no request count: each of its threads stops itself after its share
    (the Lua LIMIT) and says STOPPED, and once all have, SIGINT ends wrk's wait
    for -d. The count can pass `requests` by the few responses read in the same
    event-loop pass as the last one; up to `connections` - 1 requests still in
    flight then are not counted.
    """
    threads = min(WRK_THREADS, connections)
    started = time.monotonic()
    wrk_process = subprocess.Popen(
        command(load, connections, seconds, threads),
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
            if line.startswith(STOPPED_LINE):
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


def measure_memory(setup: str, server: str, load: Load, pid: int, requests: int, time_limit: int) -> Memory:
    """The RSS of each worker of the server `pid` after a warm-up, and again after `requests` more requests."""
    run_requests(load, WARM_UP_REQUESTS, 64, time_limit)
    workers = worker_pids(pid)
    before = [status_kib(worker, "VmRSS") for worker in workers]
    done, seconds, errors = run_requests(load, requests, 64, time_limit)
    rss = [
        WorkerRss(rss_before, status_kib(worker, "VmRSS"), status_kib(worker, "VmHWM"))
        for worker, rss_before in zip(workers, before, strict=True)
    ]
    return Memory(setup, server, done, seconds, errors, rss)


def charged_run(load: Load, connections: int, seconds: int, setup: str, pid: int) -> Result:
    """One wrk run of `seconds`, with the CPU time the process `pid` (its descendants' included) spent per request."""
    before = cpu_seconds(pid)
    result = run(load, connections, seconds, setup)
    used = cpu_seconds(pid) - before
    result.cpu_us_per_request = used / (result.requests_per_second * seconds) * 1e6
    return result


def median_run(runs: list[Result]) -> Result:
    """The run of median throughput (of an even count, the faster of the middle two)."""
    return sorted(runs, key=lambda r: r.requests_per_second)[len(runs) // 2]


def measure(
    setup: str, load: Load, seconds: int, repeat: int, pid: int | None = None, server: str = ""
) -> list[Result]:
    """wrk at 64 and at 1 connection, `repeat` times each, the median run of each kept.

    With `pid`, that process's CPU time per request is measured too (its descendants' included).
    """
    run(load, 16, 2, setup)  # warm-up: connection pools, caches
    results = []
    for connections in (64, 1):
        runs = []
        for _ in range(repeat):
            result = (
                charged_run(load, connections, seconds, setup, pid) if pid else run(load, connections, seconds, setup)
            )
            result.server = server
            runs.append(result)
        results.append(median_run(runs))
    return results


def print_table(results: list[Result]) -> None:
    """One row per setup and connection count."""
    columns = f"{'setup':<26} {'server':<8} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
    print(f"\n{columns} {'gateway CPU us/req':>19}")
    for r in results:
        cpu = f"{r.cpu_us_per_request:.0f}" if r.cpu_us_per_request is not None else "-"
        print(
            f"{r.setup:<26} {r.server or '-':<8} {r.connections:>5} {r.requests_per_second:>9.0f}"
            f" {r.p50_ms:>8.3f} {r.p99_ms:>8.3f} {r.errors:>6} {cpu:>19}"
        )


def print_servers_side_by_side(results: list[Result]) -> None:
    """Each server against the first one measured (uvicorn) for the same setup and connections."""
    baseline: dict[tuple[str, int], Result] = {}
    for r in results:
        if r.server:
            baseline.setdefault((r.setup, r.connections), r)
    others = [r for r in results if r.server and baseline[(r.setup, r.connections)] is not r]
    if not others:
        return
    print("\nthe same setup on another server, relative to the first (req/s ratio; p50, p99, CPU differences):")
    for r in others:
        base = baseline[(r.setup, r.connections)]
        line = (
            f"  {r.setup:<26} {r.server} vs {base.server} c{r.connections:<3}"
            f" throughput {r.requests_per_second / base.requests_per_second:6.2f}x"
            f"   p50 {r.p50_ms - base.p50_ms:+.3f} ms   p99 {r.p99_ms - base.p99_ms:+.3f} ms"
        )
        if r.cpu_us_per_request is not None and base.cpu_us_per_request is not None:
            line += f"   CPU {r.cpu_us_per_request - base.cpu_us_per_request:+.0f} us/req"
        print(line)
