"""A GuardrailPolicy in force against none (contract 15), in one run: tools/call on a 4 KiB text, chat streaming.

    make bench     (or: .venv/bin/python benchmarks/guardrails.py [--seconds 2] [--repeat 3])

About 90 s with the defaults. On a machine shared with other work, runs of the
same setup differ by tens of percent: the median of many short alternating runs
(--repeat) tells a 15% difference better than a few long ones.

Issue #16 asks that a tools/call with a GuardrailPolicy in force on a 4 KiB
text result stay within 15% of the same call without it, and chat streaming
throughput within 15% too. Everything runs on 127.0.0.1 (needs `wrk`): the
fast backend with its text tools (benchmarks/fast_backend.py --text-tools), the
fast chat stub (benchmarks/fast_chat_stub.py), which streams an answer of 256
chunks when asked to stream, and two gateways in front of both, on uvicorn
with 1 worker and the memory store, running side by side: one with a
GuardrailPolicy naming the target and the provider (`secrets: redact` and one
custom pattern), one with no policy at all. Three loads on each:

1. tools/call of `document`: 4 KiB of prose and JSON-like records, with no
   secret in it. The bound applies here: one scan of a text that needs no change.
2. tools/call of `leaky_document`: the same text with one GitHub-style token in
   it, redacted by the guarded gateway and relayed as is by the other. The
   cost of a redaction, printed without a bound.
3. A streamed chat completion (/v1/chat/completions, `stream: true`): each
   streamed text is held back up to 256 characters and scanned as it goes.
   Requests/s, and chunks/s as the client receives them; the bound applies to
   the requests/s, each request being the same whole answer.

Before measuring, each answer is checked on both gateways: the text arrives
whole, with the token replaced by its marker on the guarded one only. Each load
is run with wrk at 64 and 1 connections on both gateways, the two taking turns
so that a neighbour's load falls on both alike; the median of --repeat runs is
kept, with the gateway's CPU per request. The chat stream's wrk script is
written into the run's temp dir; it loads benchmarks/wrk_io.lua as the others do.

The verdicts are printed, not asserted: a benchmark reports, the tests decide.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import fast_backend
import fast_chat_stub
import mcp_tools_call
import servers
import setups
import side_by_side
import wrk
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentgw.policy.guardrails import Guardrails  # noqa: E402
from agentgw.policy.loader import load_policies  # noqa: E402
from agentgw.policy.model import Traffic  # noqa: E402
from tests.support import Process, free_port, mcp_target, raw_call, raw_request, tool_text  # noqa: E402

TARGET, PROVIDER = "bench", "stub"
MCP_PATH = f"/mcp/v1/{TARGET}"
CHAT_PATH = "/v1/chat/completions"
UNGUARDED, GUARDED = "unguarded", "guarded"
DOCUMENT, LEAKY_DOCUMENT, CHAT_STREAM = "document", "leaky_document", "chat stream"
LOADS = (DOCUMENT, LEAKY_DOCUMENT, CHAT_STREAM)
# Issue #16's bound: the guarded gateway's throughput at least this fraction below the unguarded one's.
ALLOWED_SHORTFALL = 0.15
BOUNDED_LOADS = (DOCUMENT, CHAT_STREAM)
# What tools_call.lua sends, whatever the tool: the text tools take any arguments.
ARGUMENTS = {"a": 20, "b": 22}
REDACTED = "[REDACTED:github_token]"
# Never matched by what the stubs send: it is in the policy so that a custom pattern is in the scan.
CUSTOM_PATTERN = {"name": "employee-id", "regex": "EMP-[0-9]{6}", "action": "redact"}
STREAM_REQUEST = {
    "model": f"{PROVIDER}/{fast_chat_stub.MODEL}",
    "messages": [{"role": "user", "content": "How did the March close go?"}],
    "stream": True,
}
WRK_IO = Path(__file__).with_name("wrk_io.lua")
STREAM_LUA = """\
-- wrk script written by benchmarks/guardrails.py for its run: the same streamed chat completion, again and again.
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
dofile({wrk_io})
"""
DATA = "data: "
DONE = "[DONE]"


@dataclass(frozen=True)
class Side:
    """One of the two gateways: its name, its process, a wrk load per measured call, and how many
    chunks a client receives of one streamed answer through it."""

    name: str
    pid: int
    loads: dict[str, wrk.Load]
    chunks_per_answer: int

    def contender(self, load: str) -> side_by_side.Contender:
        return side_by_side.Contender(setup_name(self.name, load), self.loads[load], self.pid)


def setup_name(side: str, load: str) -> str:
    return f"{side} {load}"


# -- the gateways -----------------------------------------------------------------------


def write_policies(tmp: Path, guarded: bool) -> Path:
    """No policy, or one GuardrailPolicy naming the MCP target and the LLM provider."""
    folder = tmp / ("policies-guarded" if guarded else "policies-none")
    folder.mkdir(exist_ok=True)
    if guarded:
        policy = {
            "apiVersion": "agentgw.dev/v1alpha1",
            "kind": "GuardrailPolicy",
            "metadata": {"name": "bench-guardrails"},
            "spec": {"targetRefs": [TARGET, PROVIDER], "secrets": "redact", "patterns": [CUSTOM_PATTERN]},
        }
        (folder / "guardrails.yaml").write_text(yaml.safe_dump(policy))
    return folder


def check_policies(folder: Path, guarded: bool) -> None:
    """The policies the gateway loads put a guard on both the target and the provider, or on neither."""
    guardrails = Guardrails(load_policies([str(folder)]).guardrails)
    guarded_traffic: tuple[tuple[Traffic, str], ...] = (("mcp", TARGET), ("llm", PROVIDER))
    for traffic, name in guarded_traffic:
        applies = guardrails.guard(traffic, name) is not None
        assert applies == guarded, f"{folder.name}: a guard on {traffic} {name!r} is {applies}"


def start_gateway(tmp: Path, guarded: bool, backend_port: int, stub_port: int) -> Process:
    policies = write_policies(tmp, guarded)
    check_policies(policies, guarded)
    setup = setups.Setup(GUARDED if guarded else UNGUARDED, setups.MEMORY_STORE, 1, secured=False)
    upstreams = {
        "mcp": {"targets": [mcp_target(TARGET, backend_port)]},
        "llm": {"providers": [{"name": PROVIDER, "type": "openai", "base_url": f"http://127.0.0.1:{stub_port}/v1"}]},
    }
    return setups.start_gateway(tmp, setup, servers.UVICORN, policies, upstreams, {})


# -- the checked loads --------------------------------------------------------------------


async def checked_tools_session(port: int, guarded: bool) -> str:
    """A session that has listed the tools once, and in which each text tool's 4 KiB came back whole,
    the token replaced by its marker on the guarded gateway and untouched on the other."""
    session_id = await mcp_tools_call.open_session(port, MCP_PATH, "")
    for tool, sent in fast_backend.TEXT_RESULTS.items():
        answered = await raw_call(port, session_id, tool, ARGUMENTS, MCP_PATH)
        expected = sent.replace(fast_backend.PLANTED_SECRET, REDACTED) if guarded else sent
        assert answered.status == 200 and tool_text(answered) == expected, (tool, answered.body[:300])
    return session_id


async def streamed_chunks(port: int) -> int:
    """The chunks of one streamed answer as a client receives them, checked to hold the stub's whole text."""
    headers = [("Host", f"127.0.0.1:{port}"), ("Content-Type", "application/json")]
    answered = await raw_request(port, "POST", CHAT_PATH, headers, json.dumps(STREAM_REQUEST).encode())
    assert answered.status == 200, answered.body[:300]
    events = [line[len(DATA) :] for line in answered.body.decode().split("\n") if line.startswith(DATA)]
    assert events and events[-1] == DONE, events[-3:]
    chunks = [json.loads(event) for event in events[:-1]]
    text = "".join(choice["delta"].get("content") or "" for chunk in chunks for choice in chunk.get("choices", []))
    assert text == fast_chat_stub.STREAMED_TEXT, text[:300]
    return len(chunks)


