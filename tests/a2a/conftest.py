"""Two replicas of the example a2a-sdk agent, shared by the tests that never stop them."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT, Process, free_port

A2A_AGENT = ROOT / "examples" / "a2a_agent.py"
REPLICAS = ("replica-a", "replica-b")


def a2a_agent(port: int, name: str, log: Path | None = None) -> Process:
    return Process([sys.executable, str(A2A_AGENT), "--port", str(port), "--name", name], port, log=log)


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Process]]:
    logs = tmp_path_factory.mktemp("agents")
    replicas = [a2a_agent(free_port(), name, logs / f"{name}.log") for name in REPLICAS]
    for replica in replicas:
        replica.start()
    yield replicas
    for replica in replicas:
        replica.stop()
