"""Gateways sharing one real Redis: sessions outlive and cross gateway processes, and outlast Redis going down."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support import (
    Gateway,
    Process,
    gateway,
    in_process_gateway,
    initialize_body,
    mcp_headers,
    mcp_target,
    poll,
    raw_call,
    raw_request,
    raw_session,
    started_redis,
    tool_text,
)


def redis_config(url: str, backends: list[Process], prefix: str) -> dict:
    return {
        "session_store": {"type": "redis", "url": url, "key_prefix": prefix},
        "mcp": {"targets": [mcp_target("docs", *(b.port for b in backends))]},
    }


async def whoami(gw: Gateway, session_id: str) -> tuple[str, int]:
    response = await raw_call(gw.port, session_id, "whoami", {})
    assert response.status == 200, response.body
    replica, count = tool_text(response).split()
    return replica, int(count)


async def test_a_session_made_through_one_gateway_continues_through_another(
    tmp: Path, redis_url: str, backends: list[Process]
) -> None:
    config = redis_config(redis_url, backends, f"t{time.monotonic_ns()}:")
    first, second = gateway(tmp, config, name="first"), gateway(tmp, config, name="second")
    try:
        for _ in range(3):
            session_id = await raw_session(first.port)
            replica, count = await whoami(first, session_id)
            # Same backend, same backend session: the replica's counter keeps climbing.
            assert await whoami(second, session_id) == (replica, count + 1)
            assert await whoami(first, session_id) == (replica, count + 2)
        # A DELETE through one process ends the session for the other.
        headers = [("Host", f"127.0.0.1:{second.port}"), ("Mcp-Session-Id", session_id)]
        assert (await raw_request(second.port, "DELETE", "/mcp/v1", headers)).status == 200
        assert (await raw_call(first.port, session_id, "whoami", {})).status == 404
    finally:
        first.stop()
        second.stop()


async def test_a_gateway_restart_loses_no_session(tmp: Path, redis_url: str, backends: list[Process]) -> None:
    gw = gateway(tmp, redis_config(redis_url, backends, f"t{time.monotonic_ns()}:"))
    try:
        sessions = [await raw_session(gw.port) for _ in range(3)]
        before = [await whoami(gw, s) for s in sessions]
        gw.restart()
        after = [await whoami(gw, s) for s in sessions]
        assert after == [(replica, count + 1) for replica, count in before]
    finally:
        gw.stop()


async def test_redis_down_gives_503_quickly_and_service_resumes(tmp: Path, backends: list[Process]) -> None:
    redis = started_redis(tmp / "redis.log")
    # The process that goes down is Redis; the gateway can live in this one.
    config = redis_config(f"redis://127.0.0.1:{redis.port}/0", backends, "down:")
    try:
        async with in_process_gateway(tmp, config) as gw:
            host = [("Host", f"127.0.0.1:{gw.port}")]
            session_id = await raw_session(gw.port)
            redis.kill()
            started = time.monotonic()
            response = await raw_call(gw.port, session_id, "add", {"a": 1, "b": 1})
            assert response.status == 503
            assert response.json()["error"]["code"] == -32000
            assert time.monotonic() - started < 3.0
            created = await raw_request(gw.port, "POST", "/mcp/v1", mcp_headers(gw.port), initialize_body())
            assert created.status == 503
            ready = await raw_request(gw.port, "GET", "/ready", host)
            assert ready.status == 503
            assert ready.json()["session_store"] == "unreachable"
            assert (await raw_request(gw.port, "GET", "/healthz", host)).status == 200

            redis.start()

            async def serving() -> bool:
                return (await raw_request(gw.port, "GET", "/ready", host)).status == 200

            await poll(serving)
            # This Redis kept nothing on disk: the old session is gone, a new one works.
            assert (await raw_call(gw.port, session_id, "add", {"a": 1, "b": 1})).status == 404
            fresh = await raw_session(gw.port)
            assert tool_text(await raw_call(gw.port, fresh, "add", {"a": 1, "b": 1})) == "2"
    finally:
        redis.stop()


async def test_several_workers_share_sessions_through_redis(tmp: Path, redis_url: str, backends: list[Process]) -> None:
    config = redis_config(redis_url, backends, f"t{time.monotonic_ns()}:")
    config["server"] = {"workers": 2}
    gw = gateway(tmp, config)
    try:
        session_id = await raw_session(gw.port)
        replica, count = await whoami(gw, session_id)
        # Every call is a new connection, so the kernel spreads them over both workers.
        for step in range(1, 9):
            assert await whoami(gw, session_id) == (replica, count + step)
    finally:
        gw.stop()


async def test_memory_store_refuses_several_workers(tmp: Path) -> None:
    import subprocess
    import sys

    config = tmp / "agentgw.yaml"
    config.write_text("server:\n  workers: 2\nsession_store:\n  type: memory\n")
    result = subprocess.run(
        [sys.executable, "-m", "agentgw", "serve", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "workers" in result.stderr
