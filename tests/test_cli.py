"""The command line (contract 2): exit codes, one clear stderr line for what is wrong."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml

from tests.support import ROOT

SHIPPED_POLICIES = ROOT / "policies"
# `file:line: message`, as `policy check` prints every problem.
PROBLEM_LINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+): \S")
# The variables agentgw reads: a test sees none of the caller's.
AGENTGW_ENV = ("AGENTGW_", "REDIS_URL", "SESSION_STORE_TYPE", "MCP_ENABLED", "TOOL_VALIDATION_ENABLED")

TOOL_POLICY = """\
apiVersion: agentgw.dev/v1alpha1
kind: ToolPolicy
metadata: {name: only-adders}
spec:
  defaultAction: deny
  allowedTools:
    - name: add
      allowedScopes: ["math:add"]
"""


def agentgw(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m agentgw ARGS` in `cwd`, with no agentgw variable of the caller's environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(AGENTGW_ENV)}
    return subprocess.run(
        [sys.executable, "-m", "agentgw", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**clean, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def write_config(
    tmp: Path, policies: Path, metrics_port: int | None = None, auth: dict[str, Any] | None = None
) -> Path:
    """A config with one MCP target, `docs`, presenting `auth` upstream when given (contract 14)."""
    server = {"listen": "127.0.0.1:0", "metrics_listen": ""}
    if metrics_port is not None:
        server["metrics_listen"] = f"127.0.0.1:{metrics_port}"
    # Never contacted: no command here serves. Port 9 is privileged, so no test process listens there.
    target: dict[str, Any] = {"name": "docs", "backends": [{"url": "http://127.0.0.1:9/mcp"}]}
    if auth is not None:
        target["auth"] = auth
    config = {"server": server, "policies": [str(policies)], "mcp": {"targets": [target]}}
    path = tmp / "agentgw.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def with_config(position: str, config: Path, *command: str) -> list[str]:
    if position == "before":
        return ["--config", str(config), *command]
    return [*command, "--config", str(config)]


# -- policy check ---------------------------------------------------------------


def test_policy_check_passes_the_shipped_policies(tmp: Path) -> None:
    result = agentgw("policy", "check", str(SHIPPED_POLICIES), cwd=tmp)
    assert result.returncode == 0, result.stderr


def test_policy_check_names_every_broken_file_with_its_line(tmp: Path) -> None:
    folder = tmp / "policies"
    folder.mkdir()
    unknown_key = folder / "a-unknown-key.yaml"
    unknown_key.write_text(TOOL_POLICY + "  denyLst: [exec_shell]\n")
    bad_version = folder / "b-bad-version.yaml"
    bad_version.write_text(TOOL_POLICY.replace("agentgw.dev/v1alpha1", "agentgw.dev/v9"))
    (folder / "c-good.yaml").write_text(TOOL_POLICY.replace("only-adders", "good"))

    result = agentgw("policy", "check", str(folder), cwd=tmp)

    assert result.returncode == 1
    problems = result.stderr.strip().splitlines()
    located = [PROBLEM_LINE.match(problem) for problem in problems]
    assert all(located), problems
    assert sorted((m["file"], int(m["line"])) for m in located if m) == [
        (str(unknown_key), 9),
        (str(bad_version), 1),
    ]


@pytest.mark.parametrize(
    "line",
    [
        pytest.param("  <<: {defaultAction: allow}\n", id="merge-key"),
        pytest.param("  denyList: [!shell exec_shell]\n", id="unknown-tag"),
        pytest.param("  denyList: [!!int abc]\n", id="bad-explicit-tag"),
    ],
)
def test_policy_check_names_yaml_that_cannot_be_constructed(tmp: Path, line: str) -> None:
    path = tmp / "tools.yaml"
    path.write_text(TOOL_POLICY + line)
    result = agentgw("policy", "check", str(tmp), cwd=tmp)
    assert result.returncode == 1
    assert one_line(result.stderr).startswith(f"{path}:9:")


def test_policy_check_reads_a_configmap_mount_once(tmp: Path) -> None:
    # The layout kubelet gives a ConfigMap volume: the real files in a hidden timestamped
    # folder, `..data` pointing at it, and one symlink per key.
    mount = tmp / "policies"
    snapshot = mount / "..2025_01_01_00_00_00.000000001"
    snapshot.mkdir(parents=True)
    (mount / "..data").symlink_to(snapshot.name)
    for shipped in SHIPPED_POLICIES.glob("*.yaml"):
        (snapshot / shipped.name).write_text(shipped.read_text())
        (mount / shipped.name).symlink_to(Path("..data") / shipped.name)
    result = agentgw("policy", "check", str(mount), cwd=tmp)
    assert result.returncode == 0, result.stderr


def test_policy_check_of_a_missing_path_fails(tmp: Path) -> None:
    result = agentgw("policy", "check", str(tmp / "no-such-folder"), cwd=tmp)
    assert result.returncode == 1
    assert str(tmp / "no-such-folder") in result.stderr


# -- policy explain -------------------------------------------------------------


def explain(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return agentgw("policy", "explain", "--policies", str(SHIPPED_POLICIES / "tools.yaml"), *args, cwd=tmp)


def test_explain_allows_a_tool_the_scopes_allow_and_names_the_policy(tmp: Path) -> None:
    result = explain(tmp, "--scopes", "read:documents", "--tool", "search_documents")
    assert result.returncode == 0, result.stderr
    assert "allow" in result.stdout and "deny" not in result.stdout
    assert "tool-validation-policy" in result.stdout


def test_explain_without_scopes_denies_and_names_the_scope_that_would_allow(tmp: Path) -> None:
    result = explain(tmp, "--tool", "search_documents")
    assert result.returncode == 1
    assert "deny" in result.stdout and "missing_scope" in result.stdout
    assert "read:documents" in result.stdout


def full_width(text: str) -> str:
    """The same letters from the Unicode full-width block, which NFKC folds back to ASCII."""
    return "".join(chr(ord(char) + 0xFEE0) for char in text)


@pytest.mark.parametrize("tool", ["Exec_Shell", "EXEC_SHELL", full_width("exec_shell"), "Get_Secret_Key"])
def test_explain_denies_a_deny_listed_tool_whatever_its_case_or_width(tmp: Path, tool: str) -> None:
    result = explain(tmp, "--scopes", "read:documents write:email", "--tool", tool)
    assert result.returncode == 1
    assert "deny" in result.stdout and "allow:" not in result.stdout


# -- token ----------------------------------------------------------------------


def test_token_mints_an_hs256_token_with_the_claims_asked_for(tmp: Path) -> None:
    secret = "a-test-secret-of-at-least-32-bytes!!"
    result = agentgw(
        "token", "--secret-env", "CLI_TEST_SECRET", "--sub", "alice", "--scope", "a b",
        "--ttl", "5m", "--iss", "I", "--aud", "A",
        cwd=tmp, env={"CLI_TEST_SECRET": secret},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), secret, algorithms=["HS256"], audience="A", issuer="I")
    assert (claims["sub"], claims["scope"], claims["iss"], claims["aud"]) == ("alice", "a b", "I", "A")
    assert abs(claims["exp"] - (time.time() + 300)) < 30


def test_token_without_its_secret_variable_exits_2(tmp: Path) -> None:
    result = agentgw("token", "--secret-env", "CLI_TEST_UNSET_SECRET", "--sub", "alice", cwd=tmp)
    assert result.returncode == 2
    assert "CLI_TEST_UNSET_SECRET" in one_line(result.stderr)
    assert result.stdout == ""


def test_token_with_a_bad_ttl_exits_2(tmp: Path) -> None:
    result = agentgw(
        "token", "--secret-env", "CLI_TEST_SECRET", "--sub", "alice", "--ttl", "soon",
        cwd=tmp, env={"CLI_TEST_SECRET": "s"},
    )  # fmt: skip
    assert result.returncode == 2
    one_line(result.stderr)
    assert result.stdout == ""


# -- bad command lines ----------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["frobnicate"], id="unknown-command"),
        pytest.param(["policy", "lint", "policies/"], id="unknown-subcommand"),
        pytest.param(["token", "--sub", "alice"], id="missing-secret-env"),
        pytest.param(["policy", "explain", "--scopes", "a"], id="missing-tool"),
        pytest.param(["tools", "list"], id="missing-target"),
        pytest.param(["policy", "check"], id="missing-path"),
    ],
)
def test_a_bad_command_line_exits_2_with_one_line(tmp: Path, args: list[str]) -> None:
    result = agentgw(*args, cwd=tmp)
    assert result.returncode == 2
    one_line(result.stderr)


# -- commands that read the config ----------------------------------------------


@pytest.mark.parametrize("position", ["before", "after"])
def test_tools_list_without_a_running_gateway_fails_cleanly(tmp: Path, dead_port: int, position: str) -> None:
    metrics_port = dead_port  # nothing listens there
    config = write_config(tmp, SHIPPED_POLICIES, metrics_port)
    result = agentgw(*with_config(position, config, "tools", "list", "docs"), cwd=tmp)
    assert result.returncode != 0
    line = one_line(result.stderr)
    assert "Traceback" not in result.stderr
    assert f"127.0.0.1:{metrics_port}" in line


@pytest.mark.parametrize("position", ["before", "after"])
def test_serve_with_an_unset_secret_env_exits_2_naming_the_variable(tmp: Path, position: str) -> None:
    policies = tmp / "policies"
    policies.mkdir()
    (policies / "auth.yaml").write_text(
        "apiVersion: agentgw.dev/v1alpha1\nkind: SessionAuthPolicy\nmetadata: {name: auth}\nspec:\n"
        "  jwtValidation: {issuer: https://issuer.test, secretEnv: CLI_TEST_UNSET_JWT_SECRET}\n"
    )
    config = write_config(tmp, policies)
    result = agentgw(*with_config(position, config, "serve"), cwd=tmp)
    assert result.returncode == 2
    assert "CLI_TEST_UNSET_JWT_SECRET" in one_line(result.stderr)


# Planted as an inline secret: it must never come back on either stream.
PLANTED_SECRET = "planted-inline-value-9d27b4"


def test_serve_with_an_inline_client_secret_exits_2_without_echoing_it(tmp: Path) -> None:
    auth = {
        "type": "oauth2_client_credentials",
        "tokenUrl": "https://idp.test/oauth2/token",
        "clientId": "agentgw",
        "clientSecretEnv": "CLI_TEST_CLIENT_SECRET",
        "clientSecret": PLANTED_SECRET,
    }
    config = write_config(tmp, SHIPPED_POLICIES, auth=auth)
    result = agentgw("serve", "--config", str(config), cwd=tmp, env={"CLI_TEST_CLIENT_SECRET": "s"})
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert f"{config}:" in line and "auth.clientSecret" in line
    assert PLANTED_SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "env", [pytest.param({}, id="unset"), pytest.param({"CLI_TEST_UNSET_UPSTREAM_TOKEN": ""}, id="empty")]
)
def test_serve_with_an_unset_upstream_token_variable_exits_2_naming_it(tmp: Path, env: dict[str, str]) -> None:
    auth = {"type": "bearer", "tokenEnv": "CLI_TEST_UNSET_UPSTREAM_TOKEN"}
    config = write_config(tmp, SHIPPED_POLICIES, auth=auth)
    result = agentgw("serve", "--config", str(config), cwd=tmp, env=env)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert f"{config}:" in line and "auth.tokenEnv" in line and "CLI_TEST_UNSET_UPSTREAM_TOKEN" in line


@pytest.mark.parametrize("position", ["before", "after"])
def test_policy_explain_reads_the_policies_of_the_config(tmp: Path, position: str) -> None:
    policies = tmp / "policies"
    policies.mkdir()
    (policies / "tools.yaml").write_text(TOOL_POLICY)
    config = write_config(tmp, policies)

    explain_add = ["policy", "explain", "--tool", "add"]
    allowed = agentgw(*with_config(position, config, *explain_add, "--scopes", "math:add"), cwd=tmp)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "only-adders" in allowed.stdout
    denied = agentgw(*with_config(position, config, *explain_add), cwd=tmp)
    assert denied.returncode == 1
    assert "math:add" in denied.stdout


def test_agentgw_config_variable_stands_in_for_the_option(tmp: Path) -> None:
    policies = tmp / "policies"
    policies.mkdir()
    (policies / "tools.yaml").write_text(TOOL_POLICY)
    config = write_config(tmp, policies)
    result = agentgw(
        "policy", "explain", "--scopes", "math:add", "--tool", "add", cwd=tmp, env={"AGENTGW_CONFIG": str(config)}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "only-adders" in result.stdout


def test_a_config_yaml_cannot_construct_exits_2_naming_file_and_line(tmp: Path) -> None:
    config = tmp / "agentgw.yaml"
    config.write_text("server:\n  listen: 127.0.0.1:0\n  workers: !!int abc\n")
    result = agentgw("serve", "--config", str(config), cwd=tmp)
    assert result.returncode == 2
    assert f"{config}:3:" in one_line(result.stderr)


def test_a_config_that_fails_validation_exits_2_naming_file_and_line(tmp: Path) -> None:
    config = tmp / "agentgw.yaml"
    config.write_text("server:\n  listen: 127.0.0.1:0\nmcp:\n  targetz: []\n")
    result = agentgw("tools", "list", "docs", "--config", str(config), cwd=tmp)
    assert result.returncode == 2
    assert f"{config}:4:" in one_line(result.stderr)


# -- GuardrailPolicy (contract 15) ----------------------------------------------

GUARDRAIL_POLICY = """\
apiVersion: agentgw.dev/v1alpha1
kind: GuardrailPolicy
metadata: {name: docs-guardrails}
spec:
  targetRefs: [docs]
  secrets: redact
  patterns:
    - {name: employee-id, regex: "EMP-[0-9]{6}", action: block}
  sampling: deny
