"""RateLimitPolicy `appliesTo: [a2a]`: requests per minute per subject on A2A calls (contract 9)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tests.inbound.test_a2a import call, v1_message
from tests.support import Process, gateway_in_process

LIMIT = 3
POLICY = f"""\
apiVersion: agentgw.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: a2a-limits}}
spec:
  appliesTo: [a2a]
  defaultTier: free
  tiers:
    free: {{requestsPerMinute: {LIMIT}}}
"""


async def test_a2a_calls_over_the_limit_are_429(tmp: Path, agents: list[Process]) -> None:
    config: dict[str, Any] = {
        "mcp": {"targets": []},
        "a2a": {"agents": [{"name": "planner", "backends": [{"url": f"http://127.0.0.1:{agents[0].port}/"}]}]},
    }
    async with gateway_in_process(tmp, config, POLICY) as port:
        gw = SimpleNamespace(port=port)
        answered = [await call(gw, "SendMessage", {"message": v1_message(f"hello {n}")}) for n in range(LIMIT + 1)]  # type: ignore[arg-type]
    assert [r.status for r in answered] == [200] * LIMIT + [429]
    assert answered[-1].header("retry-after") is not None
    assert answered[-1].json()["error"]["code"] == -32029
