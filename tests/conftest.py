from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentgw.sessions.memory import MemorySessionStore
from agentgw.sessions.redis import RedisSessionStore
from agentgw.sessions.store import SessionStore
from tests.stub_providers import GATEWAY_ENV, StubProvider, start_stub_provider
from tests.support import (
    InProcessGateway,
    Process,
    ThreadServers,
    closed_port,
    mcp_backend,
    start_all,
    start_gateway_in_thread,
    started_redis,
)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server for the whole run, on a free loopback port."""
    server = started_redis(tmp_path_factory.mktemp("redis") / "redis.log")
    yield f"redis://127.0.0.1:{server.port}/0"
    server.stop()


@pytest.fixture(scope="session")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Process]]:
    """Two replicas of the example MCP server, shared by the tests that never stop them."""
    logs = tmp_path_factory.mktemp("backends")
    replicas = start_all(*(mcp_backend(name, logs / f"{name}.log") for name in ("replica-a", "replica-b")))
    yield replicas
    for replica in replicas:
        replica.stop()


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port that refuses every connection for the whole test (`support.closed_port`)."""
    with closed_port() as port:
        yield port


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SessionStore]:
    """Each session store, so the same test proves memory/Redis parity; Redis keys under a prefix of their own."""
    if request.param == "memory":
        created: SessionStore = MemorySessionStore(max_sessions=1000)
    else:
        created = RedisSessionStore.for_url(request.getfixturevalue("redis_url"), f"test-{uuid.uuid4().hex}:")
    yield created
    await created.close()


# -- chat: stub LLM providers and the gateways in front of them ----------------------------------


@pytest.fixture
def thread_servers() -> Iterator[ThreadServers]:
    """The servers a test runs from threads; stopped together after it."""
    servers = ThreadServers()
    yield servers
    servers.stop()


@pytest.fixture
def stub(thread_servers: ThreadServers) -> Callable[..., StubProvider]:
    """`stub("name=a", "status=500")` starts a stub provider with those modes (on `port=` if given)."""

    def start(*modes: str, port: int = 0) -> StubProvider:
        return start_stub_provider(thread_servers, *modes, port=port)

    return start


@pytest.fixture
def serve(tmp: Path, monkeypatch: pytest.MonkeyPatch, thread_servers: ThreadServers) -> Callable[..., InProcessGateway]:
    """`serve(config, policies=..., name=...)` starts a gateway with GATEWAY_ENV.

    They are served from threads (the tests call them with the blocking OpenAI SDK); providers read
    their keys from the process environment, where GATEWAY_ENV is set for the test.
    """
    for name, value in GATEWAY_ENV.items():
        monkeypatch.setenv(name, value)

    def start(config: dict[str, Any], policies: str | None = None, name: str = "gateway") -> InProcessGateway:
        return start_gateway_in_thread(thread_servers, tmp, config, policies, GATEWAY_ENV, name)

    return start
