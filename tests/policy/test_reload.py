"""Hot reload (contract 6): policy files change under a running gateway, open sessions carry on.

A valid change applies to the sessions already open; a change that fails validation
is refused whole, the previous policies stay in force, and the log names `file:line`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tests.support import (
    InProcessGateway,
    Process,
    RawResponse,
    in_process_gateway,
    logged,
    mcp_target,
    poll,
    raw_call,
    raw_session,
    tool_text,
    trace_backend,
)

POLICY_DENIED = -32051
# The gateway looks at its policy files once a second; a change shows within a few.
RELOAD_BOUND = 5.0
# How long a refused change is watched to be sure it never takes effect.
STEADY = 3.0

HEAD = "apiVersion: agentgw.dev/v1alpha1\nkind: ToolPolicy\nmetadata: {name: tools}\nspec:\n"
ALLOW_ADD = HEAD + "  defaultAction: deny\n  allowedTools:\n    - name: add\n    - name: search_documents\n"
DENY_ADD = ALLOW_ADD + "  denyList: [add]\n"

# Each of these would allow `add` if the gateway read it leniently; the number is the line at fault.
BROKEN = {
    "invalid-yaml": (HEAD + "  defaultAction: deny\n  allowedTools:\n    - name: add: now\n", 7),
    "unknown-key": (ALLOW_ADD + "  denyLst: [exec_shell]\n", 9),
    "bad-value": (HEAD + "  defaultAction: sometimes\n  allowedTools:\n    - name: add\n", 5),
    # Well-formed YAML that PyYAML cannot construct: a merge key, an unknown tag.
    "merge-key": (HEAD + "  <<: {defaultAction: allow}\n", 5),
    "unknown-tag": (ALLOW_ADD + "  denyList: [!shell exec_shell]\n", 9),
}


def session_policy(timeout: str) -> str:
    """A SessionPolicy document, to stand before the ToolPolicy in the same file."""
    return (
        "apiVersion: agentgw.dev/v1alpha1\nkind: SessionPolicy\nmetadata: {name: sessions}\n"
        f"spec:\n  sessionTimeout: {timeout}\n---\n"
    )


@dataclass
class TraceBackend:
    """tests/trace_server.py, shared by the module's tests: every tool that runs leaves its name in
    the trace file, and `runs` counts those of the current test."""

    process: Process
    trace: Path
    since: int = 0  # trace lines written before the test began

    def lines(self) -> list[str]:
        return self.trace.read_text().splitlines()

    def runs(self, tool: str) -> int:
        return self.lines()[self.since :].count(tool)


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TraceBackend]:
    tmp = tmp_path_factory.mktemp("trace")
    (tmp / "trace.txt").touch()
    process = trace_backend(tmp / "trace.txt", tmp / "trace-server.log").start()
    yield TraceBackend(process, tmp / "trace.txt")
    process.stop()


@pytest.fixture
def backend(traced: TraceBackend) -> TraceBackend:
    return replace(traced, since=len(traced.lines()))


def start(tmp: Path, backend_port: int, policies: str) -> contextlib.AbstractAsyncContextManager[InProcessGateway]:
    return in_process_gateway(tmp, {"mcp": {"targets": [mcp_target("docs", backend_port)]}}, policies=policies)


def policy_file(tmp: Path) -> Path:
    return tmp / "gateway-policies" / "policies.yaml"


def rewrite(path: Path, text: str) -> None:
    """Replace the file in one step, so the gateway never reads it half written."""
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    os.replace(partial, path)


async def call_add(gw: InProcessGateway, session_id: str) -> RawResponse:
    return await raw_call(gw.port, session_id, "add", {"a": 1, "b": 2})


def refusal(response: RawResponse) -> str | None:
    """The reason of a policy refusal (-32051), or None for anything else."""
    assert response.status == 200, (response.status, response.body)  # never 404: the session lives on
    error = response.message().get("error")
    if error is None or error["code"] != POLICY_DENIED:
        return None
    return str(error["data"]["reason"])


async def until_refused(gw: InProcessGateway, session_id: str) -> tuple[str, int]:
    """Call `add` until it is refused: the reason, and how many calls ran before that."""
    ran = 0

    async def check() -> str | None:
        nonlocal ran
        response = await call_add(gw, session_id)
        reason = refusal(response)
        if reason is None:
            assert tool_text(response) == "add ran"
            ran += 1
        return reason

    reason = await poll(check, timeout=RELOAD_BOUND)
    return str(reason), ran


async def until_allowed(gw: InProcessGateway, session_id: str) -> RawResponse:
    async def check() -> RawResponse | None:
        response = await call_add(gw, session_id)
        return response if refusal(response) is None else None

    return await poll(check, timeout=RELOAD_BOUND)  # type: ignore[no-any-return]


async def until_logged(caplog: pytest.LogCaptureFixture, needle: str, times: int = 1) -> None:
    async def check() -> bool:
        return logged(caplog, needle) >= times

    await poll(check, timeout=RELOAD_BOUND)


async def stays(gw: InProcessGateway, session_id: str, reason: str | None) -> None:
    """A bounded watch: `add` keeps being refused for `reason` (None: keeps running)."""
    deadline = time.monotonic() + STEADY
    while time.monotonic() < deadline:
        assert refusal(await call_add(gw, session_id)) == reason
        await asyncio.sleep(0.2)


async def test_a_tightened_policy_applies_to_an_open_session(tmp: Path, backend: TraceBackend) -> None:
    async with start(tmp, backend.process.port, ALLOW_ADD) as gw:
        session_id = await raw_session(gw.port)
        assert tool_text(await call_add(gw, session_id)) == "add ran"

        rewrite(policy_file(tmp), DENY_ADD)
        reason, ran_meanwhile = await until_refused(gw, session_id)
        assert reason == "deny_list"
        for _ in range(3):
            assert refusal(await call_add(gw, session_id)) == "deny_list"
        assert backend.runs("add") == 1 + ran_meanwhile  # no refused call reached the backend

        rewrite(policy_file(tmp), ALLOW_ADD)
        assert tool_text(await until_allowed(gw, session_id)) == "add ran"
        assert backend.runs("add") == 2 + ran_meanwhile


@pytest.mark.parametrize(
    "broken",
    [
        "invalid-yaml",
        "unknown-key",
        "bad-value",
        "merge-key",
        "unknown-tag",
    ],
)
async def test_a_broken_change_is_refused_and_named_with_file_and_line(
    tmp: Path, backend: TraceBackend, broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with start(tmp, backend.process.port, DENY_ADD) as gw:
        session_id = await raw_session(gw.port)
        assert refusal(await call_add(gw, session_id)) == "deny_list"

        text, line = BROKEN[broken]
        rewrite(policy_file(tmp), text)
        await until_logged(caplog, f"{policy_file(tmp)}:{line}:")
        await stays(gw, session_id, "deny_list")
        assert backend.runs("add") == 0

        rewrite(policy_file(tmp), ALLOW_ADD)
        assert tool_text(await until_allowed(gw, session_id)) == "add ran"
        assert backend.runs("add") == 1


async def test_one_broken_file_keeps_a_valid_change_to_another_from_applying(
    tmp: Path, backend: TraceBackend, caplog: pytest.LogCaptureFixture
) -> None:
    async with start(tmp, backend.process.port, DENY_ADD) as gw:
        session_id = await raw_session(gw.port)
        broken_file = policy_file(tmp).with_name("more.yaml")
        text, line = BROKEN["unknown-key"]
        rewrite(broken_file, text)
        await until_logged(caplog, f"{broken_file}:{line}:")

        # Valid on its own, but the set it belongs to is not: refused whole, logged again.
        rewrite(policy_file(tmp), ALLOW_ADD)
        await until_logged(caplog, f"{broken_file}:{line}:", times=2)
        await stays(gw, session_id, "deny_list")
        assert backend.runs("add") == 0

        broken_file.unlink()
        assert tool_text(await until_allowed(gw, session_id)) == "add ran"


async def test_a_file_yaml_cannot_construct_does_not_stop_later_changes(tmp: Path, backend: TraceBackend) -> None:
    async with start(tmp, backend.process.port, ALLOW_ADD) as gw:
        session_id = await raw_session(gw.port)
        rewrite(policy_file(tmp), BROKEN["unknown-tag"][0])
        await stays(gw, session_id, None)  # refused: the deny list it names never applies

        rewrite(policy_file(tmp), DENY_ADD)
        reason, _ = await until_refused(gw, session_id)
        assert reason == "deny_list"


async def test_a_longer_session_timeout_keeps_open_sessions_and_applies_to_them(
    tmp: Path, backend: TraceBackend
) -> None:
    async with start(tmp, backend.process.port, session_policy("1500ms") + ALLOW_ADD) as gw:
        session_id = await raw_session(gw.port)
        # The same change allows search_documents, which shows when it is in force. Calling
        # every 0.3 s keeps the session inside the old 1.5 s timeout until then.
        rewrite(policy_file(tmp), session_policy("30m") + ALLOW_ADD.replace("search_documents", "send_email"))

        async def reloaded() -> bool:
            response = await raw_call(gw.port, session_id, "send_email", {"to": "a", "body": "b"})
            return refusal(response) is None

        await poll(reloaded, timeout=RELOAD_BOUND, interval=0.3)
        assert tool_text(await call_add(gw, session_id)) == "add ran"
        await asyncio.sleep(2.5)  # idle past the old timeout: the new one holds the session
        assert tool_text(await call_add(gw, session_id)) == "add ran"


async def test_a_shorter_session_timeout_applies_to_open_sessions_without_dropping_them(
    tmp: Path, backend: TraceBackend
) -> None:
    async with start(tmp, backend.process.port, session_policy("30m") + DENY_ADD) as gw:
        session_id = await raw_session(gw.port)
        rewrite(policy_file(tmp), session_policy("1500ms") + ALLOW_ADD)
        # Kept busy, the session outlives the change (refusal() asserts no 404 on the way).
        assert tool_text(await until_allowed(gw, session_id)) == "add ran"
        assert tool_text(await call_add(gw, session_id)) == "add ran"
        await asyncio.sleep(2.5)  # idle past the new timeout
        assert (await call_add(gw, session_id)).status == 404
