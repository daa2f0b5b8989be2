"""The end of a benchmark's report: each worker's RSS, and a short summary block to paste."""

from __future__ import annotations

from wrk import Memory, Result

DIRECT = "direct"


def print_memory(memory: list[Memory]) -> None:
    """Each worker's RSS after the warm-up and after the counted run, and its peak."""
    print("\ngateway RSS (VmRSS) per worker process (the server process itself when it has no workers):")
    for m in memory:
        print(f"  {m.setup:<26} {m.server:<8} {m.requests} requests in {m.seconds:.1f} s, {m.errors} errors:")
        for number, worker in enumerate(m.workers, 1):
            before, after, peak = worker.before_kib, worker.after_kib, worker.peak_kib
            if before is None or after is None or peak is None:
                print(f"    worker {number}: ended during the run")
                continue
            growth = after - before
            print(
                f"    worker {number}: {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB"
                f" ({growth / 1024:+.1f} MiB, {growth / before * 100:+.1f}%), peak {peak / 1024:.1f} MiB"
            )


def print_summary(title: str, results: list[Result], memory: list[Memory]) -> None:
    """One line per setup and server: throughput at c64 and its ratio to direct, added p50 at c1, p99 and
    p99/p50 at c64, and each worker's RSS after the warm-up -> after the counted run."""
    by_key = {(r.setup, r.server, r.connections): r for r in results}
    direct_c64, direct_c1 = by_key[(DIRECT, "", 64)], by_key[(DIRECT, "", 1)]
    rss = {(m.setup, m.server): m for m in memory}
    print(f"\n--- summary: {title} ---")
    print(
        f"{'setup':<26} {'server':<8} {'req/s c64':>9} {'x direct':>8} {'added p50 c1':>12}"
        f" {'p99 c64':>9} {'p99/p50 c64':>11}  RSS per worker, MiB: warm -> after (requests)"
    )
    for r in results:
        if r.connections != 64:
            continue
        c1 = by_key[(r.setup, r.server, 1)]
        added_p50 = "-" if r.setup == DIRECT else f"{c1.p50_ms - direct_c1.p50_ms:+.3f} ms"
        line = (
            f"{r.setup:<26} {r.server or '-':<8} {r.requests_per_second:>9.0f}"
            f" {r.requests_per_second / direct_c64.requests_per_second:>7.3f}x {added_p50:>12}"
            f" {r.p99_ms:>6.2f} ms {r.p99_ms / r.p50_ms:>11.2f}"
        )
        if (r.setup, r.server) in rss:
            line += "  " + _rss_per_worker(rss[(r.setup, r.server)])
        print(line)
    print(f"(direct: p50 c1 {direct_c1.p50_ms:.3f} ms; added p50 c1 is the gateway's p50 at c1 less this)")
    print("---")


def _rss_per_worker(m: Memory) -> str:
    workers = [
        "ended"
        if worker.before_kib is None or worker.after_kib is None
        else f"{worker.before_kib / 1024:.1f} -> {worker.after_kib / 1024:.1f}"
        for worker in m.workers
    ]
    return f"{' | '.join(workers)} ({m.requests})"
