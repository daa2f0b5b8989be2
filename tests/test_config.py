"""agentgw.yaml: typed, validated once, env overrides, unknown keys named with file and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agentgw.config import load_settings
from agentgw.policy.loader import load_policies
from agentgw.typed_yaml import ConfigError
from tests.support import ROOT

FULL = """\
server:
  listen: 127.0.0.1:8080
  metrics_listen: 127.0.0.1:9090
  workers: 1
  max_body_bytes: 4194304
  allowed_hosts: []
  allowed_origins: []
session_store:
  type: memory
  url: redis://127.0.0.1:6379/0
  key_prefix: "agentgw:"
policies: [policies/]
mcp:
  enabled: true
  tool_validation: true
  targets:
    - name: docs
      backends:
        - url: http://127.0.0.1:9001/mcp
        - url: http://127.0.0.1:9002/mcp
      balance: least_sessions
      failover: end_session
      timeout: 60s
a2a:
  agents:
    - name: planner
      backends:
        - url: http://127.0.0.1:9101/
llm:
  providers:
    - name: local
      type: openai
      base_url: http://127.0.0.1:8000/v1
      api_key_env: LOCAL_API_KEY
    - name: echo
      type: echo
  models:
    - name: default
      route: [local/glm-5, echo/echo]
"""


def write(tmp: Path, text: str) -> Path:
    path = tmp / "agentgw.yaml"
    path.write_text(text)
    return path


def test_the_contract_example_loads(tmp: Path) -> None:
    settings = load_settings(write(tmp, FULL), env={})
    target = settings.mcp.targets[0]
    assert (target.name, target.balance, target.failover, target.timeout) == (
        "docs",
        "least_sessions",
        "end_session",
        60,
    )
    assert [b.url for b in target.backends] == ["http://127.0.0.1:9001/mcp", "http://127.0.0.1:9002/mcp"]
    assert settings.session_store.key_prefix == "agentgw:"


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("server:\n  listen: 127.0.0.1:1\n  listne: x\n", 3, "server.listne"),
        ("sessions:\n  type: redis\n", 1, "sessions"),
        ("mcp:\n  targets:\n    - name: a\n      backends: [{url: http://x/mcp}]\n      balanse: rr\n", 5, "balanse"),
    ],
)
def test_unknown_keys_are_named_with_file_and_line(tmp: Path, text: str, line: int, key: str) -> None:
    path = write(tmp, text)
    with pytest.raises(ConfigError) as error:
        load_settings(path, env={})
    assert str(error.value).startswith(f"{path}:{line}:")
    assert key in str(error.value)


@pytest.mark.parametrize(
    "text",
    [
        "session_store:\n  type: postgres\n",
        "server:\n  workers: many\n",
        "mcp:\n  targets:\n    - name: a\n      backends: [{url: http://x/mcp}]\n      timeout: soon\n",
        "mcp:\n  targets:\n    - name: a\n      backends: []\n",
        "mcp:\n  targets:\n    - name: a b\n      backends: [{url: http://x/mcp}]\n",
        "server:\n  workers: 2\n",
        "server: [1, 2\n",
        "a2a:\n  agents:\n    - name: p\n      backends: []\n",
        "a2a:\n  agents:\n    - name: p/q\n      backends: [{url: http://x/}]\n",
        "a2a:\n  agents:\n    - name: p\n      backends: [{url: ftp://x/}]\n",
        "a2a:\n  agents:\n    - {name: p, backends: [{url: http://x/}]}\n    - {name: p, backends: [{url: http://y/}]}\n",
        "llm:\n  providers: [{name: e, type: echo}]\n  retry: {attempts: 0}\n",
        "llm:\n  providers: [{name: e, type: echo}]\n  circuit_breaker: {failures: 0}\n",
    ],
)
def test_invalid_values_are_refused(tmp: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(write(tmp, text), env={})


def test_env_overrides_the_file(tmp: Path) -> None:
    env = {
        "AGENTGW_LISTEN": "127.0.0.1:7000",
        "REDIS_URL": "redis://127.0.0.1:6400/1",
        "MCP_ENABLED": "false",
        "TOOL_VALIDATION_ENABLED": "0",
        "AGENTGW_WORKERS": "3",
        "AGENTGW_POLICIES": "a/:b.yaml",
    }
    settings = load_settings(write(tmp, FULL), env=env)
    assert settings.server.listen == "127.0.0.1:7000"
    assert (settings.session_store.type, settings.session_store.url) == ("redis", "redis://127.0.0.1:6400/1")
    assert settings.mcp.enabled is False and settings.mcp.tool_validation is False
    assert settings.server.workers == 3
    assert settings.policies == ["a/", "b.yaml"]


def test_session_store_type_env_wins_over_redis_url_alone(tmp: Path) -> None:
    settings = load_settings(write(tmp, FULL), env={"REDIS_URL": "redis://x:1/0", "SESSION_STORE_TYPE": "memory"})
    assert settings.session_store.type == "memory"


def test_bad_env_value_is_refused(tmp: Path) -> None:
    with pytest.raises(ConfigError, match="AGENTGW_WORKERS"):
        load_settings(write(tmp, FULL), env={"AGENTGW_WORKERS": "lots"})


def test_session_policy_loads_in_both_api_groups(tmp: Path) -> None:
    for group in ("agentgw.dev/v1alpha1", "kgateway.dev/v1alpha1"):
        (tmp / "p.yaml").write_text(
            f"apiVersion: {group}\nkind: SessionPolicy\nmetadata: {{name: s}}\n"
            "spec:\n  sessionIdHeader: X-MCP-Session-ID\n  sessionTimeout: 45m\n  stickySession: true\n"
        )
        assert load_policies([str(tmp)]).session.session_timeout == 45 * 60


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("apiVersion: agentgw.dev/v1alpha1\nkind: SessionPolicy\nmetadata: {name: s}\nspec:\n  sessionTimeot: 5m\n", 5),
        (
            "apiVersion: agentgw.dev/v1alpha1\nkind: SessionPolicy\nmetadata: {name: s}\n"
            "spec:\n  sessionTimeout: 5 minutes\n",
            5,
        ),
        ("apiVersion: example.com/v1\nkind: SessionPolicy\nmetadata: {name: s}\n", 1),
        ("---\napiVersion: agentgw.dev/v1alpha1\nkind: Mystery\nmetadata: {name: s}\n", 3),
    ],
)
def test_bad_policies_are_named_with_file_and_line(tmp: Path, text: str, line: int) -> None:
    path = tmp / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_policies([str(tmp)])
    assert str(error.value).startswith(f"{path}:{line}:")


def test_shipped_policies_and_example_config_load() -> None:
    settings = load_settings(ROOT / "examples" / "gateway.yaml", env={})
    assert settings.mcp.targets[0].name == "docs"
    load_policies([str(ROOT / "policies")])


def test_serve_with_a_bad_config_exits_2_naming_file_line_and_key(tmp: Path) -> None:
    path = write(tmp, "server:\n  listen: 127.0.0.1:0\n  colour: blue\n")
    result = subprocess.run(
        [sys.executable, "-m", "agentgw", "serve", "--config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert f"{path}:3:" in result.stderr and "server.colour" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_command_line_exits_2() -> None:
    result = subprocess.run([sys.executable, "-m", "agentgw", "serve", "--bogus"], capture_output=True, timeout=30)
    assert result.returncode == 2
