"""The store's login (contract 17): `username` and `password_env` for an ACL user, and a store that
refuses the gateway's credentials treated as unreachable: `/ready` 503, requests 503, the gateway
serving on."""

from __future__ import annotations

from pathlib import Path

from tests.support import (
    Process,
    in_process_gateway,
    initialize_body,
    mcp_headers,
    mcp_target,
    raw_request,
    started_redis,
)

USER = "agentgw"
PASSWORD = "store-password-for-the-acl-user"


def store_config(redis: Process, backends: list[Process]) -> dict:
    return {
        "session_store": {
            "type": "redis",
            "url": f"redis://127.0.0.1:{redis.port}/0",
            "username": USER,
            "password_env": "STORE_PASSWORD",
            "key_prefix": "login:",
        },
        "mcp": {"targets": [mcp_target("docs", *(b.port for b in backends))]},
    }


async def test_an_acl_user_logs_in_and_wrong_credentials_are_an_unreachable_store(
    tmp: Path, backends: list[Process]
) -> None:
    # Only the ACL user may do anything: the default user is switched off.
    acl = ["--user", "default", "off", "--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all"]
    redis = started_redis(tmp / "redis.log", *acl)
    try:
        config = store_config(redis, backends)
        async with in_process_gateway(tmp, config, env={"STORE_PASSWORD": PASSWORD}, name="right") as gw:
            host = [("Host", f"127.0.0.1:{gw.port}")]
            assert (await raw_request(gw.port, "GET", "/ready", host)).status == 200
            opened = await raw_request(gw.port, "POST", "/mcp/v1", mcp_headers(gw.port), initialize_body())
            assert opened.status == 200, opened.body
        async with in_process_gateway(tmp, config, env={"STORE_PASSWORD": "wrong"}, name="wrong") as gw:
            host = [("Host", f"127.0.0.1:{gw.port}")]
            ready = await raw_request(gw.port, "GET", "/ready", host)
            assert ready.status == 503 and ready.json()["session_store"] == "unreachable"
            refused = await raw_request(gw.port, "POST", "/mcp/v1", mcp_headers(gw.port), initialize_body())
            assert refused.status == 503, refused.body
            assert refused.header("retry-after") is not None
            assert PASSWORD not in refused.body.decode() and "wrong" not in refused.body.decode()
    finally:
        redis.stop()