---
apiVersion: agentgw.dev/v1alpha1
kind: GuardrailPolicy
metadata: {name: strict-llm}
spec:
  appliesTo: [llm]
  secrets: block
"""


def test_policy_check_names_a_guardrail_pattern_that_does_not_compile(tmp: Path) -> None:
    path = tmp / "guardrails.yaml"
    path.write_text(GUARDRAIL_POLICY.replace("EMP-[0-9]{6}", "EMP-[0-9"))
    result = agentgw("policy", "check", str(path), cwd=tmp)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith(f"{path}:8:") and "employee-id" in line


def test_policy_check_passes_a_valid_guardrail_policy(tmp: Path) -> None:
    path = tmp / "guardrails.yaml"
    path.write_text(GUARDRAIL_POLICY)
    result = agentgw("policy", "check", str(path), cwd=tmp)
    assert result.returncode == 0, result.stderr


def explain_guardrails(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp / "guardrails.yaml"
    path.write_text(GUARDRAIL_POLICY)
    return agentgw("policy", "explain", "--policies", str(path), "--guardrails", *args, cwd=tmp)


def test_explain_guardrails_lists_the_policies_and_the_effective_actions(tmp: Path) -> None:
    result = explain_guardrails(tmp, "--target", "docs", "--traffic", "llm")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "docs-guardrails" in lines[0] and "strict-llm" in lines[0]
    assert "  jwt: block" in lines and "  employee-id: block" in lines and "  sampling: deny" in lines
    assert any("sensitiveFields: block" in line for line in lines)


def test_explain_guardrails_covers_every_traffic_kind_by_default(tmp: Path) -> None:
    result = explain_guardrails(tmp, "--target", "docs")
    assert result.returncode == 0, result.stderr
    headings = [line for line in result.stdout.splitlines() if not line.startswith(" ")]
    assert [heading.split()[0] for heading in headings] == ["mcp", "a2a", "llm"]
    assert "  jwt: redact" in result.stdout


def test_explain_guardrails_says_when_none_applies(tmp: Path) -> None:
    result = explain_guardrails(tmp, "--target", "search", "--traffic", "mcp")
    assert result.returncode == 0, result.stderr
    assert "no GuardrailPolicy applies" in result.stdout


def test_explain_takes_a_tool_or_guardrails_not_both(tmp: Path) -> None:
    result = agentgw("policy", "explain", "--tool", "add", "--guardrails", cwd=tmp)
    assert result.returncode == 2
    one_line(result.stderr)
