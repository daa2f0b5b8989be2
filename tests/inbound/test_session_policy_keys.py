"""SessionPolicy `sessionIdHeader` and `stickySession` are honoured, not silently ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentgw.policy.loader import load_policies
from agentgw.typed_yaml import ConfigError
from tests.inbound.test_mcp_sessions import modern_call, modern_headers
from tests.support import (
    Process,
    gateway_in_process,
    initialize_body,
    mcp_headers,
    mcp_target,
    raw_request,
    tool_text,
)


def session_policy(**spec: str) -> str:
    lines = "".join(f"  {key}: {value}\n" for key, value in spec.items())
    return f"apiVersion: agentgw.dev/v1alpha1\nkind: SessionPolicy\nmetadata: {{name: sessions}}\nspec:\n{lines}"


def config(*ports: int) -> dict[str, object]:
    return {"mcp": {"targets": [mcp_target("docs", *ports)]}}


async def whoami(port: int, *extra: tuple[str, str]) -> tuple[str, str | None, str | None]:
    response = await raw_request(
        port, "POST", "/mcp/v1", modern_headers(port, "tools/call", "whoami", *extra), modern_call("whoami", {})
    )
    assert response.status == 200, response.body
    replica = tool_text(response).split()[0]
    return replica, response.header("x-agent-session"), response.header("x-mcp-session-id")


async def test_the_second_session_header_is_the_one_the_policy_names(tmp: Path, backends: list[Process]) -> None:
    policy = session_policy(sessionIdHeader="X-Agent-Session")
    async with gateway_in_process(tmp, config(backends[0].port), policy) as port:
        initialized = await raw_request(port, "POST", "/mcp/v1", mcp_headers(port), initialize_body())
        session_id = initialized.header("mcp-session-id")
        assert session_id is not None
        assert initialized.header("x-agent-session") == session_id
        assert initialized.header("x-mcp-session-id") is None

        ping = b'{"jsonrpc":"2.0","id":3,"method":"ping"}'
        versioned = ("MCP-Protocol-Version", "2025-11-25")
        through_named = mcp_headers(port, ("X-Agent-Session", session_id), versioned)
        assert (await raw_request(port, "POST", "/mcp/v1", through_named, ping)).status == 200
        # The default name means nothing now: a stateful request without a session id.
        through_default = mcp_headers(port, ("X-MCP-Session-ID", session_id), versioned)
        assert (await raw_request(port, "POST", "/mcp/v1", through_default, ping)).status == 400
        conflicting = mcp_headers(port, ("Mcp-Session-Id", session_id), ("X-Agent-Session", "other"), versioned)
        assert (await raw_request(port, "POST", "/mcp/v1", conflicting, ping)).status == 400

        # The stateless revision's pinning handle travels in the same header.
        replica, handle, default = await whoami(port)
        assert handle and default is None
        assert (await whoami(port, ("X-Agent-Session", handle)))[0] == replica


async def test_without_sticky_sessions_stateless_requests_go_to_any_backend(tmp: Path, backends: list[Process]) -> None:
    policy = session_policy(stickySession="false")
    async with gateway_in_process(tmp, config(backends[0].port, backends[1].port), policy) as port:
        _, _, handle = await whoami(port)
        assert handle is None  # nothing to echo: no request is pinned
        replicas = {(await whoami(port))[0] for _ in range(6)}
    assert replicas == {"replica-a", "replica-b"}


@pytest.mark.parametrize("header", ["Authorization", "Mcp-Method", "X Session", "Mcp-Param-Id", "Host"])
def test_a_session_header_that_means_something_else_is_refused_with_its_line(tmp: Path, header: str) -> None:
    policy_file = tmp / "sessions.yaml"
    policy_file.write_text(session_policy(sessionTimeout="30m", sessionIdHeader=f'"{header}"'))
    with pytest.raises(ConfigError) as refused:
        load_policies([str(policy_file)])
    assert refused.value.file == str(policy_file)
    assert refused.value.line > 0
