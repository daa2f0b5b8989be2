"""The HTTP servers a benchmark can run the gateway on: uvicorn (what `agentgw serve` runs) or granian.

Both serve the same ASGI app. uvicorn is started the shipped way, `agentgw serve`,
client limits included. granian (a Rust HTTP server, `pip install -e ".[bench]"`)
serves the factory uvicorn's workers use, `agentgw.app:app_from_environment`,
with the same choices `agentgw serve` makes where granian has them: uvloop,
HTTP/1.1, no access log, the ASGI lifespan run (health checks, admin listener),
WebSockets on, and the counters shared through files when there are several
workers. What granian has no equivalent for is not emulated: the gateway's
per-connection head/body deadlines and its connection limit (see
agentgw/inbound/client_limits.py); granian bounds only the time to read a
request head and the requests in flight per worker.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

UVICORN = "uvicorn"
GRANIAN = "granian"
SERVERS = (UVICORN, GRANIAN)
APP_FACTORY = "agentgw.app:app_from_environment"


def choices(server: str) -> list[str]:
    """The servers `--server uvicorn|granian|both` names, uvicorn first so it is the baseline."""
    return list(SERVERS) if server == "both" else [server]


def granian_binary() -> str:
    found = shutil.which("granian", path=str(Path(sys.executable).parent)) or shutil.which("granian")
    if found is None:
        sys.exit('granian is not installed (pip install -e ".[bench]")')
    return found


def command(server: str, config_file: Path, port: int, workers: int) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that serve the gateway of `config_file` on `server`."""
    if server == UVICORN:
        return [sys.executable, "-m", "agentgw", "serve", "--config", str(config_file)], {}
    env = {"AGENTGW_CONFIG": str(config_file)}
    if workers > 1:
        # As `agentgw serve` does: any worker may answer a scrape, so the counters live in files.
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="agentgw-metrics-", dir=config_file.parent)
    args = [
        granian_binary(),
        "--interface", "asgi",  # "asgi" runs the lifespan; "asginl" would skip it
        "--factory",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", str(workers),
        "--loop", "uvloop",
        "--http", "1",
        "--no-access-log",
        "--log-level", "warning",
        APP_FACTORY,
    ]  # fmt: skip
    return args, env
