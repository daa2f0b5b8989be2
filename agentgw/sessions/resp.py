"""The hot path's own Redis client: the one script call each MCP request makes, pipelined on one
connection per Redis server, replies parsed by hiredis.

redis-py spends ~120 µs of CPU on each command, more than the rest of the gateway's hot path
together; this costs ~16 µs (benchmarks/resp_client.py). Every other store operation goes
through redis-py. Three ways to find the server a script goes to (contract 17):

- `OneServer`: the one Redis of `session_store.url`;
- `SentinelMaster`: the master the sentinels name, asked again every second, so a promotion is
  followed without waiting for the old master's connection to break (after `SENTINEL FAILOVER`
  the old master stays writable for a while);
- `ClusterSlots`: the node serving the slot of the script's first key, from the cluster's slot
  map, read again every few seconds, on MOVED, and when a node cannot be reached.

Any failure closes the connection it happened on and fails every call waiting on it with
StoreUnavailable (503); the next call connects again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import hiredis
from redis.crc import key_slot

from agentgw.background import OneAtATime, in_background
from agentgw.errors import StoreUnavailable

log = logging.getLogger("agentgw.sessions")

# Fail fast: a server that does not answer within this many seconds is down, and the client gets
# 503 rather than a hang.
STORE_TIMEOUT = 1.0
# How often the sentinels are asked which server is master, and how long each may take to answer.
SENTINEL_POLL_INTERVAL = 1.0
SENTINEL_TIMEOUT = 0.5
# How often the cluster's slot map is read again, without a MOVED or a lost node to prompt it.
SLOT_MAP_REFRESH_INTERVAL = 2.0
CLUSTER_SLOTS = 16384
# Slots remembered by hash tag; beyond this many tags the memo starts afresh.
MAX_REMEMBERED_TAGS = 10_000


@dataclass(frozen=True)
class Server:
    """Where one Redis server listens, and how the gateway logs in to it."""

    host: str
    port: int
    path: str | None = None  # a unix socket, for `unix://` URLs
    tls: bool = False

    def __str__(self) -> str:
        return self.path or f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Login:
    """What every new connection sends first: credentials (ACL) and the database."""

    username: str | None = None
    password: str | None = None
    db: int = 0

    def commands(self) -> list[list[str]]:
        setup = []
        if self.password is not None:
            setup.append(["AUTH", *([self.username] if self.username else []), self.password])
        if self.db:
            setup.append(["SELECT", str(self.db)])
        return setup


class HotPath(Protocol):
    async def eval_script(self, script: str, keys: list[str], args: list[str]) -> Any: ...

    def close(self) -> None: ...


class Connection:
    """One pipelined connection to one server, opened on first use and again after a failure."""

    def __init__(self, server: Server, login: Login) -> None:
        self.server = server
        self._setup = login.commands()
        self._ssl = ssl.create_default_context() if server.tls else None
        self._protocol: _RespProtocol | None = None
        # The one connection attempt every caller waits on: all of them fail within one
        # STORE_TIMEOUT when it fails, rather than each trying in turn.
        self._connect = OneAtATime(self._open_and_keep)

    async def call(self, command: list[str]) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        return await protocol.call(command)

    async def calls(self, commands: list[list[str]]) -> list[Any]:
        """Several commands written at once, their replies in order (ASKING, then the command)."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        return list(await asyncio.gather(*(protocol.call(command) for command in commands)))

    async def _open_and_keep(self) -> _RespProtocol:
        protocol = self._protocol = await self._open()
        return protocol

    async def _open(self) -> _RespProtocol:
        loop = asyncio.get_running_loop()
        protocol: _RespProtocol | None = None
        try:
            async with asyncio.timeout(STORE_TIMEOUT):
                if self.server.path is not None:
                    _, protocol = await loop.create_unix_connection(_RespProtocol, self.server.path)
                else:
                    _, protocol = await loop.create_connection(
                        _RespProtocol, self.server.host, self.server.port, ssl=self._ssl
                    )
                for command in self._setup:
                    if isinstance(await protocol.call(command), hiredis.ReplyError):
                        raise StoreUnavailable("Session store refused the connection")
        except BaseException as exc:
            if protocol is not None:
                protocol.close()
            if isinstance(exc, (TimeoutError, OSError)):
                raise StoreUnavailable("Session store unavailable") from exc
            raise
        return protocol

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol.close()


async def eval_on(connection: Connection, script: str, keys: list[str], args: list[str]) -> Any:
    """EVALSHA, or EVAL the first time a server sees the script; the reply, errors included."""
    reply = await connection.call(["EVALSHA", _sha1(script), str(len(keys)), *keys, *args])
    if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
        reply = await connection.call(["EVAL", script, str(len(keys)), *keys, *args])
    return reply


def _refused(reply: Any) -> Any:
    if isinstance(reply, hiredis.ReplyError):
        raise StoreUnavailable("Session store refused the request") from reply
    return reply


