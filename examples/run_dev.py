"""`make run`: the example MCP server and the gateway in front of it; Ctrl-C stops both.

The shipped policies (policies/) require a JWT signed with the secret in
AGENTGW_JWT_SECRET: one is generated unless set, and a dev token is printed.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentgw.auth.jwt import mint_token  # noqa: E402

DEV_SCOPES = ["read:documents", "write:email"]
DEV_TOKEN_TTL = 12 * 3600
BACKEND_PORT = 9001
GATEWAY = "http://127.0.0.1:8080"


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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    backend = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "mcp_server.py"), "--port", str(BACKEND_PORT), "--name", "docs-a"]
    )
    processes = [backend]
    try:
        wait_for(BACKEND_PORT, backend, "the example MCP server")
        secret = os.environ.get("AGENTGW_JWT_SECRET") or secrets.token_urlsafe(32)
        gateway = subprocess.Popen(
            [sys.executable, "-m", "agentgw", "serve", "--config", str(ROOT / "examples" / "gateway.yaml")],
            cwd=ROOT,
            env={**os.environ, "AGENTGW_JWT_SECRET": secret},
        )
        processes.append(gateway)
        wait_for(8080, gateway, "the gateway")
        token = mint_token(secret, "dev", DEV_SCOPES, DEV_TOKEN_TTL, issuer="agentgw-dev", audience="agentgw")
        print(
            f"\nagentgw is serving:\n"
            f"  MCP (Streamable HTTP)  {GATEWAY}/mcp/v1      (target 'docs': {GATEWAY}/mcp/v1/docs)\n"
            f"  OpenAI-compatible chat {GATEWAY}/v1/chat/completions  (models: default, echo/echo)\n"
            f"  health / readiness     {GATEWAY}/healthz  {GATEWAY}/ready\n"
            f"  example backend        http://127.0.0.1:{BACKEND_PORT}/mcp (behind the gateway)\n"
            f"  admin API              http://127.0.0.1:9090/admin/ (agentgw tools / audit)\n"
            f"\nDev token (sub=dev, scopes: {' '.join(DEV_SCOPES)}, valid 12h):\n"
            f"  export AGENTGW_TOKEN={token}\n"
            f"Try it:  .venv/bin/python examples/mcp_client.py\n"
            f"         .venv/bin/python examples/openai_client.py\n"
            f"Ctrl-C stops both.\n",
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


if __name__ == "__main__":
    main()
