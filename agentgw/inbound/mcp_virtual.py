"""Virtual servers (contract 12): several targets served as one MCP endpoint.

A virtual session is one gateway session holding one backend session per member
target, opened concurrently at `initialize`; it succeeds when one member
answers. Lists are the union of the members' lists, each trimmed by its own
target's policies and then by the virtual server's, names exposed under the
member's prefix and paged by the gateway itself. A call naming an exposed name
goes to the member whose prefix matches (longest first) without the prefix.
What a member asks of the client (sampling, elicitation) carries an id naming
the member, so that the client's answer finds its way back. A member whose
backend dies or forgets its session is opened again alone on a healthy backend
of its target; until then its calls are 503 and its items are left out.

This module says what a virtual session is: the virtual server's routing and
its members' backend sessions (opened, reopened, sent to, ended, watched for
expiry). Each message takes the steps of `agentgw/call.py` like any MCP call;
what a virtual session does at each is `mcp_virtual_steps.py`'s
(`virtual_steps`), with `mcp_virtual_post.py` (what every kind of POST shares)
and `mcp_virtual_merged.py` (answers merged from every member).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal

from agentgw import sse
from agentgw.auth.principal import Principal
from agentgw.background import in_background
from agentgw.config import VirtualMemberConfig, VirtualServerConfig
from agentgw.errors import BackendRefused, SessionNotFound, StoreUnavailable, UpstreamTimeout, UpstreamUnavailable
from agentgw.inbound.mcp_calls import McpCalls
from agentgw.inbound.relay import AnswerFilter
from agentgw.mcp_headers import HANDSHAKE_PROTOCOL_VERSIONS, MCP_PROTOCOL_VERSION, MCP_SESSION_ID
from agentgw.sessions.store import SessionRecord
from agentgw.upstream.answers import read_answer, refuse_backend_auth
from agentgw.upstream.credentials import Presenting
from agentgw.upstream.http import UpstreamResponse
from agentgw.upstream.mcp import ACCEPT, BackendPool

log = logging.getLogger("agentgw.inbound.mcp_virtual")

# How often a process looks for the virtual sessions it served that expired, and how many it keeps
# watching (the least recently used beyond that are left to their members' own expiry).
EXPIRY_CHECK_INTERVAL = 5.0
MAX_WATCHED_SESSIONS = 100_000
# What a member's server-to-client request id becomes: this, the member's index, ":", the id as JSON.
_MEMBER_ID_PREFIX = "agentgw-m"
_MAX_MEMBER_ID = 1024


@dataclass(frozen=True)
class MemberSession:
    """One member's backend session in a virtual session; `backend` None: not open now."""

    target: str
    backend: str | None
    backend_session_id: str | None
    protocol_version: str


def members_of(record: SessionRecord) -> list[MemberSession]:
    return list(_parsed_members(record.members or "[]"))


# A session's members change only when one is opened again: most calls find the value parsed already.
@functools.lru_cache(maxsize=4096)
def _parsed_members(stored: str) -> tuple[MemberSession, ...]:
    return tuple(MemberSession(**m) for m in json.loads(stored))


def store_members(record: SessionRecord, members: list[MemberSession]) -> None:
    record.members = json.dumps([dataclasses.asdict(m) for m in members], separators=(",", ":"))


class VirtualServer:
    """One virtual server's members, in config order, each with its target's backends."""

    def __init__(self, config: VirtualServerConfig, pools: dict[str, BackendPool]) -> None:
        self.name = config.name
        self.members: list[tuple[VirtualMemberConfig, BackendPool]] = [(m, pools[m.target]) for m in config.members]
        self.longest_prefix_first = sorted(
            ((index, member.name_prefix, member) for index, (member, _) in enumerate(self.members)),
            key=lambda routed: -len(routed[1]),
        )

    def route(self, kind: Literal["tool", "prompt"], exposed: str) -> tuple[int, str] | None:
        """The member an exposed name belongs to, and the member's own name for it."""
        for index, prefix, member in self.longest_prefix_first:
            if exposed.startswith(prefix) and len(exposed) > len(prefix):
                name = exposed[len(prefix) :]
                if includes(member, kind, name):
                    return index, name
        return None


