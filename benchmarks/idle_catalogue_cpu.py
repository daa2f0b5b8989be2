"""Idle CPU of a gateway with 10 targets of 1,000 tools each (issue 11, performance): a measurement, not a test.

Starts Redis, one SDK-built backend listing 1,000 tools (behind all 10 targets), and a
gateway on the Redis store (with `memory` as argument: on the memory store); lists
every target's tools once so each catalogue holds 1,000 entries, then reads the
gateway's CPU time and Redis's command count over an idle interval.

    .venv/bin/python benchmarks/idle_catalogue_cpu.py [redis|memory] [SECONDS]
    .venv/bin/python benchmarks/idle_catalogue_cpu.py backend PORT   # the backend alone
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGETS = 10
TOOLS = 1000


def serve_backend(port: int) -> None:
    from mcp.server.mcpserver import MCPServer

    server = MCPServer(name="many-tools")

    def echo(text: str) -> str:
        return text

    for i in range(TOOLS):
        server.add_tool(echo, name=f"tool_{i:04}", description=f"Echoes its text (tool number {i}).")
    server.run("streamable-http", host="127.0.0.1", port=port, streamable_http_path="/mcp")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(kind: str, seconds: float) -> None:
    import redis.asyncio as aioredis

    from tests.mcp_client import sdk_client
    from tests.support import Process, free_port, gateway, mcp_target, redis_process

    tmp = Path(tempfile.mkdtemp(prefix="idle-cpu-"))
    backend_port, redis_port = free_port(), free_port()
    backend = Process([sys.executable, __file__, "backend", str(backend_port)], backend_port, log=tmp / "backend.log")
    redis = redis_process(redis_port)
    url = f"redis://127.0.0.1:{redis_port}/0"
    store: dict[str, Any] = {"type": "redis", "url": url, "key_prefix": "idle:"} if kind == "redis" else {}
    config: dict[str, Any] = {"mcp": {"targets": [mcp_target(f"t{i}", backend_port) for i in range(TARGETS)]}}
    if store:
        config["session_store"] = store
    backend.start()
    redis.start()
    gw = gateway(tmp, config)
    admin = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        for i in range(TARGETS):
            async with sdk_client(f"{gw.mcp_url}/t{i}") as client:
                listed = len((await client.list_tools()).tools)
        assert gw.process.process is not None
        pid = gw.process.process.pid
        await asyncio.sleep(2)  # let the listing's after-effects settle before measuring
        commands = (await admin.info("stats"))["total_commands_processed"]
        cpu, started = cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(seconds)
        used, elapsed = cpu_seconds(pid) - cpu, time.monotonic() - started
        commands = (await admin.info("stats"))["total_commands_processed"] - commands - 1
        print(
            f"store={kind} targets={TARGETS} tools/target={listed} idle={elapsed:.1f}s "
            f"gateway CPU={used:.3f}s ({100 * used / elapsed:.2f}% of a core) redis commands={commands}"
        )
    finally:
        await admin.aclose()
        gw.stop()
        redis.stop()
        backend.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["backend"]:
        serve_backend(int(sys.argv[2]))
    else:
        asyncio.run(
            measure(sys.argv[1] if len(sys.argv) > 1 else "redis", float(sys.argv[2] if len(sys.argv) > 2 else 20))
        )