class OneServer:
    """`type: redis`: one server."""

    def __init__(self, server: Server, login: Login) -> None:
        self.connection = Connection(server, login)

    async def eval_script(self, script: str, keys: list[str], args: list[str]) -> Any:
        return _refused(await eval_on(self.connection, script, keys, args))

    def close(self) -> None:
        self.connection.close()


class SentinelMaster:
    """`type: redis-sentinel`: the master the sentinels name, followed as they promote another."""

    def __init__(self, sentinels: list[Server], service: str, login: Login, sentinel_login: Login) -> None:
        self._sentinels = [Connection(sentinel, sentinel_login) for sentinel in sentinels]
        self._service = service
        self._login = login
        self._master: Connection | None = None
        self._watch: asyncio.Task[None] | None = None
        self._named_master = OneAtATime(self.named_master)  # one question to the sentinels at a time
        self._quiet: set[Server] = set()
        self.on_promotion: list[Callable[[Server], None]] = []  # told of each new master

    async def eval_script(self, script: str, keys: list[str], args: list[str]) -> Any:
        master = self._master
        if master is None:
            await self._follow()
            master = self._master
            if master is None:
                raise StoreUnavailable("Session store unavailable: no sentinel names a master")
        self._start_watching()
        reply = await eval_on(master, script, keys, args)
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("READONLY"):
            # A demoted master: ask the sentinels now rather than at the next poll.
            in_background(self._follow())
            raise StoreUnavailable("Session store unavailable: its master is changing")
        return _refused(reply)

    def _start_watching(self) -> None:
        if self._watch is None or self._watch.done():
            self._watch = asyncio.ensure_future(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(SENTINEL_POLL_INTERVAL)
            await self._follow()

    async def _follow(self) -> None:
        """Ask the sentinels and move to the master they name."""
        named = await self._named_master()
        if named is not None and (self._master is None or self._master.server != named):
            previous, self._master = self._master, Connection(named, self._login)
            if previous is not None:
                log.warning("session store master moved from %s to %s", previous.server, named)
                previous.close()
            for promoted in self.on_promotion:
                promoted(named)

    async def named_master(self) -> Server | None:
        """The master most of the answering sentinels name; None when none answers."""
        answers = await asyncio.gather(*(self._ask(sentinel) for sentinel in self._sentinels))
        named = Counter(answer for answer in answers if answer is not None)
        return named.most_common(1)[0][0] if named else None

    async def _ask(self, sentinel: Connection) -> Server | None:
        try:
            async with asyncio.timeout(SENTINEL_TIMEOUT):
                reply = await sentinel.call(["SENTINEL", "get-master-addr-by-name", self._service])
        except (StoreUnavailable, TimeoutError) as exc:
            sentinel.close()
            self._heard_from(sentinel, f"does not answer ({exc.__class__.__name__})")
            return None
        if not isinstance(reply, list) or len(reply) != 2:
            self._heard_from(sentinel, f"names no master for {self._service!r}")
            return None
        self._heard_from(sentinel, None)
        host, port = (part.decode() for part in reply)
        return Server(host, int(port), tls=sentinel.server.tls) if port.isdigit() else None

    def _heard_from(self, sentinel: Connection, problem: str | None) -> None:
        """Log a sentinel going quiet, and answering again: once each, not once a second."""
        if problem is not None and sentinel.server not in self._quiet:
            self._quiet.add(sentinel.server)
            log.warning("sentinel %s %s", sentinel.server, problem)
        elif problem is None and sentinel.server in self._quiet:
            self._quiet.discard(sentinel.server)
            log.warning("sentinel %s answers again", sentinel.server)

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        self._named_master.cancel()
        for connection in [*self._sentinels, *([self._master] if self._master else [])]:
            connection.close()


class ClusterSlots:
    """`type: redis-cluster`: each script to the node serving its first key's slot (every key one
    request touches shares that slot: the store's keys carry hash tags)."""

    def __init__(self, seeds: list[Server], login: Login) -> None:
        self._seeds = seeds
        self._login = login
        self._tls = any(seed.tls for seed in seeds)
        self._nodes: dict[Server, Connection] = {}
        self._slots: list[Server | None] = [None] * CLUSTER_SLOTS
        self._tag_slots: dict[bytes, int] = {}
        self._reading = OneAtATime(self._read_from_any_node)  # one reading at a time, whoever asks
        self._refresh: asyncio.Task[None] | None = None

    async def eval_script(self, script: str, keys: list[str], args: list[str]) -> Any:
        slot = self._slot(keys[0]) if keys else 0
        server = self._slots[slot]
        if server is None:
            await self._read_slot_map()
            server = self._slots[slot]
            if server is None:
                raise StoreUnavailable("Session store unavailable: no cluster node serves the slot")
        self._start_refreshing()
        try:
            reply = await eval_on(self._node(server), script, keys, args)
        except StoreUnavailable:
            in_background(self._read_slot_map())  # a node lost: its replica may be serving already
            raise
        if isinstance(reply, hiredis.ReplyError):
            reply = await self._redirected(str(reply), script, keys, args)
        return _refused(reply)

    async def _redirected(self, error: str, script: str, keys: list[str], args: list[str]) -> Any:
        """One MOVED or ASK followed; anything else is the reply."""
        kind, _, rest = error.partition(" ")
        if kind not in ("MOVED", "ASK"):
            if kind in ("CLUSTERDOWN", "TRYAGAIN"):
                in_background(self._read_slot_map())
            return hiredis.ReplyError(error)
        server = _address(rest.partition(" ")[2], self._tls)
        if server is None:
            return hiredis.ReplyError(error)
        if kind == "MOVED":
            in_background(self._read_slot_map())
            return await eval_on(self._node(server), script, keys, args)
        _, reply = await self._node(server).calls([["ASKING"], ["EVAL", script, str(len(keys)), *keys, *args]])
        return reply

    def _slot(self, key: str) -> int:
        tag = _hash_tag(key.encode("utf-8", "surrogatepass"))
        slot = self._tag_slots.get(tag)
        if slot is None:
            if len(self._tag_slots) >= MAX_REMEMBERED_TAGS:
                self._tag_slots.clear()
            slot = self._tag_slots[tag] = key_slot(tag)
        return slot

    def _node(self, server: Server) -> Connection:
        connection = self._nodes.get(server)
        if connection is None:
            connection = self._nodes[server] = Connection(server, self._login)
        return connection

    def _start_refreshing(self) -> None:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(SLOT_MAP_REFRESH_INTERVAL)
            await self._read_slot_map()

    async def _read_slot_map(self) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self._reading()

    async def _read_from_any_node(self) -> None:
        known = list(dict.fromkeys([*self._nodes, *self._seeds]))
        for server in known:
            try:
                async with asyncio.timeout(STORE_TIMEOUT):
                    reply = await self._node(server).call(["CLUSTER", "SLOTS"])
            except (StoreUnavailable, TimeoutError):
                continue
            if isinstance(reply, list) and reply:
                self._apply(reply)
                return
        log.warning("no cluster node answered CLUSTER SLOTS")

    def _apply(self, reply: list[Any]) -> None:
        slots: list[Server | None] = [None] * CLUSTER_SLOTS
        for entry in reply:
            start, end, master = entry[0], entry[1], entry[2]
            host = master[0].decode() or self._seeds[0].host
            server = Server(host, int(master[1]), tls=self._tls)
            for slot in range(start, end + 1):
                slots[slot] = server
        serving = {server for server in slots if server is not None}
        for server in list(self._nodes):
            if server not in serving and server not in self._seeds:
                self._nodes.pop(server).close()
        self._slots = slots

    def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
        self._reading.cancel()
        for connection in self._nodes.values():
            connection.close()


def _hash_tag(key: bytes) -> bytes:
    """What Redis Cluster hashes: the part between the first `{` and the next `}`, if not empty."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def _address(text: str, tls: bool) -> Server | None:
    host, _, port = text.rpartition(":")
    return Server(host, int(port), tls=tls) if host and port.isdigit() else None


class _RespProtocol(asyncio.Protocol):
    """One Redis connection: commands written in order, replies matched in order."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader()
        self._pending: deque[asyncio.Future[Any]] = deque()
        self.lost = False

    async def call(self, command: list[str]) -> Any:
        if self.lost or self._transport is None:
            raise StoreUnavailable("Session store unavailable")
        data = _encode(command)  # before the reply is awaited: a command that cannot be sent takes none
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(future)
        self._transport.write(data)
        timer = asyncio.get_running_loop().call_later(STORE_TIMEOUT, self._timed_out, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _timed_out(self, future: asyncio.Future[Any]) -> None:
        if not future.done():
            self.close()  # later replies would no longer line up with their callers

    def close(self) -> None:
        self.lost = True
        if self._transport is not None:
            self._transport.close()
        self._fail_pending()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while self._pending and (reply := self._reader.gets()) is not False:
            future = self._pending.popleft()
            if not future.done():
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail_pending()

    def _fail_pending(self) -> None:
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(StoreUnavailable("Session store unavailable"))


_SHA1: dict[str, str] = {}


def _sha1(script: str) -> str:
    sha = _SHA1.get(script)
    if sha is None:
        sha = _SHA1[script] = hashlib.sha1(script.encode()).hexdigest()
    return sha


def _encode(command: list[str]) -> bytes:
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        # A lone surrogate (a token's subject may hold one) becomes bytes no valid text encodes to:
        # its own key, never another's.
        data = arg.encode("utf-8", "surrogatepass")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)