def includes(member: VirtualMemberConfig, kind: Literal["tool", "prompt"], name: str) -> bool:
    globs = member.tools if kind == "tool" else member.prompts
    return globs is None or any(fnmatchcase(name, glob) for glob in globs)


def member_id(index: int, request_id: Any) -> str:
    return f"{_MEMBER_ID_PREFIX}{index}:{json.dumps(request_id)}"


def unmember_id(value: Any) -> tuple[int, Any] | None:
    """The member and its own id behind an id the gateway gave a member's request; None for any other."""
    if not isinstance(value, str) or not value.startswith(_MEMBER_ID_PREFIX) or len(value) > _MAX_MEMBER_ID:
        return None
    index, _, original = value[len(_MEMBER_ID_PREFIX) :].partition(":")
    if not (index.isascii() and index.isdigit()):
        return None
    try:
        return int(index), json.loads(original)
    except (ValueError, RecursionError):
        return None


class MemberAnswers(AnswerFilter):
    """A member's stream as the client sees it: responses to other requests held back (contract 11),
    and the member's own requests under ids that name the member."""

    __slots__ = ("_index",)

    def __init__(self, index: int, request_ids: list[Any], refused: Callable[[], None]) -> None:
        super().__init__(request_ids, refused)
        self._index = index

    def client_id(self, request_id: Any) -> Any:
        return member_id(self._index, request_id)

    def encoded(self, event: sse.Event, message: Any, changed: bool) -> bytes:
        if isinstance(message, dict) and "method" in message and "id" in message:
            message = {**message, "id": member_id(self._index, message["id"])}
            changed = True
        return super().encoded(event, message, changed)


