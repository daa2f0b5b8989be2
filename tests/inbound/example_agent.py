"""examples/a2a_agent.py on a port the kernel picks, its card naming the port it got:

    python tests/a2a/example_agent.py --port 0 --name planner-a

The example builds its card from `--port`, so it cannot be given port 0 itself: here the
socket is bound first and the app built for the address it got.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from a2a_agent import build_app


def serve(build: Callable[[str], Starlette], port: int) -> None:
    """Bind `port` (0: one the kernel picks), build the app for the URL naming it, and serve it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart takes its port back at once
    sock.bind(("127.0.0.1", port))
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(build(base_url), log_level="warning"))
    print(f"agent running on {base_url}", flush=True)  # the line tests/support.py reads the port from
    server.run(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True, help="replica name shown in answers")
    args = parser.parse_args()
    serve(lambda base_url: build_app(args.name, base_url), args.port)


if __name__ == "__main__":
    main()
