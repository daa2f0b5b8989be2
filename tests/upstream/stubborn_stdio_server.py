"""examples/stdio_server.py, but deaf to SIGTERM and alive after its stdin closes: only SIGKILL ends it.

It writes to its stderr when SIGTERM arrives, so a test can tell when it was asked.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

from stdio_server import build_server


def _note_sigterm(signum: int, frame: FrameType | None) -> None:
    print("SIGTERM received", file=sys.stderr, flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _note_sigterm)
    build_server().run("stdio")
    while True:  # stdin closed: a well-behaved server would exit here
        time.sleep(1)
