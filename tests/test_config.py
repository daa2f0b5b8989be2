"""agentgw.yaml: typed, validated once, env overrides, unknown keys named with file and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agentgw.config import check_upstream_secrets, load_settings
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


# -- auth: credentials the gateway presents upstream (contract 14) ----------------

# The line of the `auth` block's first key in `with_auth`: checks made after the build name this line.
AUTH_LINE = 6
# Planted as an inline secret: it must never come back in an error.
PLANTED = "planted-inline-value-5c1e9a"
OAUTH = ["tokenUrl: https://idp.test/oauth2/token", "clientId: agentgw", "clientSecretEnv: DOCS_CLIENT_SECRET"]
SECRETS_SET = {"DOCS_TOKEN": "t", "DOCS_CLIENT_SECRET": "s"}


def with_auth(auth: list[str], section: str = "mcp") -> str:
    """One MCP target (or A2A agent) whose `auth` block is `auth`, one key a line from AUTH_LINE on."""
    upstreams = "targets" if section == "mcp" else "agents"
    block = "".join(f"        {line}\n" for line in auth)
    return (
        f"{section}:\n  {upstreams}:\n    - name: docs\n      backends: [{{url: http://127.0.0.1:9/}}]\n"
        f"      auth:\n{block}"
    )


def refusal(path: Path, env: dict[str, str]) -> str:
    """The ConfigError loading `path` under `env` raises, as the operator reads it."""
    with pytest.raises(ConfigError) as error:
        check_upstream_secrets(load_settings(path, env=env), env)
    return str(error.value)


def test_a_bearer_token_from_a_variable_is_accepted(tmp: Path) -> None:
    path = write(tmp, with_auth(["type: bearer", "tokenEnv: DOCS_TOKEN"]))
    auth = load_settings(path, env={"DOCS_TOKEN": "t"}).mcp.targets[0].auth
    assert auth is not None
    assert (auth.type, auth.token_env, auth.token_file) == ("bearer", "DOCS_TOKEN", None)


def test_a_header_value_from_a_file_is_accepted(tmp: Path) -> None:
    secret = tmp / "docs-key"
    secret.write_text("k\n")
    path = write(tmp, with_auth(["type: header", "name: X-API-Key", f"valueFile: {secret}"]))
    auth = load_settings(path, env={}).mcp.targets[0].auth
    assert auth is not None
    assert (auth.type, auth.name, auth.value_file, auth.value_env) == ("header", "X-API-Key", str(secret), None)


def test_client_credentials_with_scopes_and_resource_are_accepted(tmp: Path) -> None:
    scopes_and_resource = ['scopes: ["docs:read", "docs:write"]', "resource: https://docs.test/mcp"]
    path = write(tmp, with_auth(["type: oauth2_client_credentials", *OAUTH, *scopes_and_resource]))
    auth = load_settings(path, env={"DOCS_CLIENT_SECRET": "s"}).mcp.targets[0].auth
    assert auth is not None
    assert (auth.type, auth.token_url, auth.client_id, auth.client_secret_env) == (
        "oauth2_client_credentials",
        "https://idp.test/oauth2/token",
        "agentgw",
        "DOCS_CLIENT_SECRET",
    )
    assert (auth.scopes, auth.resource) == (["docs:read", "docs:write"], "https://docs.test/mcp")


def test_token_exchange_with_an_audience_is_accepted(tmp: Path) -> None:
    path = write(tmp, with_auth(["type: token_exchange", *OAUTH, "audience: docs-mcp"]))
    auth = load_settings(path, env={"DOCS_CLIENT_SECRET": "s"}).mcp.targets[0].auth
    assert auth is not None
    assert (auth.type, auth.audience, auth.scopes, auth.resource) == ("token_exchange", "docs-mcp", [], None)


def test_an_a2a_agent_takes_the_same_auth_block(tmp: Path) -> None:
    path = write(tmp, with_auth(["type: bearer", "tokenEnv: DOCS_TOKEN"], section="a2a"))
    auth = load_settings(path, env={"DOCS_TOKEN": "t"}).a2a.agents[0].auth
    assert auth is not None
    assert (auth.type, auth.token_env) == ("bearer", "DOCS_TOKEN")


def test_an_upstream_without_an_auth_block_presents_nothing(tmp: Path) -> None:
    settings = load_settings(write(tmp, FULL), env={})
    assert settings.mcp.targets[0].auth is None and settings.a2a.agents[0].auth is None


@pytest.mark.parametrize("section", ["mcp", "a2a"])
@pytest.mark.parametrize(
    ("auth", "key"),
    [
        pytest.param(["type: bearer", "tokenEnv: DOCS_TOKEN", f"token: {PLANTED}"], "auth.token", id="token"),
        pytest.param(
            ["type: header", "name: X-API-Key", "valueEnv: DOCS_TOKEN", f"value: {PLANTED}"], "auth.value", id="value"
        ),
        pytest.param(
            ["type: oauth2_client_credentials", *OAUTH, f"clientSecret: {PLANTED}"],
            "auth.clientSecret",
            id="clientSecret",
        ),
    ],
)
def test_an_inline_secret_is_refused_by_its_key_without_its_value(
    tmp: Path, section: str, auth: list[str], key: str
) -> None:
    # Otherwise complete, with its variables set: the inline key alone is refused, on its own line.
    path = write(tmp, with_auth(auth, section))
    message = refusal(path, SECRETS_SET)
    assert message.startswith(f"{path}:{AUTH_LINE + len(auth) - 1}:")
    assert key in message
    assert PLANTED not in message


@pytest.mark.parametrize("env", [pytest.param({}, id="unset"), pytest.param({"DOCS_TOKEN": ""}, id="empty")])
def test_a_secret_variable_not_set_is_named_with_its_key(tmp: Path, env: dict[str, str]) -> None:
    path = write(tmp, with_auth(["type: bearer", "tokenEnv: DOCS_TOKEN"]))
    message = refusal(path, env)
    assert message.startswith(f"{path}:{AUTH_LINE}:")
    assert "auth.tokenEnv" in message and "DOCS_TOKEN" in message


def test_a_client_secret_variable_not_set_is_named_with_its_key(tmp: Path) -> None:
    path = write(tmp, with_auth(["type: token_exchange", *OAUTH]))
    message = refusal(path, {})
    assert message.startswith(f"{path}:{AUTH_LINE}:")
    assert "auth.clientSecretEnv" in message and "DOCS_CLIENT_SECRET" in message


@pytest.mark.parametrize("content", [pytest.param(None, id="missing"), "", "\n  \n"])
def test_a_secret_file_missing_or_empty_is_named_with_its_key(tmp: Path, content: str | None) -> None:
    secret = tmp / "docs-key"
    if content is not None:
        secret.write_text(content)
    path = write(tmp, with_auth(["type: header", "name: X-API-Key", f"valueFile: {secret}"]))
    message = refusal(path, {})
    assert message.startswith(f"{path}:{AUTH_LINE}:")
    assert "auth.valueFile" in message


@pytest.mark.parametrize(
    "sources",
    [pytest.param(["tokenEnv: DOCS_TOKEN", "tokenFile: {secret}"], id="both"), pytest.param([], id="neither")],
)
def test_a_secret_needs_exactly_one_source(tmp: Path, sources: list[str]) -> None:
    secret = tmp / "docs-token"
    secret.write_text("t\n")
    lines = [source.format(secret=secret) for source in sources]
    path = write(tmp, with_auth(["type: bearer", *lines]))
    message = refusal(path, SECRETS_SET)
    assert message.startswith(f"{path}:{AUTH_LINE}:")
    assert "auth.tokenEnv" in message and "auth.tokenFile" in message


@pytest.mark.parametrize(
    ("auth", "key"),
    [
        pytest.param(
            ["type: oauth2_client_credentials", *OAUTH[1:]], "auth.tokenUrl", id="client-credentials-without-token-url"
        ),
        pytest.param(
            ["type: oauth2_client_credentials", OAUTH[0], OAUTH[2]],
            "auth.clientId",
            id="client-credentials-without-client-id",
        ),
        pytest.param(["type: token_exchange", *OAUTH[1:]], "auth.tokenUrl", id="token-exchange-without-token-url"),
        pytest.param(
            ["type: token_exchange", OAUTH[0], OAUTH[2]], "auth.clientId", id="token-exchange-without-client-id"
        ),
        pytest.param(["type: header", "valueEnv: DOCS_TOKEN"], "auth.name", id="header-without-name"),
        pytest.param(["type: header", "name: X API Key", "valueEnv: DOCS_TOKEN"], "auth.name", id="header-name-space"),
        pytest.param(
            ["type: oauth2_client_credentials", "tokenUrl: ftp://idp.test/t", *OAUTH[1:]],
            "auth.tokenUrl",
            id="token-url-not-http",
        ),
        pytest.param(["type: magic", "tokenEnv: DOCS_TOKEN"], "auth.type", id="unknown-type"),
        pytest.param(
            ["type: bearer", "tokenEnv: DOCS_TOKEN", "clientSecretEnv: DOCS_CLIENT_SECRET"],
            "auth.clientSecretEnv",
            id="key-of-another-type",
        ),
        pytest.param(
            ["type: oauth2_client_credentials", *OAUTH, "audience: docs"],
            "auth.audience",
            id="audience-without-exchange",
        ),
        pytest.param(["type: header", "name: Host", "valueEnv: DOCS_TOKEN"], "auth.name", id="header-host"),
        pytest.param(
            ["type: header", "name: Transfer-Encoding", "valueEnv: DOCS_TOKEN"], "auth.name", id="header-framing"
        ),
        pytest.param(
            ["type: token_exchange", "tokenUrl: https://user:pw@idp.test/t", *OAUTH[1:]],
            "auth.tokenUrl",
            id="token-url-with-credentials",
        ),
        pytest.param(
            ["type: token_exchange", "tokenUrl: 'http://'", *OAUTH[1:]], "auth.tokenUrl", id="token-url-without-host"
        ),
    ],
)
def test_an_incomplete_or_malformed_auth_block_is_named_with_file_and_line(
    tmp: Path, auth: list[str], key: str
) -> None:
    path = write(tmp, with_auth(auth))
    message = refusal(path, SECRETS_SET)
    assert message.startswith(f"{path}:{AUTH_LINE}:")
    assert key in message


def test_commands_that_only_read_the_config_need_no_upstream_secret(tmp: Path) -> None:
    path = write(tmp, with_auth(["type: bearer", "tokenEnv: DOCS_TOKEN"]))
    settings = load_settings(path, env={})
    assert settings.mcp.targets[0].auth is not None
    with pytest.raises(ConfigError, match="DOCS_TOKEN"):
        check_upstream_secrets(settings, {"DOCS_TOKEN": " \n"})
