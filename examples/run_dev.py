"""`make run`: the example MCP server, the example A2A agent and the gateway in front of them; Ctrl-C stops all three.

The shipped policies (policies/) require a JWT signed with the secret in
AGENTGW_JWT_SECRET: one is generated unless set, and a dev token is printed.

Ports come from the environment, so a second copy can run beside the first (the tests do):
AGENTGW_LISTEN (127.0.0.1:8080) and AGENTGW_METRICS_LISTEN (127.0.0.1:9090), read by the
gateway itself, EXAMPLE_MCP_PORT (9001) and EXAMPLE_A2A_PORT (9101) for the examples behind it.
The rest of the environment reaches the gateway too: AGENTGW_POLICIES=DIR serves other policies.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentgw.auth.jwt import mint_token  # noqa: E402
from agentgw.config import split_host_port  # noqa: E402

CONFIG = ROOT / "examples" / "gateway.yaml"
# agents:planner is what policies/agents.yaml asks of a caller of the example agent.
DEV_SCOPES = ["read:documents", "write:email", "agents:planner"]
DEV_TOKEN_TTL = 12 * 3600
# The backend ports examples/gateway.yaml names; other ports get a copy of it naming those.
DEFAULT_MCP_PORT = 9001
DEFAULT_A2A_PORT = 9101
DEFAULT_GATEWAY = "http://127.0.0.1:8080"  # where the example clients look unless AGENTGW_URL says otherwise


def wait_for(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{what} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not start listening on port {port}")


def gateway_config(mcp_port: int, a2a_port: int, scratch: Path) -> Path:
    """A copy of examples/gateway.yaml pointing at the examples' actual ports, its stdio server run by
    this Python (the one with the MCP SDK installed)."""
    text = CONFIG.read_text().replace("command: [python3,", f"command: [{json.dumps(sys.executable)},")
    text = text.replace(f"127.0.0.1:{DEFAULT_MCP_PORT}/", f"127.0.0.1:{mcp_port}/")
    text = text.replace(f"127.0.0.1:{DEFAULT_A2A_PORT}/", f"127.0.0.1:{a2a_port}/")
    copy = scratch / "gateway.yaml"
    copy.write_text(text)
    return copy


def _reachable(listen: str) -> tuple[str, int]:
    host, port = split_host_port(listen)
    return ("127.0.0.1" if host in ("0.0.0.0", "::") else host), port


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    host, port = _reachable(os.environ.get("AGENTGW_LISTEN") or "127.0.0.1:8080")
    metrics_listen = os.environ.get("AGENTGW_METRICS_LISTEN", "127.0.0.1:9090")
    mcp_port = int(os.environ.get("EXAMPLE_MCP_PORT") or DEFAULT_MCP_PORT)
    a2a_port = int(os.environ.get("EXAMPLE_A2A_PORT") or DEFAULT_A2A_PORT)
    gateway_url = f"http://{host}:{port}"
    examples = ROOT / "examples"
    processes: list[subprocess.Popen[bytes]] = []
    scratch = tempfile.TemporaryDirectory(prefix="agentgw-dev-")
    try:
        backend = subprocess.Popen(
            [
                sys.executable,
                str(examples / "mcp_server.py"),
                "--port",
                str(mcp_port),
                "--name",
                "docs-a",
                "--log-level",
                "WARNING",
            ]
        )
        processes.append(backend)
        agent = subprocess.Popen(
            [sys.executable, str(examples / "a2a_agent.py"), "--port", str(a2a_port), "--name", "planner-a"]
        )
        processes.append(agent)
        wait_for(mcp_port, backend, "the example MCP server")
        wait_for(a2a_port, agent, "the example A2A agent")
        config = gateway_config(mcp_port, a2a_port, Path(scratch.name))
        secret = os.environ.get("AGENTGW_JWT_SECRET") or secrets.token_urlsafe(32)
        gateway = subprocess.Popen(
            [sys.executable, "-m", "agentgw", "serve", "--config", str(config)],
            cwd=ROOT,
            env={**os.environ, "AGENTGW_JWT_SECRET": secret},
        )
        processes.append(gateway)
        wait_for(port, gateway, "the gateway")
        token = mint_token(secret, "dev", DEV_SCOPES, DEV_TOKEN_TTL, issuer="agentgw-dev", audience="agentgw")
        admin = "http://{}:{}/admin/".format(*_reachable(metrics_listen)) if metrics_listen else "off"
        elsewhere = "" if gateway_url == DEFAULT_GATEWAY else f"  export AGENTGW_URL={gateway_url}\n"
        print(
            f"\nagentgw is serving:\n"
            f"  MCP (Streamable HTTP)  {gateway_url}/mcp/v1      (target 'docs': {gateway_url}/mcp/v1/docs)\n"
            f"  MCP virtual server     {gateway_url}/mcp/v1/workspace  (docs and the stdio server 'notes' in one)\n"
            f"  A2A agent 'planner'    {gateway_url}/a2a/v1/planner  (card: .../.well-known/agent-card.json)\n"
            f"  OpenAI-compatible chat {gateway_url}/v1/chat/completions  (models: default, echo/echo)\n"
            f"  health / readiness     {gateway_url}/healthz  {gateway_url}/ready\n"
            f"  example backends       http://127.0.0.1:{mcp_port}/mcp and http://127.0.0.1:{a2a_port}/"
            f" (behind the gateway)\n"
            f"  admin API              {admin} (agentgw tools / audit)\n"
            f"\nDev token (sub=dev, scopes: {' '.join(DEV_SCOPES)}, valid 12h):\n"
            f"  export AGENTGW_TOKEN={token}\n"
            f"{elsewhere}"
            f"Try it:  .venv/bin/python examples/mcp_client.py\n"
            f"         .venv/bin/python examples/a2a_client.py\n"
            f"         .venv/bin/python examples/openai_client.py\n"
            f"Ctrl-C stops all three.\n",
            flush=True,
        )
        gateway.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        scratch.cleanup()


if __name__ == "__main__":
    main()