def stream_script(tmp: Path) -> Path:
    script = tmp / "chat_stream.lua"
    body = json.dumps(json.dumps(STREAM_REQUEST, separators=(",", ":")))  # a JSON string is a Lua string here
    script.write_text(STREAM_LUA.format(body=body, wrk_io=json.dumps(str(WRK_IO))))
    return script


def side_of(gateway: Process, guarded: bool, script: Path) -> Side:
    assert gateway.process is not None
    port = gateway.port
    session_id = asyncio.run(checked_tools_session(port, guarded))
    mcp_url = f"http://127.0.0.1:{port}{MCP_PATH}"
    loads = {
        tool: wrk.Load(mcp_url, mcp_tools_call.LUA, {"SESSION_ID": session_id, "TOKEN": "", "TOOL": tool})
        for tool in (DOCUMENT, LEAKY_DOCUMENT)
    }
    loads[CHAT_STREAM] = wrk.Load(f"http://127.0.0.1:{port}{CHAT_PATH}", script, {"TOKEN": ""})
    chunks = asyncio.run(streamed_chunks(port))
    return Side(GUARDED if guarded else UNGUARDED, gateway.process.pid, loads, chunks)


# -- the measurement ----------------------------------------------------------------------


def measure_loads(sides: list[Side], seconds: int, repeat: int) -> list[wrk.Result]:
    """Each load on both gateways side by side, every load warmed up on both before any is measured."""
    side_by_side.warm_up(side.contender(load) for load in LOADS for side in sides)
    results = []
    for load in LOADS:
        results += side_by_side.measure([side.contender(load) for side in sides], seconds, repeat, servers.UVICORN)
    return results