class VirtualCalls:
    """What the steps of every kind of virtual-session call share: the members' sessions."""

    def __init__(self, calls: McpCalls, servers: list[VirtualServerConfig]) -> None:
        self.calls = calls
        self.servers = {s.name: VirtualServer(s, calls.upstream.pools) for s in servers}
        # Sessions this process served, with their members and when they expire unless used again:
        # a store lets a record lapse without a word, so whoever served it ends its members.
        self._served: OrderedDict[str, tuple[SessionRecord, float]] = OrderedDict()
        self._reopening: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def served(self, record: SessionRecord) -> None:
        """Note a session served here (opened, used, or its members changed)."""
        self._served[record.id] = (record, time.time() + self.calls.sessions.ttl)
        self._served.move_to_end(record.id)
        while len(self._served) > MAX_WATCHED_SESSIONS:
            self._served.popitem(last=False)

    async def end_expired(self) -> None:
        """Every EXPIRY_CHECK_INTERVAL, end the members of the sessions served here that the store
        no longer holds (they expired, or another process ended them: a second DELETE is harmless)."""
        while True:
            await asyncio.sleep(EXPIRY_CHECK_INTERVAL)
            try:
                await self._end_lapsed(time.time())
            except StoreUnavailable:
                log.warning("virtual sessions' expiry not checked: the session store is unreachable")

    async def _end_lapsed(self, now: float) -> None:
        due = [(session_id, record) for session_id, (record, expires) in self._served.items() if expires <= now]
        for session_id, record in due:
            live = await self.calls.store.get(session_id)
            if live is not None:  # used through another process meanwhile
                self._served[session_id] = (live, live.last_seen + self.calls.sessions.ttl)
                continue
            self._served.pop(session_id, None)
            server = self.servers.get(record.target)
            if server is not None:
                log.info("virtual session of %s on %s expired: its members end", record.subject, record.target)
                await self.end_members(record, server)

    # -- member sessions ----------------------------------------------------------------

    async def open_member(
        self, server: VirtualServer, index: int, initialize: bytes, caller: Principal | None
    ) -> tuple[MemberSession, dict[str, Any]]:
        """Open a member's backend session on the first backend of its target that answers; its
        session and the checked initialize result."""
        pool = server.members[index][1]
        target = pool.target
        headers = {"content-type": "application/json", "accept": ACCEPT}
        request_id = json.loads(initialize).get("id")
        presenting = pool.presenting(caller)
        for url in await pool.candidates(self.calls.store, time.time()):
            try:
                response = await self.calls.upstream.send(
                    "POST", url, headers, initialize, timeout=target.timeout, presenting=presenting
                )
            except UpstreamTimeout:
                raise
            except UpstreamUnavailable as exc:
                log.warning("member %s of %s not opened on %s: %s", target.name, server.name, url, exc)
                continue
            try:
                refuse_backend_auth(response)
                answer = await read_answer(response, request_id, target.timeout) if response.status == 200 else None
            finally:
                response.release()
            result = answer.result if answer is not None else None
            if result is None:
                log.warning("member %s of %s refused initialize on %s", target.name, server.name, url)
                continue
            self.calls.guard.scan_initialize(target.name, result)
            version = result.get("protocolVersion")
            version = version if version in HANDSHAKE_PROTOCOL_VERSIONS else HANDSHAKE_PROTOCOL_VERSIONS[-1]
            session = MemberSession(target.name, url, response.header(MCP_SESSION_ID), version)
            await self._notify_initialized(session, target.timeout, presenting)
            return session, result
        raise UpstreamUnavailable(f"No backend of member {target.name!r} is reachable")

    async def _notify_initialized(self, member: MemberSession, timeout: float, presenting: Presenting | None) -> None:
        body = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
        response = await self.send_to_member_once(member, "POST", body, timeout, presenting)
        response.release()

    async def reopen(
        self, record: SessionRecord, server: VirtualServer, index: int, failed: MemberSession, caller: Principal | None
    ) -> MemberSession:
        """Open a member again, alone, with the client's own initialize; the other members carry on.
        A member that cannot be opened is 503 until a later request opens it.

        One reopening of a session at a time in this process, each from the record as stored: a
        member another request reopened meanwhile is used as it is, and a session ended meanwhile
        (DELETE, revocation) stays ended, the member's new backend session with it."""
        lock = self._reopening.setdefault(record.id, asyncio.Lock())
        async with lock:
            stored = await self._stored(record)
            if members_of(stored)[index] != failed and members_of(stored)[index].backend is not None:
                return members_of(stored)[index]
            assert stored.initialize is not None
            try:
                session, _ = await self.open_member(server, index, stored.initialize.encode(), caller)
            except (UpstreamUnavailable, BackendRefused):
                await self._save_member(
                    stored, index, dataclasses.replace(failed, backend=None, backend_session_id=None)
                )
                raise UpstreamUnavailable(f"Member {failed.target!r} of {server.name!r} is unavailable") from None
            try:
                stored = await self._stored(record)
            except SessionNotFound:
                stand_in = dataclasses.replace(
                    record, backend=session.backend or "", backend_session_id=session.backend_session_id
                )
                pool = server.members[index][1]
                await self.calls.upstream.end_session(stand_in, pool.target.timeout, pool.presenting(caller))
                raise
            await self._save_member(stored, index, session)
            record.members = stored.members
            return session

    async def _stored(self, record: SessionRecord) -> SessionRecord:
        stored = await self.calls.store.get(record.id)
        if stored is None:
            raise SessionNotFound("Session not found")
        return stored

    async def _save_member(self, record: SessionRecord, index: int, member: MemberSession) -> None:
        members = members_of(record)
        members[index] = member
        await self._save(record, members)

    async def _save(self, record: SessionRecord, members: list[MemberSession]) -> None:
        store_members(record, members)
        await self.calls.store.replace_backend(record, self.calls.sessions.ttl)
        self.served(record)

    def member_headers(self, member: MemberSession, forwarded: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": ACCEPT, **(forwarded or {})}
        headers[MCP_PROTOCOL_VERSION] = member.protocol_version
        if member.backend_session_id is not None:
            headers[MCP_SESSION_ID] = member.backend_session_id
        return headers

    async def send_to_member_once(
        self, member: MemberSession, method: str, body: bytes | None, timeout: float, presenting: Presenting | None
    ) -> UpstreamResponse:
        assert member.backend is not None
        headers = self.member_headers(member)
        return await self.calls.upstream.send(
            method, member.backend, headers, body, timeout=timeout, presenting=presenting
        )

    async def send_to_member(
        self,
        record: SessionRecord,
        server: VirtualServer,
        index: int,
        body: bytes | None,
        forwarded: dict[str, str] | None = None,
        method: str = "POST",
        member: MemberSession | None = None,
        caller: Principal | None = None,
    ) -> tuple[MemberSession, UpstreamResponse]:
        """Send to a member's backend session (`member`, when the caller read the record's members
        already); when the backend is gone or forgot the session, open the member again (alone) and
        send once more."""
        pool = server.members[index][1]
        presenting = pool.presenting(caller)
        member = member or members_of(record)[index]
        for attempt in range(2):
            if member.backend is None or attempt:
                member = await self.reopen(record, server, index, member, caller)
            assert member.backend is not None
            headers = self.member_headers(member, forwarded)
            try:
                response = await self.calls.upstream.send(
                    method, member.backend, headers, body, timeout=pool.target.timeout, presenting=presenting
                )
            except UpstreamTimeout:
                raise
            except UpstreamUnavailable:
                continue
            if response.status == 404 and member.backend_session_id is not None:
                response.release()
                continue
            return member, response
        raise UpstreamUnavailable(f"Member {member.target!r} of {server.name!r} is unavailable")

    def guard_member_answers(
        self, answers: MemberAnswers, record: SessionRecord, server: VirtualServer, index: int, caller: Principal | None
    ) -> None:
        """A member's answer or stream in a virtual session: screened by the policies of the member's
        target and of the virtual server, its requests noted as awaiting the client's answer."""
        answers.expecting = functools.partial(self.calls.store.expect_answers, record.id)
        target = server.members[index][1].target.name

        def answer(body: bytes) -> None:
            in_background(self._answer_member(record, server, index, body, caller))

        answers.screen = self.calls.screen(target, caller, record.id, answer, server.name)

    async def _answer_member(
        self, record: SessionRecord, server: VirtualServer, index: int, body: bytes, caller: Principal | None
    ) -> None:
        try:
            _, response = await self.send_to_member(record, server, index, body, caller=caller)
            response.release()
        except UpstreamUnavailable as exc:
            log.warning("a refused request's answer did not reach member %d of %s: %s", index, server.name, exc)

    async def end(self, record: SessionRecord, server: VirtualServer, caller: Principal | None) -> None:
        """DELETE: every member's backend session ends, then the record."""
        await self.end_members(record, server, caller=caller)
        await self.calls.store.delete(record.id)

    async def end_members(
        self,
        record: SessionRecord,
        server: VirtualServer,
        timeout: float | None = None,
        caller: Principal | None = None,
    ) -> None:
        """Every member's backend session ends (DELETE, revocation, expiry); `timeout` caps each
        member's own. Without a caller (revocation, expiry) a member that acts on a caller's behalf
        is not told, and expires its session itself."""
        self._served.pop(record.id, None)
        ends = []
        for member, (_, pool) in zip(members_of(record), server.members, strict=False):
            if member.backend is not None and member.backend_session_id is not None:
                stand_in = dataclasses.replace(
                    record, backend=member.backend, backend_session_id=member.backend_session_id
                )
                stand_in.protocol_version = member.protocol_version
                limit = pool.target.timeout if timeout is None else min(timeout, pool.target.timeout)
                ends.append(self.calls.upstream.end_session(stand_in, limit, pool.presenting(caller)))
        await asyncio.gather(*ends)
