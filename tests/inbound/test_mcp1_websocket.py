"""The WebSocket transport with the client it exists for: mcp 1.x's `websocket_client`, in its own environment.

mcp 2.x (the test environment's) dropped the transport, so mcp 1.x lives in a
virtual environment of its own, `.venv/mcp1`, which `make install` builds.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentgw.auth.jwt import mint_token
from tests.support import (
    ROOT,
    InProcessGateway,
    Process,
    deny_list_policy,
    gateway_in_thread,
    hs256_auth_policy,
    mcp_target,
)

MCP1_ENV = ROOT / ".venv" / "mcp1"
MCP1_PYTHON = MCP1_ENV / "bin" / "python"
MCP1_CLIENT = Path(__file__).with_name("mcp1_websocket_client.py")
SECRET = "mcp1-tests-secret-of-at-least-32-characters"
ISSUER = "https://issuer.test"
POLICIES = hs256_auth_policy(ISSUER, "MCP1_SECRET") + "---\n" + deny_list_policy("docs", "whoami")


@pytest.fixture(scope="session")
def mcp1_python() -> Path:
    # `make install` builds it: nothing is installed at test time.
    assert MCP1_PYTHON.exists(), f"{MCP1_ENV} is missing: run `make install`"
    return MCP1_PYTHON


@pytest.fixture
def served(tmp: Path, backends: list[Process]) -> Iterator[InProcessGateway]:
    config = {"mcp": {"targets": [mcp_target("docs", backends[0].port)]}}
    with gateway_in_thread(tmp, config, POLICIES, env={"MCP1_SECRET": SECRET}) as gw:
        yield gw


def test_mcp1_websocket_client_initializes_lists_calls_and_is_denied(
    mcp1_python: Path, served: InProcessGateway
) -> None:
    token = mint_token(SECRET, "mcp1-user", [], 600, issuer=ISSUER, audience="agentgw")
    url = f"ws://127.0.0.1:{served.port}/mcp/v1/docs/ws?access_token={token}"
    run = subprocess.run(
        [
            str(mcp1_python),
            str(MCP1_CLIENT),
            url,
            "add",
            '{"a": 20, "b": 22}',
            "whoami",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["server"] == "example-docs"
    assert {"add", "search_documents"} <= set(seen["tools"]) and "whoami" not in seen["tools"]
    assert seen["result"] == "42"
    assert seen["denied"] == -32051


def test_mcp1_websocket_client_without_a_token_is_refused(mcp1_python: Path, served: InProcessGateway) -> None:
    url = f"ws://127.0.0.1:{served.port}/mcp/v1/docs/ws"
    run = subprocess.run(
        [str(mcp1_python), str(MCP1_CLIENT), url, "add", "{}", "whoami"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "401" in run.stderr
