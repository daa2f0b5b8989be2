"""The examples as a person runs them: `examples/run_dev.py` (what `make run` starts) on free ports,
then each example client with the dev token it printed, and the policy walkthrough step by step.

Every process is started here and stopped here; run_dev runs in a process group of its own, so
nothing it started can outlive a test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from tests.support import ROOT, free_port, wait_for_port

EXAMPLES = ROOT / "examples"
WALKTHROUGH = EXAMPLES / "POLICY-WALKTHROUGH.md"
DEV_TOKEN = re.compile(r"^\s*export AGENTGW_TOKEN=(\S+)$", re.MULTILINE)
POLICY_DENIED = -32051
# run_dev waits up to 30 s for each of its three children.
START_TIMEOUT = 60.0
START_ATTEMPTS = 3
STOP_TIMEOUT = 30.0
CLIENT_TIMEOUT = 60.0
RELOAD_TIMEOUT = 15.0
# The variables agentgw and the examples read: a test sees none of the caller's.
CALLER_ENV = ("AGENTGW_", "EXAMPLE_", "REDIS_URL", "SESSION_STORE_TYPE", "MCP_ENABLED", "TOOL_VALIDATION_ENABLED")


def clean_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith(CALLER_ENV)}, **extra}


def distinct_free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def wait_for_text(
    log: Path, pattern: re.Pattern[str], process: subprocess.Popen[bytes], timeout: float
) -> re.Match[str]:
    """The first match of `pattern` in what `process` wrote to `log`, within a bound."""
    deadline = time.monotonic() + timeout
    while True:
        found = pattern.search(log.read_text(errors="replace"))
        if found:
            return found
        if process.poll() is not None:
            raise RuntimeError(f"run_dev exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{pattern.pattern!r} not seen in {timeout}s:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)


@dataclass
class DevRun:
    """One `examples/run_dev.py`: the gateway, the example MCP server and A2A agent, on free ports."""

    process: subprocess.Popen[bytes]
    output: IO[bytes]
    log: Path
    policies: Path
    gateway_port: int
    metrics_port: int
    mcp_port: int
    a2a_port: int
    token: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def ports(self) -> list[int]:
        return [self.gateway_port, self.metrics_port, self.mcp_port, self.a2a_port]

    def client_env(self) -> dict[str, str]:
        """What a person exports in a second terminal: the URL, the token, and where the admin API is."""
        return clean_env(
            AGENTGW_URL=self.url,
            AGENTGW_TOKEN=self.token,
            AGENTGW_METRICS_LISTEN=f"127.0.0.1:{self.metrics_port}",
        )

    def wait_for_log(self, pattern: str, timeout: float = RELOAD_TIMEOUT, after: int = 0) -> None:
        """Wait for `pattern` in the output written after offset `after`."""
        deadline = time.monotonic() + timeout
        compiled = re.compile(pattern)
        while not compiled.search(self.log.read_text(errors="replace")[after:]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{pattern!r} not logged in {timeout}s:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.1)

    def log_size(self) -> int:
        return len(self.log.read_text(errors="replace"))

    def terminate(self) -> int:
        """SIGTERM, as a service manager stops `make run`; its children are run_dev's to stop. Its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def stop(self) -> None:
        try:
            self.terminate()
        finally:
            # Whatever run_dev left behind is in the process group made for it: nothing outlives the test.
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.output.close()


def start_dev(tmp: Path) -> DevRun:
    """run_dev.py serving a copy of the shipped policies, so a test may change them.

    run_dev takes the ports it is told (as a person runs it), not port 0: should another process
    take one of them before run_dev's children bind it, run_dev exits, and is started again on others.
    """
    policies = tmp / "policies"
    shutil.copytree(ROOT / "policies", policies)
    for _ in range(START_ATTEMPTS - 1):
        with contextlib.suppress(RuntimeError):  # it exited before it served: on to other ports
            return _started_dev(tmp, policies)
    return _started_dev(tmp, policies)


def _started_dev(tmp: Path, policies: Path) -> DevRun:
    gateway_port, metrics_port, mcp_port, a2a_port = distinct_free_ports(4)
    env = clean_env(
        AGENTGW_LISTEN=f"127.0.0.1:{gateway_port}",
        AGENTGW_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
        EXAMPLE_MCP_PORT=str(mcp_port),
        EXAMPLE_A2A_PORT=str(a2a_port),
        AGENTGW_POLICIES=str(policies),
        PYTHONUNBUFFERED="1",
    )
    log = tmp / "run_dev.log"
    output = open(log, "wb")
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "run_dev.py")],
        cwd=ROOT,
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    dev = DevRun(process, output, log, policies, gateway_port, metrics_port, mcp_port, a2a_port)
    try:
        dev.token = wait_for_text(log, DEV_TOKEN, process, START_TIMEOUT).group(1)
        wait_for_port(gateway_port, process)
    except BaseException:
        dev.stop()
        raise
    return dev


