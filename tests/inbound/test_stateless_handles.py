"""Stateless (2026-07-28) pinning handles live in the handle, not the store: nothing left behind per request."""

from __future__ import annotations

import time
from pathlib import Path

import httpx2

from agentgw.auth.jwt import mint_token
from tests.inbound.test_mcp_sessions import modern_whoami
from tests.support import Process, bearer, free_port, gateway, hs256_auth_policy, mcp_target

SECRET = "stateless-tests-secret-of-at-least-32-characters"
ISSUER = "https://issuer.test"


def sessions_active(metrics_port: int) -> float:
    text = httpx2.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    [line] = [line for line in text.splitlines() if line.startswith("agentgw_sessions_active ")]
    return float(line.split()[1])


async def test_clients_that_never_echo_the_handle_leave_no_records(tmp: Path, backends: list[Process]) -> None:
    metrics_port = free_port()
    config = {
        "server": {"metrics_listen": f"127.0.0.1:{metrics_port}"},
        "mcp": {"targets": [mcp_target("docs", *(b.port for b in backends))]},
    }
    gw = gateway(tmp, config)
    try:
        handles = {(await modern_whoami(gw.port))[2] for _ in range(20)}
        assert sessions_active(metrics_port) == 0
        assert 1 <= len(handles) <= 2  # one handle per backend, whoever asks
    finally:
        gw.stop()


async def test_a_handle_of_another_caller_pins_afresh(tmp: Path, backends: list[Process]) -> None:
    config = {"mcp": {"targets": [mcp_target("docs", *(b.port for b in backends))]}}
    gw = gateway(tmp, config, hs256_auth_policy(ISSUER, "HANDLE_SECRET"), env={"HANDLE_SECRET": SECRET})
    alice, bob = (
        bearer(mint_token(SECRET, sub, [], 600, issuer=ISSUER, audience="agentgw")) for sub in ("alice", "bob")
    )
    try:
        replica, _, handle = await modern_whoami(gw.port, alice)
        again, _, same = await modern_whoami(gw.port, alice, ("X-MCP-Session-ID", handle))
        assert (again, same) == (replica, handle)
        _, _, bobs = await modern_whoami(gw.port, bob, ("X-MCP-Session-ID", handle))
        assert bobs != handle  # not bob's: a fresh handle of his own
        forged = handle.split(".")[0] + ".AAAAAAAAAAAAAAAAAAAAAA"
        _, _, fresh = await modern_whoami(gw.port, alice, ("X-MCP-Session-ID", forged))
        assert fresh != forged
    finally:
        gw.stop()


async def test_a_handle_from_one_replica_pins_at_another_sharing_redis(
    tmp: Path, redis_url: str, backends: list[Process]
) -> None:
    store = {"type": "redis", "url": redis_url, "key_prefix": f"handles{time.monotonic_ns()}:"}
    config = {"session_store": store, "mcp": {"targets": [mcp_target("docs", *(b.port for b in backends))]}}
    first, second = gateway(tmp, config, name="first"), gateway(tmp, config, name="second")
    try:
        for _ in range(4):
            replica, _, handle = await modern_whoami(first.port)
            again, _, same = await modern_whoami(second.port, ("X-MCP-Session-ID", handle))
            assert (again, same) == (replica, handle)
    finally:
        first.stop()
        second.stop()
