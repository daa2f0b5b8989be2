"""The ways each benchmark runs the gateway: session store, workers, and whether auth and a policy are in the path.

Both benchmarks measure the same four setups, so their figures line up: the
memory store with one worker and the Redis store with several (more than one
worker needs Redis: the sessions are shared), each without policies and with
the shipped SessionAuthPolicy (a bearer JWT on every request) plus the
benchmark's own policy.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import servers
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import Process, free_port  # noqa: E402

MEMORY_STORE = {"type": "memory"}
PLAIN_PREFIX = "gateway "


@dataclass(frozen=True)
class Setup:
    """One way of running the gateway in front of the benchmark's stub."""

    name: str
    store: dict[str, str]
    workers: int
    secured: bool  # SessionAuthPolicy, the benchmark's policy, and a bearer token

    @property
    def plain_name(self) -> str:
        """The name of the same store and workers without auth and policy."""
        return PLAIN_PREFIX + self.name.split(" +")[0]


def gateway_setups(redis_port: int, redis_workers: int, secured_suffix: str) -> list[Setup]:
    """Memory x1 and Redis x`redis_workers`, each plain and secured (named `... <secured_suffix>`)."""
    redis_store = {"type": "redis", "url": f"redis://127.0.0.1:{redis_port}/0"}
    memory, redis = "memory x1", f"redis x{redis_workers}"
    return [
        Setup(PLAIN_PREFIX + memory, MEMORY_STORE, 1, secured=False),
        Setup(f"{memory} {secured_suffix}", MEMORY_STORE, 1, secured=True),
        Setup(PLAIN_PREFIX + redis, redis_store, redis_workers, secured=False),
        Setup(f"{redis} {secured_suffix}", redis_store, redis_workers, secured=True),
    ]


def start_gateway(
    tmp: Path, setup: Setup, server: str, policies: Path, upstreams: dict[str, Any], env: dict[str, str]
) -> Process:
    """The gateway of `setup` on `server`, with `upstreams` (its `mcp` or `llm` config) and `env` added."""
    port = free_port()
    config = {
        "server": {"listen": f"127.0.0.1:{port}", "metrics_listen": "", "workers": setup.workers},
        "session_store": setup.store,
        "policies": [str(policies)],
        **upstreams,
    }
    config_file = tmp / f"gateway-{port}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    args, server_env = servers.command(server, config_file, port, setup.workers)
    # The gateway logs a line per request: into a file in the temp dir, not onto the report.
    return Process(args, port, env=server_env | env, log=tmp / f"gateway-{port}.log").start()
