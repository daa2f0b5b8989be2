"""For the A2A tests: two replicas of the example a2a-sdk agent, shared by the tests that never stop them."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Process, start_all

EXAMPLE_AGENT = Path(__file__).with_name("example_agent.py")
REPLICAS = ("replica-a", "replica-b")


def a2a_agent(name: str, log: Path) -> Process:
    """examples/a2a_agent.py, on a port of its own picking."""
    return Process(lambda port: [sys.executable, str(EXAMPLE_AGENT), "--port", str(port), "--name", name], log=log)


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Process]]:
    logs = tmp_path_factory.mktemp("agents")
    replicas = start_all(*(a2a_agent(name, logs / f"{name}.log") for name in REPLICAS))
    yield replicas
    for replica in replicas:
        replica.stop()
