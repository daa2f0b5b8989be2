from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Process, free_port, mcp_backend, redis_process


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server for the whole run, on a free loopback port."""
    port = free_port()
    server = redis_process(port).start()
    yield f"redis://127.0.0.1:{port}/0"
    server.stop()


@pytest.fixture(scope="session")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Process]]:
    """Two replicas of the example MCP server, shared by the tests that never stop them."""
    logs = tmp_path_factory.mktemp("backends")
    replicas = [mcp_backend(free_port(), name, logs / f"{name}.log") for name in ("replica-a", "replica-b")]
    for replica in replicas:
        replica.start()
    yield replicas
    for replica in replicas:
        replica.stop()


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path
