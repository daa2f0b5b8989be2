"""RateLimitPolicy `appliesTo: [mcp]`: requests per minute per subject on the MCP endpoint (contract 9)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.hostile_backend import HostileBackend, json_answer
from tests.support import gateway_in_process, mcp_headers, raw_call, raw_request, raw_session

LIMIT = 5
POLICY = f"""\
apiVersion: agentgw.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: mcp-limits}}
spec:
  appliesTo: [mcp]
  defaultTier: free
  tiers:
    free: {{requestsPerMinute: {LIMIT}}}
"""
TOOLS = [{"name": "add", "inputSchema": {"type": "object"}}]


@pytest.fixture
async def backend() -> AsyncIterator[HostileBackend]:
    server = await HostileBackend().start()
    server.answers["tools/list"] = lambda m: json_answer(m, {"tools": TOOLS})
    server.answers["tools/call"] = lambda m: json_answer(m, {"content": [{"type": "text", "text": "4"}]})
    yield server
    await server.stop()


async def test_requests_over_the_limit_are_429_and_never_reach_the_backend(tmp: Path, backend: HostileBackend) -> None:
    config = {"mcp": {"targets": [{"name": "limited", "backends": [{"url": backend.url}]}]}}
    async with gateway_in_process(tmp, config, POLICY) as port:
        session_id = await raw_session(port)  # initialize and its notification: two requests
        answered = [await raw_call(port, session_id, "add", {}) for _ in range(LIMIT)]
    assert [r.status for r in answered] == [200] * (LIMIT - 2) + [429, 429]
    refused = answered[-1]
    assert refused.header("retry-after") is not None
    assert refused.json()["error"]["code"] == -32029
    assert backend.methods().count("tools/call") == LIMIT - 2


async def test_a_policy_for_chat_only_does_not_limit_mcp(tmp: Path, backend: HostileBackend) -> None:
    config = {"mcp": {"targets": [{"name": "limited", "backends": [{"url": backend.url}]}]}}
    async with gateway_in_process(tmp, config, POLICY.replace("[mcp]", "[llm]")) as port:
        session_id = await raw_session(port)
        statuses = [(await raw_call(port, session_id, "add", {})).status for _ in range(LIMIT + 2)]
        unlimited = await raw_request(port, "POST", "/mcp/v1", mcp_headers(port), b"{}")
    assert statuses == [200] * (LIMIT + 2)
    assert unlimited.status != 429
