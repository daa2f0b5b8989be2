"""What a virtual server (contract 12) answers from every member at once:
`initialize` (every member opened), `server/discover`, and the lists, each
the union of the members' answers, the lists paged by the gateway itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from starlette.types import Receive, Send

from agentgw import jsonrpc
from agentgw.auth.principal import Principal
from agentgw.call import Call
from agentgw.errors import GatewayError, InvalidParams, InvalidRequest, StoreUnavailable, UpstreamUnavailable
from agentgw.inbound.mcp_virtual import MemberSession, includes, store_members
from agentgw.inbound.mcp_virtual_post import LISTED_KEY, VirtualSteps
from agentgw.inbound.relay import send_answer
from agentgw.mcp_headers import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from agentgw.upstream.answers import Answer

log = logging.getLogger("agentgw.inbound.mcp_virtual")

# The items of one page of a merged list; the gateway's own cursor is the offset of the next page.
PAGE_SIZE = 100
_CURSOR_PREFIX = "agentgw:"
# What a 2026-07-28 result the gateway makes says of caching it: not at all, and for this caller
# only (its lists are trimmed by the caller's policies).
UNCACHED = {"resultType": "complete", "ttlMs": 0, "cacheScope": "private"}


class VirtualInitialize(VirtualSteps):
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
        store_members(record, members)
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


class VirtualDiscover(VirtualSteps):
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


class VirtualList(VirtualSteps):
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
        page: dict[str, Any] = {LISTED_KEY[method]: merged[offset : offset + PAGE_SIZE]}
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
