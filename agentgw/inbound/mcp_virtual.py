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

Each message takes the steps of `agentgw/call.py` like any MCP call; this module
says what a virtual session does at each.
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

from starlette.types import Receive, Send

from agentgw import jsonrpc, sse
from agentgw.auth.principal import Principal
from agentgw.background import in_background
from agentgw.call import Call, Steps
from agentgw.config import VirtualMemberConfig, VirtualServerConfig
from agentgw.errors import (
    BackendRefused,
    GatewayError,
    InvalidParams,
    InvalidRequest,
    SessionNotFound,
    StoreUnavailable,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from agentgw.inbound.mcp_calls import Listing, McpCalls, McpPost, no_session_to_answer_in
from agentgw.inbound.mcp_request import InboundRequest
from agentgw.inbound.relay import AnswerFilter, relay, send_answer
from agentgw.mcp_headers import (
    HANDSHAKE_PROTOCOL_VERSIONS,
    MCP_METHOD,
    MCP_NAME,
    MCP_PROTOCOL_VERSION,
    MCP_SESSION_ID,
    MODERN_PROTOCOL_VERSIONS,
)
from agentgw.policy.rate_limits import Kind
from agentgw.sessions.store import SessionRecord
from agentgw.upstream.answers import Answer, read_answer, refuse_backend_auth
from agentgw.upstream.credentials import Presenting
from agentgw.upstream.http import UpstreamResponse
from agentgw.upstream.mcp import BackendPool

log = logging.getLogger("agentgw.inbound.mcp_virtual")

# The items of one page of a merged list; the gateway's own cursor is the offset of the next page.
PAGE_SIZE = 100
_CURSOR_PREFIX = "agentgw:"
# Pages of one member's list read at most, whatever cursors it keeps sending.
MAX_MEMBER_PAGES = 20
# How often a process looks for the virtual sessions it served that expired, and how many it keeps
# watching (the least recently used beyond that are left to their members' own expiry).
EXPIRY_CHECK_INTERVAL = 5.0
MAX_WATCHED_SESSIONS = 100_000
# What a member's server-to-client request id becomes: this, the member's index, ":", the id as JSON.
_MEMBER_ID_PREFIX = "agentgw-m"
_MAX_MEMBER_ID = 1024
_LISTED_KEY = {
    "tools/list": "tools",
    "prompts/list": "prompts",
    "resources/list": "resources",
    "resources/templates/list": "resourceTemplates",
}
_ACCEPT = "application/json, text/event-stream"
# What a 2026-07-28 result the gateway makes says of caching it: not at all, and for this caller
# only (its lists are trimmed by the caller's policies).
UNCACHED = {"resultType": "complete", "ttlMs": 0, "cacheScope": "private"}
# Notifications a virtual server passes on to every member; any other is refused.
_BROADCAST_NOTIFICATIONS = frozenset({"notifications/cancelled", "notifications/roots/list_changed"})
# Methods sent to every member at once; the gateway answers the client itself.
_BROADCAST_REQUESTS = frozenset({"logging/setLevel"})


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


def _store_members(record: SessionRecord, members: list[MemberSession]) -> None:
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

    def steps(self, server: VirtualServer, post: VirtualPost) -> Steps[Any]:
        message = post.message
        method = message.get("method")
        if method == "initialize":
            return VirtualInitialize(self, server, post)
        if method == "server/discover":
            return VirtualDiscover(self, server, post)
        if "method" not in message:
            return VirtualReply(self, server, post)
        if "id" not in message:
            if method == "notifications/initialized":
                return VirtualLocal(self, server, post, None)  # every member had its own at opening
            if method not in _BROADCAST_NOTIFICATIONS:
                # A call sent as a notification would reach members unchecked (contract 6).
                raise InvalidRequest(f"Notification {method!r} is not taken by a virtual server")
            return VirtualBroadcast(self, server, post)
        if method in _LISTED_KEY:
            return VirtualList(self, server, post)
        if method == "ping":
            return VirtualLocal(self, server, post, {})
        if method in _BROADCAST_REQUESTS:
            return VirtualBroadcast(self, server, post)
        return VirtualRouted(self, server, post)

    # -- member sessions ----------------------------------------------------------------

    async def open_member(
        self, server: VirtualServer, index: int, initialize: bytes, caller: Principal | None
    ) -> tuple[MemberSession, dict[str, Any]]:
        """Open a member's backend session on the first backend of its target that answers; its
        session and the checked initialize result."""
        pool = server.members[index][1]
        target = pool.target
        headers = {"content-type": "application/json", "accept": _ACCEPT}
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
        _store_members(record, members)
        await self.calls.store.replace_backend(record, self.calls.sessions.ttl)
        self.served(record)

    def member_headers(self, member: MemberSession, forwarded: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": _ACCEPT, **(forwarded or {})}
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


# Forwarded under the member's own name: only the renamed message is serialised.
RENAMED_METHODS = frozenset({"tools/call", "prompts/get"})


@dataclass(slots=True)
class VirtualPost:
    """One POST to a virtual server as read: one message (virtual servers take no batches), and the
    gateway's own serialisation of it, made as it is read unless the message is forwarded renamed."""

    request: InboundRequest
    message: jsonrpc.Message
    serialised: bytes | None

    @property
    def body(self) -> bytes:
        if self.serialised is None:
            self.serialised = jsonrpc.serialise(self.message)
        return self.serialised


class _VirtualSteps:
    """What every virtual-session step set shares: the session step and its record."""

    kind: Kind = "mcp"

    def __init__(self, virtual: VirtualCalls, server: VirtualServer, post: VirtualPost) -> None:
        self.virtual = virtual
        self.server = server
        self.post = post
        self._found: SessionRecord | None = None
        self.members: list[MemberSession] = []

    @property
    def record(self) -> SessionRecord:
        assert self._found is not None, "the session step comes first"
        return self._found

    @property
    def caller(self) -> Principal | None:
        return self.post.request.principal

    @property
    def stateless(self) -> bool:
        """The 2026-07-28 revision: no session; each request goes to any healthy backend of a member."""
        return self.post.request.is_modern

    async def session(self, call: Call) -> None:
        if self.stateless:
            modern = MODERN_PROTOCOL_VERSIONS[-1]
            self.members = [MemberSession(m.target, None, None, modern) for m, _ in self.server.members]
            return
        message = self.post.message
        # The client's answer to a member's request: one the gateway relayed, answered once (contract 15).
        answers = [json.dumps(message["id"])] if "method" not in message and "id" in message else None
        self._found = await self.virtual.calls.sessions.find(self.post.request, self.server.name, answers)
        self.members = members_of(self._found)
        self.virtual.served(self._found)
        call.session_id = self._found.id

    async def policy(self, call: Call) -> None:
        """Nothing here names a tool, prompt or resource."""

    def _headers(self) -> list[tuple[bytes, bytes]]:
        if self.stateless:
            return []
        return [(k.encode(), v.encode()) for k, v in self.virtual.calls.session_headers(self.record.id)]

    async def _send(
        self, index: int, body: bytes, forwarded: dict[str, str], name: str | None = None
    ) -> tuple[str | None, UpstreamResponse]:
        """Send to a member: within its backend session, or (2026-07-28) to the first healthy backend
        of its target, `name` the member's own name for the request's Mcp-Name."""
        if not self.stateless:
            member, response = await self.virtual.send_to_member(
                self.record, self.server, index, body, forwarded, member=self.members[index], caller=self.caller
            )
            return member.backend, response
        pool = self.server.members[index][1]
        headers = {"content-type": "application/json", "accept": _ACCEPT, **forwarded}
        if name is not None:
            headers[MCP_NAME] = name
        upstream = self.virtual.calls.upstream
        presenting = pool.presenting(self.caller)
        target = pool.target
        return await upstream.send_to_first(pool.rotation(), headers, body, target.timeout, target.name, presenting)

    async def _member_result(
        self, index: int, body: bytes, forwarded: dict[str, str], request_id: Any, what: str
    ) -> dict[str, Any] | None:
        """The checked result of one request to a member (contract 11); None, logged, when the member
        is down or answered anything else: that member is left out of `what`, the others are not."""
        target = self.server.members[index][1].target
        try:
            _, response = await self._send(index, body, forwarded)
            try:
                refuse_backend_auth(response)
                if response.status != 200:
                    raise UpstreamUnavailable(f"answered HTTP {response.status}")
                answer = await read_answer(response, request_id, target.timeout)
            finally:
                response.release()
        except (UpstreamUnavailable, BackendRefused) as exc:
            log.warning("member %s of %s left out of %s: %s", target.name, self.server.name, what, exc)
            return None
        if answer.result is None:
            log.warning("member %s of %s left out of %s: it answered an error", target.name, self.server.name, what)
        return answer.result

    def _meta(self) -> Any:
        """The client's `_meta`: on 2026-07-28 it carries the envelope every request needs."""
        return self.post.message.get("params", {}).get("_meta")

    def _modern(self, method: str) -> dict[str, str]:
        """The headers of a 2026-07-28 request of `method` the gateway makes itself."""
        return {MCP_PROTOCOL_VERSION: MODERN_PROTOCOL_VERSIONS[-1], MCP_METHOD: method}

    def _listing(self, index: int) -> Listing | None:
        """Where the member's tools are listed, should a call name one never seen; None: member down."""
        if self.stateless:
            rotation = self.server.members[index][1].rotation()
            return Listing(rotation[0], self._modern("tools/list"), self._meta()) if rotation else None
        member = self.members[index]
        return Listing(member.backend, self.virtual.member_headers(member), None) if member.backend else None

    async def _list_member(self, call: Call, index: int, method: str) -> list[dict[str, Any]] | None:
        """A member's whole list (every page), checked and trimmed; None when the member is down."""
        pool = self.server.members[index][1]
        target = pool.target
        key = _LISTED_KEY[method]
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        for page in range(MAX_MEMBER_PAGES):
            params: dict[str, Any] = {} if cursor is None else {"cursor": cursor}
            if self.stateless and self._meta() is not None:
                params["_meta"] = self._meta()
            request_id = f"agentgw-list-{page}"
            message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
            forwarded = self._modern(method) if self.stateless else {}
            result = await self._member_result(index, jsonrpc.serialise(message), forwarded, request_id, method)
            if result is None:
                return None
            rewrite = self.virtual.calls.guard.answer_rewrite(
                target.name, method, message, call.caller, target.max_tools
            )
            if rewrite is not None:
                await rewrite(result)
            listed = result.get(key)
            items += [item for item in listed if isinstance(item, dict)] if isinstance(listed, list) else []
            cursor = result.get("nextCursor") if isinstance(result.get("nextCursor"), str) else None
            if cursor is None:
                break
        return items


class VirtualInitialize(_VirtualSteps):
    """`initialize`: every member opened at once; the session stands when one of them answered."""

    async def session(self, call: Call) -> None:
        if self.post.request.session_id is not None:
            raise InvalidRequest("initialize must not carry a session id")

    async def upstream(self, call: Call) -> list[tuple[MemberSession, dict[str, Any]] | BaseException]:
        opening = [
            self.virtual.open_member(self.server, i, self.post.body, self.caller)
            for i in range(len(self.server.members))
        ]
        return await asyncio.gather(*opening, return_exceptions=True)

    async def relay(
        self,
        call: Call,
        answer: list[tuple[MemberSession, dict[str, Any]] | BaseException],
        receive: Receive,
        send: Send,
    ) -> None:
        members: list[MemberSession] = []
        results: list[tuple[str, dict[str, Any]]] = []
        for (member, _), opened in zip(self.server.members, answer, strict=True):
            if isinstance(opened, BaseException):
                if not isinstance(opened, GatewayError):
                    raise opened
                log.warning("member %s of %s did not open: %s", member.target, self.server.name, opened)
                members.append(MemberSession(member.target, None, None, HANDSHAKE_PROTOCOL_VERSIONS[-1]))
                continue
            members.append(opened[0])
            results.append((member.target, opened[1]))
        if not results:
            raise UpstreamUnavailable(f"No member of {self.server.name!r} answered")
        calls = self.virtual.calls
        record = calls.sessions.new_record(self.server.name, "", None, self.post.message, self.post.body, call.caller)
        _store_members(record, members)
        try:
            await calls.sessions.create(record)
        except StoreUnavailable:
            await self.virtual.end(record, self.server, self.caller)
            raise
        call.session_id = record.id
        self._found = record
        self.virtual.served(record)
        result = _merged_initialize(self.server.name, self.post.message, results)
        response = {"jsonrpc": "2.0", "id": self.post.message.get("id"), "result": result}
        merged = Answer([response], None, 0)
        await send_answer(send, merged, self._headers())


def _merged_initialize(
    name: str, request: jsonrpc.Message, results: list[tuple[str, dict[str, Any]]]
) -> dict[str, Any]:
    """One initialize result for the client: the members' capabilities joined, their instructions
    each headed by the member's name, the version they all speak."""
    versions = [r.get("protocolVersion") for _, r in results]
    requested = request.get("params", {}).get("protocolVersion")
    if all(v == requested for v in versions):
        version = requested
    else:
        known = [v for v in versions if v in HANDSHAKE_PROTOCOL_VERSIONS]
        version = min(known, key=HANDSHAKE_PROTOCOL_VERSIONS.index) if known else HANDSHAKE_PROTOCOL_VERSIONS[-1]
    capabilities: dict[str, Any] = {}
    for _, result in results:
        _join(capabilities, result.get("capabilities"))
    instructions = _instructions(results)
    merged: dict[str, Any] = {
        "protocolVersion": version,
        "capabilities": capabilities,
        "serverInfo": {"name": name, "version": "agentgw"},
    }
    if instructions:
        merged["instructions"] = instructions
    return merged


def _instructions(results: list[tuple[str, dict[str, Any]]]) -> str:
    """The members' instructions, each headed by its member's name."""
    parts = [f"{target}: {r['instructions']}" for target, r in results if isinstance(r.get("instructions"), str)]
    return "\n\n".join(parts)


def _join(into: dict[str, Any], capabilities: Any) -> None:
    """The union of capability objects: a capability any member has, with any flag any member sets."""
    if not isinstance(capabilities, dict):
        return
    for key, value in capabilities.items():
        if isinstance(value, dict):
            held = into.setdefault(key, {})
            if isinstance(held, dict):
                _join(held, value)
        elif value is True or key not in into:
            into[key] = value


class VirtualDiscover(_VirtualSteps):
    """`server/discover` (2026-07-28), answered by the gateway: the members' answers joined, each
    member's instructions scanned (contract 11) and headed by its name."""

    async def upstream(self, call: Call) -> list[dict[str, Any] | None]:
        return await asyncio.gather(*(self._discover(i) for i in range(len(self.server.members))))

    async def _discover(self, index: int) -> dict[str, Any] | None:
        forwarded = self.post.request.forwarded_headers()
        result = await self._member_result(index, self.post.body, forwarded, self.post.message.get("id"), "discover")
        if result is not None:
            self.virtual.calls.guard.scan_initialize(self.server.members[index][1].target.name, result)
        return result

    async def relay(self, call: Call, answer: list[dict[str, Any] | None], receive: Receive, send: Send) -> None:
        results = [(m.target, r) for (m, _), r in zip(self.server.members, answer, strict=True) if r is not None]
        if not results:
            raise UpstreamUnavailable(f"No member of {self.server.name!r} answered")
        offered = [r.get("supportedVersions") for _, r in results]
        common = [v for v in MODERN_PROTOCOL_VERSIONS if all(isinstance(o, list) and v in o for o in offered)]
        capabilities: dict[str, Any] = {}
        for _, result in results:
            _join(capabilities, result.get("capabilities"))
        # Stateless only when every member is: otherwise the handshake revisions alone, which a client
        # takes as a legacy server (it falls back to initialize, where every member is reached).
        everyone = len(results) == len(self.server.members) and common
        merged: dict[str, Any] = {
            "supportedVersions": common if everyone else list(HANDSHAKE_PROTOCOL_VERSIONS),
            "capabilities": capabilities,
            **UNCACHED,
        }
        instructions = _instructions(results)
        if instructions:
            merged["instructions"] = instructions
        response = {"jsonrpc": "2.0", "id": self.post.message.get("id"), "result": merged}
        await send_answer(send, Answer([response], None, 0), self._headers())


class VirtualList(_VirtualSteps):
    """`tools/list`, `prompts/list`, `resources/list`, `resources/templates/list`: the union of the
    members' lists, each as its own target's policies and scans leave it, paged by the gateway."""

    async def upstream(self, call: Call) -> list[list[dict[str, Any]] | None]:
        method = self.post.message["method"]
        listing = [self._list_member(call, i, method) for i in range(len(self.server.members))]
        return await asyncio.gather(*listing)

    async def relay(self, call: Call, answer: list[list[dict[str, Any]] | None], receive: Receive, send: Send) -> None:
        method = self.post.message["method"]
        merged = self._merged(method, answer, call.caller)
        offset = _offset(self.post.message.get("params", {}).get("cursor"))
        page: dict[str, Any] = {_LISTED_KEY[method]: merged[offset : offset + PAGE_SIZE]}
        if offset + PAGE_SIZE < len(merged):
            page["nextCursor"] = f"{_CURSOR_PREFIX}{offset + PAGE_SIZE}"
        if self.stateless:
            page |= UNCACHED
        response = {"jsonrpc": "2.0", "id": self.post.message.get("id"), "result": page}
        await send_answer(send, Answer([response], None, 0), self._headers())

    def _merged(
        self, method: str, lists: list[list[dict[str, Any]] | None], caller: Principal | None
    ) -> list[dict[str, Any]]:
        if method in ("resources/list", "resources/templates/list"):
            return [item for items in lists if items for item in items]
        kind: Literal["tool", "prompt"] = "tool" if method == "tools/list" else "prompt"
        scopes = caller.scopes if caller is not None else frozenset()
        engine = self.virtual.calls.live.engine
        # A name two members expose is the one a call by that name reaches: the longest prefix's.
        owner: dict[str, int] = {}
        for index, prefix, member in self.server.longest_prefix_first:
            for item in lists[index] or []:
                name = item.get("name")
                if isinstance(name, str) and includes(member, kind, name):
                    owner.setdefault(prefix + name, index)
        merged = []
        for index, ((member, _), items) in enumerate(zip(self.server.members, lists, strict=True)):
            for item in items or []:
                name = item.get("name")
                if not isinstance(name, str) or not includes(member, kind, name):
                    continue
                full = member.name_prefix + name
                if owner[full] != index:
                    log.warning("%s %r of %s left out: another member exposes it", kind, full, member.target)
                elif engine.decide(self.server.name, kind, full, scopes, named_only=True).allowed:
                    merged.append({**item, "name": full})
                    owner[full] = -1  # listed once, even if the member lists it twice
        return merged


def _offset(cursor: Any) -> int:
    if cursor is None:
        return 0
    offset = cursor[len(_CURSOR_PREFIX) :] if isinstance(cursor, str) and cursor.startswith(_CURSOR_PREFIX) else ""
    if offset.isascii() and offset.isdigit() and len(offset) < 12:
        return int(offset)
    raise InvalidParams("Invalid params: unknown cursor")


class VirtualRouted(_VirtualSteps):
    """A request for one member: `tools/call` and `prompts/get` by prefix, `resources/read` and the
    rest by the member that lists the resource."""

    def __init__(self, virtual: VirtualCalls, server: VirtualServer, post: VirtualPost) -> None:
        super().__init__(virtual, server, post)
        self.index = -1
        self.forwarded = post.message
        self.forwarded_body: bytes | None = None  # None: the message is forwarded as the client sent it
        # What the member's policies rule on: the forwarded message, or for a method no policy names
        # (a subscription, a completion) the read or get it stands for.
        self.checked_as: jsonrpc.Message = post.message

    async def policy(self, call: Call) -> None:
        message = self.post.message
        method = message["method"]
        if method in ("tools/call", "prompts/get"):
            await self._route_by_name(call, "tool" if method == "tools/call" else "prompt")
        elif method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
            await self._route_by_uri(call, message.get("params", {}).get("uri"))
        elif method == "completion/complete":
            await self._route_completion(call)
        else:
            raise InvalidRequest(f"Method {method!r} is not served by virtual server {self.server.name!r}")
        calls, pool = self.virtual.calls, self.server.members[self.index][1]
        listing = self._listing(self.index)
        if listing is None:
            named = calls.guard.lookup(pool.target.name, [self.checked_as])
        else:
            post = McpPost(self.post.request, pool, [self.checked_as], False, b"")
            named = await calls.looked_up(post, listing)
        if method == "tools/call" and named and named[0].entry is None and calls.guard.enabled:
            # The member never listed it: a name no member exposes (contract 12).
            raise InvalidParams(f"Invalid params: {self.server.name!r} exposes no tool {message['params']['name']!r}")
        calls.guard.decide(call, pool.target.name, named, False)

    async def _route_by_name(self, call: Call, kind: Literal["tool", "prompt"]) -> None:
        exposed = self.post.message["params"]["name"]
        routed = self.server.route(kind, exposed)
        if routed is None:
            _ = self.post.body  # a lone surrogate is a parse error before it is an unknown name
            raise InvalidParams(f"Invalid params: {self.server.name!r} exposes no {kind} {exposed!r}")
        self.index, name = routed
        self._forward_as({**self.post.message, "params": {**self.post.message["params"], "name": name}})
        self.checked_as = self.forwarded
        self._decide_exposed(call, kind, exposed, name)

    def _forward_as(self, renamed: jsonrpc.Message) -> None:
        # What is checked is what is forwarded, refused (for a lone surrogate) before any decision.
        self.forwarded_body = jsonrpc.serialise(renamed)
        self.forwarded = renamed

    def _decide_exposed(self, call: Call, kind: Literal["tool", "prompt", "resource"], exposed: str, name: str) -> None:
        target = self.server.members[self.index][1].target.name
        self.virtual.calls.guard.decide_exposed(call, self.server.name, kind, exposed, target, name)

    async def _route_by_uri(self, call: Call, uri: Any) -> None:
        self.index = await self._owner_of(call, uri)
        self._decide_exposed(call, "resource", uri, uri)
        self.checked_as = {"jsonrpc": "2.0", "method": "resources/read", "params": {"uri": uri}}

    async def _route_completion(self, call: Call) -> None:
        ref = self.post.message.get("params", {}).get("ref")
        if isinstance(ref, dict) and ref.get("type") == "ref/prompt" and isinstance(ref.get("name"), str):
            routed = self.server.route("prompt", ref["name"])
            if routed is None:
                raise InvalidParams(f"Invalid params: {self.server.name!r} exposes no prompt {ref['name']!r}")
            self.index, name = routed
            self._decide_exposed(call, "prompt", ref["name"], name)
            params = {**self.post.message["params"], "ref": {**ref, "name": name}}
            self._forward_as({**self.post.message, "params": params})
            self.checked_as = {"jsonrpc": "2.0", "method": "prompts/get", "params": {"name": name}}
        elif isinstance(ref, dict) and ref.get("type") == "ref/resource":
            await self._route_by_uri(call, ref.get("uri"))
        else:
            raise InvalidParams("Invalid params: completion/complete needs a prompt or resource ref")

    async def _owner_of(self, call: Call, uri: Any) -> int:
        """The member whose resource list (or template list) holds the URI."""
        if not isinstance(uri, str):
            raise InvalidParams("Invalid params: a resource URI is needed")
        for method, key, field in (
            ("resources/list", "resources", "uri"),
            ("resources/templates/list", "resourceTemplates", "uriTemplate"),
        ):
            for index in range(len(self.server.members)):
                items = await self._list_member(call, index, method)
                if items and any(_matches(item.get(field), uri, key == "resourceTemplates") for item in items):
                    return index
        raise InvalidParams(f"Invalid params: no member of {self.server.name!r} lists {uri!r}")

    async def upstream(self, call: Call) -> UpstreamResponse:
        body = self.forwarded_body if self.forwarded_body is not None else self.post.body
        name = jsonrpc.named_target(self.forwarded)
        backend, response = await self._send(self.index, body, self.post.request.forwarded_headers(), name)
        call.backend = backend
        return response

    async def relay(self, call: Call, answer: UpstreamResponse, receive: Receive, send: Send) -> None:
        calls = self.virtual.calls
        pool = self.server.members[self.index][1]
        try:
            refuse_backend_auth(answer)
            answers = MemberAnswers(self.index, [self.post.message.get("id")], calls.foreign_answer(pool))
            if self.stateless:
                answers.screen = calls.screen(
                    pool.target.name, call.caller, None, no_session_to_answer_in, self.server.name
                )
            else:
                self.virtual.guard_member_answers(answers, self.record, self.server, self.index, call.caller)
            headers = [] if self.stateless else calls.session_headers(self.record.id)
            await relay(answer, headers, receive, send, pool.target.timeout, answers=answers)
        finally:
            answer.release()


def _matches(listed: Any, uri: str, template: bool) -> bool:
    if not isinstance(listed, str):
        return False
    if not template:
        return listed == uri
    # A URI template's literal start: `file:///{path}` serves every URI under `file:///`. One that
    # names no more than a scheme would take every URI of it from the members listed after it.
    literal = listed.split("{", 1)[0]
    _, separator, rest = literal.partition("://")
    return bool(separator and rest) and uri.startswith(literal)


class VirtualBroadcast(_VirtualSteps):
    """A notification (`notifications/initialized`, `cancelled`, `roots/list_changed`) or a request
    every member takes (`logging/setLevel`): sent to each open member, answered by the gateway."""

    async def upstream(self, call: Call) -> None:
        body = self.post.body
        sends = [self._send_one(i, body) for i, m in enumerate(self.members) if self.stateless or m.backend]
        await asyncio.gather(*sends)

    async def _send_one(self, index: int, body: bytes) -> None:
        try:
            _, response = await self._send(index, body, self.post.request.forwarded_headers())
        except UpstreamUnavailable as exc:
            log.warning("member %d of %s missed a message: %s", index, self.server.name, exc)
            return
        response.release()

    async def relay(self, call: Call, answer: None, receive: Receive, send: Send) -> None:
        if "id" in self.post.message:
            response = {"jsonrpc": "2.0", "id": self.post.message["id"], "result": {}}
            await send_answer(send, Answer([response], None, 0), self._headers())
            return
        await send({"type": "http.response.start", "status": 202, "headers": self._headers()})
        await send({"type": "http.response.body", "body": b""})


class VirtualReply(_VirtualSteps):
    """The client's answer to a member's request: back to that member, under the member's own id."""

    async def upstream(self, call: Call) -> UpstreamResponse:
        routed = unmember_id(self.post.message.get("id"))
        if routed is None or not 0 <= routed[0] < len(self.server.members) or self.stateless:
            raise InvalidRequest("Invalid request: an answer to no request of this session")
        index, original = routed
        body = jsonrpc.serialise({**self.post.message, "id": original})
        _, response = await self._send(index, body, {})
        return response

    async def relay(self, call: Call, answer: UpstreamResponse, receive: Receive, send: Send) -> None:
        answer.release()
        await send({"type": "http.response.start", "status": 202, "headers": self._headers()})
        await send({"type": "http.response.body", "body": b""})


class VirtualLocal(_VirtualSteps):
    """A message the gateway answers for the virtual server itself: `ping` with `result`, a
    notification no member needs (`result` None) with 202."""

    def __init__(
        self, virtual: VirtualCalls, server: VirtualServer, post: VirtualPost, result: dict[str, Any] | None
    ) -> None:
        super().__init__(virtual, server, post)
        self.result = result

    async def upstream(self, call: Call) -> None:
        return None

    async def relay(self, call: Call, answer: None, receive: Receive, send: Send) -> None:
        if self.result is None:
            await send({"type": "http.response.start", "status": 202, "headers": self._headers()})
            await send({"type": "http.response.body", "body": b""})
            return
        response = {"jsonrpc": "2.0", "id": self.post.message.get("id"), "result": self.result}
        await send_answer(send, Answer([response], None, 0), self._headers())


async def relay_streams(
    virtual: VirtualCalls,
    server: VirtualServer,
    record: SessionRecord,
    caller: Principal | None,
    receive: Receive,
    send: Send,
) -> None:
    """The session's GET stream: every open member's own stream merged into one, each member's
    requests under ids naming it, a member's `*/list_changed` as the virtual server's."""
    headers = [(b"content-type", sse.EVENT_STREAM.encode()), (b"cache-control", b"no-cache")]
    headers += [(k.encode(), v.encode()) for k, v in virtual.calls.session_headers(record.id)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    lock = asyncio.Lock()

    async def forward(index: int) -> None:
        member = members_of(record)[index]
        if member.backend is None:
            return
        pool = server.members[index][1]
        try:
            presenting = pool.presenting(caller)
            response = await virtual.send_to_member_once(member, "GET", None, pool.target.timeout, presenting)
        except UpstreamUnavailable as exc:
            log.warning("member %s of %s sends no messages of its own: %s", member.target, server.name, exc)
            return
        try:
            if response.status != 200 or not sse.is_event_stream(response.header("content-type")):
                return
            answers = MemberAnswers(index, [], virtual.calls.foreign_answer(pool))
            virtual.guard_member_answers(answers, record, server, index, caller)
            decoder = sse.SseDecoder()
            async for chunk in response.chunks(None):
                data = answers.events(decoder, chunk)
                if answers.asked:
                    await answers.record_asked()
                if data:
                    async with lock:
                        await send({"type": "http.response.body", "body": data, "more_body": True})
        finally:
            response.release()

    streams = [asyncio.ensure_future(forward(i)) for i in range(len(server.members))]
    disconnect = asyncio.ensure_future(_wait_for_disconnect(receive))
    try:
        await asyncio.wait([*streams, disconnect], return_when=asyncio.FIRST_COMPLETED)
        if not disconnect.done():
            await disconnect
    finally:
        for task in [*streams, disconnect]:
            task.cancel()
        for outcome in await asyncio.gather(*streams, disconnect, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.error("a member's stream of %s failed", server.name, exc_info=outcome)
    await send({"type": "http.response.body", "body": b""})


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
