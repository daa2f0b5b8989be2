"""The steps a message to a virtual server (contract 12) takes, chosen by
`virtual_steps`; here those of the messages that go to one member (a routed
call, the client's answer to a member's request), to every member (a broadcast)
or to none (answered by the gateway), and the session's merged GET stream.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from starlette.types import Receive, Send

from agentgw import jsonrpc, sse
from agentgw.auth.principal import Principal
from agentgw.call import Call, Steps
from agentgw.errors import InvalidParams, InvalidRequest, UpstreamUnavailable
from agentgw.inbound.mcp_calls import McpPost, no_session_to_answer_in
from agentgw.inbound.mcp_virtual import MemberAnswers, VirtualCalls, VirtualServer, members_of, unmember_id
from agentgw.inbound.mcp_virtual_merged import VirtualDiscover, VirtualInitialize, VirtualList
from agentgw.inbound.mcp_virtual_post import LISTED_KEY, VirtualPost, VirtualSteps
from agentgw.inbound.relay import relay, send_answer
from agentgw.sessions.store import SessionRecord
from agentgw.upstream.answers import Answer, refuse_backend_auth
from agentgw.upstream.http import UpstreamResponse

log = logging.getLogger("agentgw.inbound.mcp_virtual")

# Notifications a virtual server passes on to every member; any other is refused.
_BROADCAST_NOTIFICATIONS = frozenset({"notifications/cancelled", "notifications/roots/list_changed"})
# Methods sent to every member at once; the gateway answers the client itself.
_BROADCAST_REQUESTS = frozenset({"logging/setLevel"})


def virtual_steps(virtual: VirtualCalls, server: VirtualServer, post: VirtualPost) -> Steps[Any]:
    """The steps one message to a virtual server takes, by what it is."""
    message = post.message
    method = message.get("method")
    if method == "initialize":
        return VirtualInitialize(virtual, server, post)
    if method == "server/discover":
        return VirtualDiscover(virtual, server, post)
    if "method" not in message:
        return VirtualReply(virtual, server, post)
    if "id" not in message:
        if method == "notifications/initialized":
            return VirtualLocal(virtual, server, post, None)  # every member had its own at opening
        if method not in _BROADCAST_NOTIFICATIONS:
            # A call sent as a notification would reach members unchecked (contract 6).
            raise InvalidRequest(f"Notification {method!r} is not taken by a virtual server")
        return VirtualBroadcast(virtual, server, post)
    if method in LISTED_KEY:
        return VirtualList(virtual, server, post)
    if method == "ping":
        return VirtualLocal(virtual, server, post, {})
    if method in _BROADCAST_REQUESTS:
        return VirtualBroadcast(virtual, server, post)
    return VirtualRouted(virtual, server, post)


class VirtualRouted(VirtualSteps):
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


class VirtualBroadcast(VirtualSteps):
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


class VirtualReply(VirtualSteps):
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


class VirtualLocal(VirtualSteps):
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
