"""Setups measured side by side with wrk and compared with a baseline, shared by the benchmark scripts
that weigh one gateway choice against another (guardrails, virtual servers, store topologies).

On a machine shared with other work, runs of the same setup differ by tens of percent. So the setups
take turns, run after run, and a neighbour's load falls on all of them alike; the median of many
short runs is kept, with the CPU time the gateway spent per request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import wrk

CONNECTIONS = (64, 1)


@dataclass(frozen=True)
class Contender:
    """One setup measured side by side: the setup name its results carry, what wrk sends,
    and the gateway process charged with the CPU time."""

    setup: str
    load: wrk.Load
    pid: int


def warm_up(contenders: Iterable[Contender]) -> None:
    """A short wrk run on each: connection pools, the catalogue, a guard's compiled patterns."""
    for contender in contenders:
        wrk.run(contender.load, 16, 2, contender.setup)


def measure(contenders: list[Contender], seconds: int, repeat: int, server: str) -> list[wrk.Result]:
    """wrk at 64 and at 1 connection on each contender, `repeat` times, the contenders taking turns
    (the first one first on even rounds, last on odd ones); the median run of each contender and
    connection count is kept, with its gateway's CPU time per request. No warm-up: `warm_up` first."""
    turns = list(enumerate(contenders))
    results = []
    for connections in CONNECTIONS:
        runs: list[list[wrk.Result]] = [[] for _ in contenders]
        for round_number in range(repeat):
            for index, contender in turns if round_number % 2 == 0 else turns[::-1]:
                result = wrk.charged_run(contender.load, connections, seconds, contender.setup, contender.pid)
                result.server = server
                runs[index].append(result)
        results += [wrk.median_run(contender_runs) for contender_runs in runs]
    return results


def pairs(results: list[wrk.Result], candidate: str, baseline: str) -> list[tuple[wrk.Result, wrk.Result]]:
    """The candidate setup's result and the baseline setup's, at each connection count."""
    by_key = {(r.setup, r.connections): r for r in results}
    return [(by_key[(candidate, connections)], by_key[(baseline, connections)]) for connections in CONNECTIONS]


def throughput_ratio(candidate: wrk.Result, baseline: wrk.Result) -> float:
    return candidate.requests_per_second / baseline.requests_per_second


def ratio_columns(candidate: wrk.Result, baseline: wrk.Result) -> str:
    """The connections, then the candidate's req/s, p50, p99 and CPU per request as ratios to the
    baseline's (the p50 as a difference too): the middle of a ratio line, each script adding the
    setup before and its verdict after."""
    cpu = (candidate.cpu_us_per_request or 0) / (baseline.cpu_us_per_request or 1)
    return (
        f"c{candidate.connections:<3} req/s {throughput_ratio(candidate, baseline):5.3f}x"
        f"   p50 {candidate.p50_ms / baseline.p50_ms:5.3f}x ({candidate.p50_ms - baseline.p50_ms:+.3f} ms)"
        f"   p99 {candidate.p99_ms / baseline.p99_ms:5.3f}x   CPU/req {cpu:5.3f}x"
    )
