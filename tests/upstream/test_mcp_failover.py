"""Backends that die or forget their sessions (contract 5.3), with real processes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    InProcessGateway,
    Process,
    in_process_gateway,
    initialize_body,
    mcp_backend,
    mcp_headers,
    mcp_target,
    poll,
    raw_call,
    raw_request,
    raw_session,
    start_all,
    tool_text,
)


@pytest.fixture(scope="module")
def replica_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Process]]:
    logs = tmp_path_factory.mktemp("replicas")
    names = ("replica-a", "replica-b")
    started = start_all(*(mcp_backend(name, logs / f"{name}.log") for name in names))
    yield dict(zip(names, started, strict=True))
    for replica in started:
        replica.stop()


@pytest.fixture
def replicas(replica_processes: dict[str, Process]) -> dict[str, Process]:
    """Both replicas up: those an earlier test killed start again, on their own ports."""
    dead = [r for r in replica_processes.values() if r.process is None or r.process.poll() is not None]
    if dead:
        start_all(*dead)
    return replica_processes


def start_gateway(
    tmp: Path, replicas: dict[str, Process], failover: str
) -> contextlib.AbstractAsyncContextManager[InProcessGateway]:
    # The processes that die are backends; the gateway itself can live in this process.
    ports = [r.port for r in replicas.values()]
    target = mcp_target("docs", *ports, failover=failover, health_check_interval="200ms")
    return in_process_gateway(tmp, {"mcp": {"targets": [target]}})


async def whoami(gw: InProcessGateway, session_id: str) -> tuple[str, int]:
    response = await raw_call(gw.port, session_id, "whoami", {})
    assert response.status == 200, response.body
    replica, count = tool_text(response).split()
    return replica, int(count)


async def session_on_a_lost_backend(gw: InProcessGateway, replicas: dict[str, Process], how: str) -> tuple[str, str]:
    """A session, then its backend killed or restarted (same port, its sessions forgotten)."""
    session_id = await raw_session(gw.port)
    pinned, _ = await whoami(gw, session_id)
    if how == "killed":
        replicas[pinned].kill()
    else:
        replicas[pinned].restart_fresh()
    return session_id, pinned


@pytest.mark.parametrize("how", ["killed", "restarted"])
async def test_end_session_answers_404_then_a_new_session_works_elsewhere(
    tmp: Path, replicas: dict[str, Process], how: str
) -> None:
    async with start_gateway(tmp, replicas, "end_session") as gw:
        session_id, pinned = await session_on_a_lost_backend(gw, replicas, how)
        response = await raw_call(gw.port, session_id, "whoami", {})
        assert response.status == 404
        assert response.json()["error"]["code"] == -32600
        # The session is gone for good, and a new one works.
        assert (await raw_call(gw.port, session_id, "whoami", {})).status == 404
        fresh = await raw_session(gw.port)
        replica, count = await whoami(gw, fresh)
        assert count == 1
        if how == "killed":
            assert replica != pinned


@pytest.mark.parametrize("how", ["killed", "restarted"])
async def test_reinitialize_carries_on_under_the_same_session_id(
    tmp: Path, replicas: dict[str, Process], how: str
) -> None:
    async with start_gateway(tmp, replicas, "reinitialize") as gw:
        session_id, pinned = await session_on_a_lost_backend(gw, replicas, how)
        replica, count = await whoami(gw, session_id)
        assert count == 1  # a new backend session, reached through the old gateway id
        if how == "killed":
            assert replica != pinned
        assert await whoami(gw, session_id) == (replica, 2)


async def test_health_checks_keep_new_sessions_off_a_dead_backend(tmp: Path, replicas: dict[str, Process]) -> None:
    async with start_gateway(tmp, replicas, "end_session") as gw:
        replicas["replica-a"].kill()
        for _ in range(4):
            assert (await whoami(gw, await raw_session(gw.port)))[0] == "replica-b"


async def test_ready_turns_503_when_a_target_has_no_healthy_backend(tmp: Path, replicas: dict[str, Process]) -> None:
    async with start_gateway(tmp, replicas, "end_session") as gw:
        host = [("Host", f"127.0.0.1:{gw.port}")]
        assert (await raw_request(gw.port, "GET", "/ready", host)).status == 200
        for replica in replicas.values():
            replica.kill()

        async def not_ready() -> bool:
            return (await raw_request(gw.port, "GET", "/ready", host)).status == 503

        await poll(not_ready)
        body = (await raw_request(gw.port, "GET", "/ready", host)).json()
        assert body["targets"] == {"docs": "no healthy backend"}
        assert (await raw_request(gw.port, "GET", "/healthz", host)).status == 200
        # With every backend gone, an initialize gets a clear 503, not a hang.
        response = await raw_request(gw.port, "POST", "/mcp/v1", mcp_headers(gw.port), initialize_body())
        assert response.status == 503
        assert response.json()["error"]["code"] == -32000


async def test_initialize_tries_the_next_backend_before_health_checks_notice(
    tmp: Path, replicas: dict[str, Process]
) -> None:
    ports = [r.port for r in replicas.values()]
    # Health checks so rare that only the failed initialize itself can reveal the dead replica.
    target = mcp_target("docs", *ports, balance="round_robin", health_check_interval="1h")
    async with in_process_gateway(tmp, {"mcp": {"targets": [target]}}) as gw:
        replicas["replica-a"].kill()
        for _ in range(4):
            assert (await whoami(gw, await raw_session(gw.port)))[0] == "replica-b"


async def test_least_sessions_balances_new_sessions(tmp: Path, replicas: dict[str, Process]) -> None:
    async with start_gateway(tmp, replicas, "end_session") as gw:
        placed = [(await whoami(gw, await raw_session(gw.port)))[0] for _ in range(6)]
        assert sorted(placed) == ["replica-a"] * 3 + ["replica-b"] * 3