def run_example(dev: DevRun, script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=ROOT,
        env=dev.client_env(),
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def agentgw(dev: DevRun, *args: str) -> subprocess.CompletedProcess[str]:
    """The agentgw command, from the repository root, as the walkthrough runs it."""
    return subprocess.run(
        [sys.executable, "-m", "agentgw", *args],
        cwd=ROOT,
        env=dev.client_env(),
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
    )


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevRun]:
    running = start_dev(tmp_path_factory.mktemp("run_dev"))
    yield running
    running.stop()


@pytest.fixture
def fresh_dev(tmp_path: Path) -> Iterator[DevRun]:
    """A run_dev of the test's own, for a test that changes its policies or stops it."""
    running = start_dev(tmp_path)
    yield running
    running.stop()


# -- make run, and a client with the token it printed ------------------------------


def test_run_dev_prints_the_addresses_it_serves_and_a_dev_token(dev: DevRun) -> None:
    banner = dev.log.read_text()

    assert f"{dev.url}/mcp/v1" in banner
    assert f"{dev.url}/a2a/v1/planner" in banner
    assert f"export AGENTGW_URL={dev.url}" in banner
    assert dev.token.count(".") == 2  # a JWT


def test_mcp_client_initializes_lists_and_calls_through_the_gateway(dev: DevRun) -> None:
    lines = run_example(dev, "mcp_client.py").splitlines()

    assert lines[0].startswith("initialized: example-docs (protocol 2025-11-25)"), lines
    assert lines[1] == "tools: search_documents, add, whoami, summarize, confirm"
    assert lines[2] == "add{'a': 20, 'b': 22} -> 42"
    assert lines[3] == "search_documents{'query': 'redis'} -> With Redis, every gateway replica sees every session."
    assert lines[4] == "whoami{} -> docs-a 1"


def test_mcp_client_reaches_a_target_by_name(dev: DevRun) -> None:
    output = run_example(dev, "mcp_client.py", f"{dev.url}/mcp/v1/docs")

    assert "add{'a': 20, 'b': 22} -> 42" in output.splitlines()


def test_openai_client_chats_through_the_gateway(dev: DevRun) -> None:
    lines = run_example(dev, "openai_client.py").splitlines()

    assert lines == [
        "answer: Hello, gateway",
        "stream: ['one', ' two', ' three']",
        "models: ['default', 'echo/echo']",
    ]


def test_a2a_client_talks_to_the_example_agent_through_the_gateway(dev: DevRun) -> None:
    lines = run_example(dev, "a2a_client.py").splitlines()

    assert lines[0] == f"card: planner at {dev.url}/a2a/v1/planner"  # the card names the gateway, never the agent
    assert lines[1] == "skills: echo"
    assert lines[2] == "answer: planner-a: Plan a trip (TASK_STATE_COMPLETED)"
    assert re.fullmatch(r"task \S+: TASK_STATE_COMPLETED", lines[3]), lines[3]
    assert lines[4] == "stream: planner-a: Plan a trip, streamed"
    assert lines[5].startswith("events: ") and lines[5].endswith("artifact_update, status_update"), lines[5]


def test_a_client_without_the_token_is_turned_away(dev: DevRun) -> None:
    env = {**dev.client_env(), "AGENTGW_TOKEN": ""}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "openai_client.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
    )

    assert result.returncode != 0
    assert "401" in result.stderr


def test_stopping_run_dev_stops_the_gateway_and_both_examples(fresh_dev: DevRun) -> None:
    assert fresh_dev.terminate() == 0

    with pytest.raises(ProcessLookupError):  # nothing is left in run_dev's process group
        os.killpg(fresh_dev.process.pid, 0)
    for port in fresh_dev.ports:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_claude_desktop_config_runs_mcp_remote_against_the_gateway_with_the_token_in_a_header() -> None:
    config = json.loads((EXAMPLES / "claude_desktop_config.json").read_text())
    server = config["mcpServers"]["agentgw"]

    assert (server["command"], server["args"][0]) == ("npx", "mcp-remote")
    assert server["args"][1] == "http://127.0.0.1:8080/mcp/v1"  # where `make run` serves MCP
    header = server["args"][server["args"].index("--header") + 1]
    assert header == "Authorization:${AUTH_HEADER}"  # no space: Claude Desktop on Windows splits args on spaces
    assert server["env"]["AUTH_HEADER"].startswith("Bearer ")


