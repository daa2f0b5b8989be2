"""Stateless (2026-07-28) pinning handles live in the handle, not the store: nothing left behind per request."""

from __future__ import annotations

import time
from pathlib import Path

import httpx2

from agentgw.auth.jwt import mint_token
from tests.inbound.test_mcp_sessions import modern_whoami
from tests.support import Process, bearer, gateway_in_thread, hs256_auth_policy, in_process_gateway, mcp_target

SECRET = "stateless-tests-secret-of-at-least-32-characters"
ISSUER = "https://issuer.test"


def sessions_active(metrics_port: int) -> float:
    text = httpx2.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    [line] = [line for line in text.splitlines() if line.startswith("agentgw_sessions_active ")]
    return float(line.split()[1])


async def test_clients_that_never_echo_the_handle_leave_no_records(tmp: Path, backends: list[Process]) -> None:
    config = {
        "server": {"metrics_listen": "127.0.0.1:0"},
        "mcp": {"targets": [mcp_target("docs", *(b.port for b in backends))]},
    }
    # Served from a thread: the metrics are read with a blocking client.
    with gateway_in_thread(tmp, config) as gw:
        assert gw.admin_port is not None
        handles = {(await modern_whoami(gw.port))[2] for _ in range(20)}
        assert sessions_active(gw.admin_port) == 0
        assert 1 <= len(handles) <= 2  # one handle per backend, whoever asks


async def test_a_handle_of_another_caller_pins_afresh(tmp: Path, backends: list[Process]) -> None:
    config = {"mcp": {"targets": [mcp_target("docs", *(b.port for b in backends))]}}
    policies = hs256_auth_policy(ISSUER, "HANDLE_SECRET")
    alice, bob = (
        bearer(mint_token(SECRET, sub, [], 600, issuer=ISSUER, audience="agentgw")) for sub in ("alice", "bob")
    )
    async with in_process_gateway(tmp, config, policies, env={"HANDLE_SECRET": SECRET}) as gw:
        replica, _, handle = await modern_whoami(gw.port, alice)
        again, _, same = await modern_whoami(gw.port, alice, ("X-MCP-Session-ID", handle))
        assert (again, same) == (replica, handle)
        _, _, bobs = await modern_whoami(gw.port, bob, ("X-MCP-Session-ID", handle))
        assert bobs != handle  # not bob's: a fresh handle of his own
        forged = handle.split(".")[0] + ".AAAAAAAAAAAAAAAAAAAAAA"
        _, _, fresh = await modern_whoami(gw.port, alice, ("X-MCP-Session-ID", forged))
        assert fresh != forged


async def test_a_handle_from_one_replica_pins_at_another_sharing_redis(
    tmp: Path, redis_url: str, backends: list[Process]
) -> None:
    store = {"type": "redis", "url": redis_url, "key_prefix": f"handles{time.monotonic_ns()}:"}
    config = {"session_store": store, "mcp": {"targets": [mcp_target("docs", *(b.port for b in backends))]}}
    async with (
        in_process_gateway(tmp, config, name="first") as first,
        in_process_gateway(tmp, config, name="second") as second,
    ):
        for _ in range(4):
            replica, _, handle = await modern_whoami(first.port)
            again, _, same = await modern_whoami(second.port, ("X-MCP-Session-ID", handle))
            assert (again, same) == (replica, handle)