# -- the report ---------------------------------------------------------------------------


def print_ratios(results: list[wrk.Result]) -> None:
    print("\nguarded / unguarded, same load and connections (req/s ratio; p50, p99 and CPU as ratios too):")
    for load in LOADS:
        for guarded, plain in side_by_side.pairs(results, setup_name(GUARDED, load), setup_name(UNGUARDED, load)):
            if load in BOUNDED_LOADS:
                within = side_by_side.throughput_ratio(guarded, plain) >= 1 - ALLOWED_SHORTFALL
                verdict = f"{'within' if within else 'OUTSIDE'} the {ALLOWED_SHORTFALL:.0%} bound"
            else:
                verdict = "no bound: the cost of one redaction"
            cpu_difference = (guarded.cpu_us_per_request or 0) - (plain.cpu_us_per_request or 0)
            print(f"  {load:<15} {side_by_side.ratio_columns(guarded, plain)} ({cpu_difference:+.0f} us)   {verdict}")


def print_chunks(results: list[wrk.Result], sides: list[Side]) -> None:
    chunks = {side.name: side.chunks_per_answer for side in sides}
    print(
        f"\nchat stream, chunks as the client receives them"
        f" ({', '.join(f'{name} {count}' for name, count in chunks.items())} per answer):"
    )
    by_key = {(r.setup, r.connections): r for r in results}
    for connections in side_by_side.CONNECTIONS:
        per_second = {
            name: by_key[(setup_name(name, CHAT_STREAM), connections)].requests_per_second * count
            for name, count in chunks.items()
        }
        listed = "   ".join(f"{name} {value:8.0f} chunks/s" for name, value in per_second.items())
        print(f"  c{connections:<3} {listed}   guarded / unguarded {per_second[GUARDED] / per_second[UNGUARDED]:5.3f}x")


# -- the run ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=2, help="length of each wrk run")
    parser.add_argument("--repeat", type=int, default=3, help="wrk runs per gateway, load and connections; the median")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not on PATH (apt-get install wrk)")

    tmp = Path(tempfile.mkdtemp(prefix="agentgw-bench-guardrails-"))
    backend_port, stub_port = free_port(), free_port()
    backend_script = str(Path(__file__).with_name("fast_backend.py"))
    stub_script = str(Path(__file__).with_name("fast_chat_stub.py"))
    processes: list[Process] = []
    results: list[wrk.Result] = []
    sides: list[Side] = []
    try:
        backend = Process([sys.executable, backend_script, str(backend_port), "--text-tools"], backend_port)
        stub = Process([sys.executable, stub_script, str(stub_port)], stub_port)
        processes += [backend, stub]
        backend.start()
        stub.start()
        script = stream_script(tmp)
        for guarded in (False, True):
            gateway = start_gateway(tmp, guarded, backend_port, stub_port)
            processes.append(gateway)
            sides.append(side_of(gateway, guarded, script))
        results = measure_loads(sides, args.seconds, args.repeat)
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    wrk.print_table(results)
    print_ratios(results)
    print_chunks(results, sides)


if __name__ == "__main__":
    main()