# -- examples/POLICY-WALKTHROUGH.md, step by step -----------------------------------


def walkthrough_policy() -> str:
    """The ToolPolicy the walkthrough has the reader write (its `cat > ... <<'EOF'` block)."""
    found = re.search(r"^cat > /tmp/no-whoami\.yaml <<'EOF'\n(.*?\n)EOF$", WALKTHROUGH.read_text(), re.DOTALL | re.M)
    assert found is not None, "the walkthrough no longer writes /tmp/no-whoami.yaml"
    return found.group(1)


def mcp_calls(output: str) -> dict[str, str]:
    """`name{args} -> answer` lines of mcp_client.py, by tool name."""
    calls = {}
    for line in output.splitlines():
        name, brace, rest = line.partition("{")
        if brace and " -> " in rest:
            calls[name] = rest.split(" -> ", 1)[1]
    return calls


def test_walkthrough_a_policy_denies_a_tool_after_a_hot_reload_and_the_audit_shows_it(
    fresh_dev: DevRun, tmp_path: Path
) -> None:
    policy = walkthrough_policy()
    draft = tmp_path / "no-whoami.yaml"

    # A typo is caught before it goes live, with file:line.
    draft.write_text(policy.replace("denyList", "denylist"))
    typo = agentgw(fresh_dev, "policy", "check", str(fresh_dev.policies), str(draft))
    assert typo.returncode == 1
    assert re.search(rf"^{re.escape(str(draft))}:\d+: unknown key 'spec.denylist'$", typo.stderr, re.MULTILINE)

    draft.write_text(policy)
    check = agentgw(fresh_dev, "policy", "check", str(fresh_dev.policies), str(draft))
    assert (check.returncode, check.stdout.strip()) == (0, "6 policy files: ok"), check.stderr
    explain = agentgw(
        fresh_dev,
        "policy", "explain", "--config", "examples/gateway.yaml",
        "--policies", str(fresh_dev.policies), "--policies", str(draft),
        "--scopes", "read:documents", "--tool", "whoami",
    )  # fmt: skip
    assert explain.returncode == 1
    assert explain.stdout.splitlines()[:2] == ["deny (deny_list): tool 'whoami' on target 'docs'", "policy: no-whoami"]

    before = run_example(fresh_dev, "mcp_client.py")
    assert mcp_calls(before)["whoami"] == "docs-a 1"

    # Live: the gateway reloads once the new file stands still; no restart.
    logged = fresh_dev.log_size()
    shutil.copy(draft, fresh_dev.policies / draft.name)
    fresh_dev.wait_for_log(r"policies reloaded from 6 files", after=logged)

    after = run_example(fresh_dev, "mcp_client.py")
    tools = next(line for line in after.splitlines() if line.startswith("tools: "))
    assert "whoami" not in tools.split(": ", 1)[1].split(", ")
    refusal = mcp_calls(after)["whoami"]
    assert refusal.startswith(f"refused: error {POLICY_DENIED}: "), refusal
    data = json.loads(refusal[refusal.index("{") :])
    assert data == {"tool": "whoami", "reason": "deny_list", "policy": "no-whoami", "requiredScopes": []}
    assert mcp_calls(after)["add"] == "42"  # the rest is untouched: defaultAction allow

    tail = agentgw(fresh_dev, "audit", "tail", "-n", "5", "--config", "examples/gateway.yaml")
    assert tail.returncode == 0, tail.stderr
    entries = [json.loads(line) for line in tail.stdout.splitlines()]
    assert len(entries) == 5
    last = entries[-1]
    assert (last["subject"], last["tool"], last["decision"], last["reason"]) == ("dev", "whoami", "deny", "deny_list")

    # And back: removing the file lifts the denial.
    logged = fresh_dev.log_size()
    (fresh_dev.policies / draft.name).unlink()
    fresh_dev.wait_for_log(r"policies reloaded from 5 files", after=logged)
    assert mcp_calls(run_example(fresh_dev, "mcp_client.py"))["whoami"] == "docs-a 1"


def test_a_broken_policy_file_is_refused_live_and_the_old_policies_stay(fresh_dev: DevRun) -> None:
    logged = fresh_dev.log_size()
    (fresh_dev.policies / "no-whoami.yaml").write_text(walkthrough_policy().replace("denyList", "denylist"))
    fresh_dev.wait_for_log(
        r"policy change refused, previous policies stay in force: .*no-whoami\.yaml:\d+", after=logged
    )

    assert mcp_calls(run_example(fresh_dev, "mcp_client.py"))["whoami"] == "docs-a 1"
