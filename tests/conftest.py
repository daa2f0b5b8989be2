from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agentgw.sessions.memory import MemorySessionStore
from agentgw.sessions.redis import RedisSessionStore
from agentgw.sessions.store import SessionStore
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


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SessionStore]:
    """Each session store, so the same test proves memory/Redis parity; Redis keys under a prefix of their own."""
    if request.param == "memory":
        created: SessionStore = MemorySessionStore(max_sessions=1000)
    else:
        created = RedisSessionStore(request.getfixturevalue("redis_url"), f"test-{uuid.uuid4().hex}:")
    yield created
    await created.close()
