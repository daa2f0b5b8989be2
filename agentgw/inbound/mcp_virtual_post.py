"""A POST to a virtual server (contract 12): the message as read, and what
every kind of it shares at the steps of `agentgw/call.py`: the session step,
sending to one member (within its backend session, or on 2026-07-28 to any
healthy backend of its target), a member's checked result, a member's whole list.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from agentgw import jsonrpc
from agentgw.auth.principal import Principal
from agentgw.call import Call
from agentgw.errors import BackendRefused, UpstreamUnavailable
from agentgw.inbound.mcp_calls import Listing
from agentgw.inbound.mcp_request import InboundRequest
from agentgw.inbound.mcp_virtual import MemberSession, VirtualCalls, VirtualServer, members_of
from agentgw.mcp_headers import MCP_METHOD, MCP_NAME, MCP_PROTOCOL_VERSION, MODERN_PROTOCOL_VERSIONS
from agentgw.policy.rate_limits import Kind
from agentgw.sessions.store import SessionRecord
from agentgw.upstream.answers import read_answer, refuse_backend_auth
from agentgw.upstream.http import UpstreamResponse
from agentgw.upstream.mcp import ACCEPT

log = logging.getLogger("agentgw.inbound.mcp_virtual")

# Pages of one member's list read at most, whatever cursors it keeps sending.
MAX_MEMBER_PAGES = 20
# The lists a virtual server merges, and the key of each one's items in a result.
LISTED_KEY = {
    "tools/list": "tools",
    "prompts/list": "prompts",
    "resources/list": "resources",
    "resources/templates/list": "resourceTemplates",
}

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


class VirtualSteps:
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
        headers = {"content-type": "application/json", "accept": ACCEPT, **forwarded}
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
        key = LISTED_KEY[method]
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
