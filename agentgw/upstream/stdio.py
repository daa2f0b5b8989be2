"""MCP servers spoken to over stdio (contract 13): one child process, its environment and its logs.

The MCP SDK's stdio client starts the child and frames its messages (one JSON-RPC
message a line each way); its shutdown closes stdin, waits 2 s, then SIGTERMs the
child's process group and SIGKILLs it SIGKILL_AFTER seconds later (contract 13: 5 s;
the SDK reads its FORCE_KILL_TIMEOUT when it kills, so it is set here). This module
adds what a gateway needs around it: a child that sees none of the gateway's environment beyond the SDK's safe
defaults, `LANG` and what it was configured with; its stderr in the gateway's
log, one JSON line per line, naming the target; and messages handed over as the
plain dicts the rest of the gateway reads, with stdout lines that are not
JSON-RPC logged and dropped.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import mcp.client.stdio
import mcp_types
from mcp.client._transport import ReadStream, WriteStream
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from agentgw.errors import InvalidRequest
from agentgw.jsonrpc import Message

log = logging.getLogger("agentgw.stdio")

# Passed on from the gateway's environment beside the SDK's defaults (PATH, HOME, USER,
# LOGNAME, SHELL, TERM), so a child decodes and prints text as the operator's shell would.
PASSED_ON = ("LANG",)
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# A child's stderr is read in pieces of this size; a longer line is logged in pieces.
_STDERR_CHUNK = 64 * 1024
# Once the child is gone, what it left in its stderr pipe is read for at most this long
# (a grandchild holding the pipe open must not keep the reader alive).
_STDERR_DRAIN_TIMEOUT = 1.0

_serials = itertools.count(1)

# Between SIGTERM and SIGKILL: time for a child to save what it must (contract 13).
SIGKILL_AFTER = 5.0
mcp.client.stdio.FORCE_KILL_TIMEOUT = SIGKILL_AFTER


class ChildExited(Exception):
    """The child process is gone (or going): nothing more can be sent to it."""


def server_parameters(
    command: list[str], env: Mapping[str, str], cwd: str | None, environ: Mapping[str, str]
) -> StdioServerParameters:
    """How to start the server `command`, with the configured `env` over `LANG` from `environ`
    (the gateway's environment). `${NAME}` in a value of `env` is read from `environ`; an unset
    NAME is a ValueError, raised when the gateway starts rather than when a client arrives."""
    if not command:
        raise ValueError("command: empty")
    passed_on = {name: environ[name] for name in PASSED_ON if name in environ}
    expanded = {name: _expand(name, value, environ) for name, value in env.items()}
    return StdioServerParameters(command=command[0], args=command[1:], env=passed_on | expanded, cwd=cwd)


def _expand(name: str, value: str, environ: Mapping[str, str]) -> str:
    def variable(match: re.Match[str]) -> str:
        found = environ.get(match[1])
        if found is None:
            raise ValueError(f"env {name}: environment variable {match[1]} is not set")
        return found

    return _REFERENCE.sub(variable, value)


def to_session_message(message: Message) -> SessionMessage:
    """A message the gateway checked, as the SDK's transport sends it."""
    try:
        return SessionMessage(mcp_types.jsonrpc_message_adapter.validate_python(message))
    except ValidationError:
        raise InvalidRequest("Invalid request: not a JSON-RPC message") from None


class StdioChild:
    """One MCP server process. Every message it sends goes to `deliver`, as a dict, in order;
    `on_exit` is called once when it is gone, whoever ended it."""

    def __init__(
        self,
        params: StdioServerParameters,
        target: str,
        deliver: Callable[[Message], None],
        on_exit: Callable[[], None],
    ) -> None:
        self.target = target
        self.serial = next(_serials)  # tells apart the log lines of one target's children
        self._params = params
        self._deliver = deliver
        self._on_exit = on_exit
        self._write: WriteStream[SessionMessage] | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.exited = asyncio.Event()

    async def start(self) -> None:
        """Start the process; OSError (or ValueError) when it cannot be started."""
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(started), name=f"stdio child {self.target} #{self.serial}")
        try:
            await asyncio.shield(started)
        except asyncio.CancelledError:
            self._stopping.set()  # nobody would ever end a child whose starter gave up
            raise

    async def send(self, message: SessionMessage) -> None:
        if self._write is None or self._stopping.is_set() or self.exited.is_set():
            raise ChildExited
        try:
            await self._write.send(message)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise ChildExited from None

    async def stop(self) -> None:
        """End the process (the SDK's shutdown: close stdin, SIGTERM, SIGKILL) and wait until it is gone."""
        self._stopping.set()
        if self._task is not None:
            # Shielded: a client giving up on its DELETE must not leave the shutdown half done.
            await asyncio.shield(self._task)

    def _fields(self, event: str, level: str = "info") -> dict[str, Any]:
        return {"level": level, "logger": log.name, "event": event, "target": self.target, "child": self.serial}

    async def _run(self, started: asyncio.Future[None]) -> None:
        stderr_read, stderr_write = os.pipe()
        stderr_task: asyncio.Task[None] | None = None
        try:
            with os.fdopen(stderr_write, "w") as errlog:
                async with stdio_client(self._params, errlog=errlog) as (read, write):
                    errlog.close()  # the child holds its own end: EOF comes when it is gone
                    stderr_task = asyncio.create_task(self._log_stderr(stderr_read))
                    self._write = write
                    started.set_result(None)
                    log.info("stdio server started", extra={"fields": self._fields("started")})
                    await self._serve(read)
        except Exception as exc:
            if not started.done():
                started.set_exception(exc)
                return
            # A plain line: the JSON formatter writes the traceback only for lines without fields.
            log.exception(f"stdio server transport of target {self.target!r} (child {self.serial}) failed")
        finally:
            if stderr_task is None:
                os.close(stderr_read)
            else:
                await _drain(stderr_task)
            self.exited.set()
            if started.done() and started.exception() is None:
                self._log_exit()
                self._on_exit()

    def _log_exit(self) -> None:
        if self._stopping.is_set():
            log.info("stdio server stopped", extra={"fields": self._fields("stopped")})
        else:
            log.warning("stdio server exited by itself", extra={"fields": self._fields("exited", "warning")})

    async def _serve(self, read: ReadStream[SessionMessage | Exception]) -> None:
        """Hand on what the child sends until it closes its stdout or is asked to stop."""
        async with anyio.create_task_group() as group:

            async def until_stopped() -> None:
                await self._stopping.wait()
                group.cancel_scope.cancel()

            group.start_soon(until_stopped)
            async for item in read:
                if isinstance(item, Exception):
                    # What the line held stays out of the log: it may be anything the server printed.
                    log.warning("stdout line is not JSON-RPC", extra={"fields": self._fields("bad_stdout", "warning")})
                    continue
                self._deliver(item.message.model_dump(by_alias=True, exclude_unset=True, mode="json"))
            group.cancel_scope.cancel()

    async def _log_stderr(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_STDERR_CHUNK)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb"))
        try:
            pending = b""
            while chunk := await reader.read(_STDERR_CHUNK):
                *lines, pending = (pending + chunk).split(b"\n")
                if len(pending) >= _STDERR_CHUNK:
                    lines.append(pending)
                    pending = b""
                for line in lines:
                    self._log_stderr_line(line)
            if pending:
                self._log_stderr_line(pending)
        finally:
            transport.close()

    def _log_stderr_line(self, line: bytes) -> None:
        fields = self._fields("stderr")
        fields["line"] = line.rstrip(b"\r").decode("utf-8", "replace")
        log.info("stdio server stderr", extra={"fields": fields})


async def _drain(stderr_task: asyncio.Task[None]) -> None:
    done, _ = await asyncio.wait({stderr_task}, timeout=_STDERR_DRAIN_TIMEOUT)
    if not done:
        stderr_task.cancel()
        [outcome] = await asyncio.gather(stderr_task, return_exceptions=True)
        if isinstance(outcome, Exception):  # CancelledError is no Exception: cancelled as asked
            log.error("reading a stdio server's stderr failed", exc_info=outcome)
    elif stderr_task.exception() is not None:
        log.error("reading a stdio server's stderr failed", exc_info=stderr_task.exception())


class _QuietParseFailures(logging.Filter):
    """The SDK logs every unparseable stdout line with a traceback quoting it; the gateway logs
    its own line instead (naming the target, leaving the contents out)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Failed to parse JSONRPC message from server"


logging.getLogger("mcp.client.stdio").addFilter(_QuietParseFailures())
