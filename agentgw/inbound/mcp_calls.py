"""The steps of an MCP call (`agentgw/call.py`), for each kind of POST.

A POST is one of three kinds, each with its own steps: an `initialize`, which
opens a session once the backend's answer is checked; a message in a stateful
session (2025 revisions), which may fail over to another backend; and a
message of the stateless 2026-07-28 revision, pinned only by the handle the
client echoes. `McpCalls` holds what the three share.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from starlette.types import Receive, Send

from agentgw import jsonrpc
from agentgw.auth.principal import Principal
from agentgw.background import in_background
from agentgw.call import Call, Steps
from agentgw.errors import BackendRefused, InvalidRequest, StoreUnavailable, UpstreamTimeout, UpstreamUnavailable
from agentgw.inbound.mcp_guardrails import AnswerBackend, MessageScreen
from agentgw.inbound.mcp_request import InboundRequest
from agentgw.inbound.mcp_sessions import McpSessions
from agentgw.inbound.relay import AnswerFilter, client_headers, relay, relay_checked, send_answer
from agentgw.mcp_headers import MCP_METHOD, MCP_PROTOCOL_VERSION, MCP_SESSION_ID, MODERN_PROTOCOL_VERSIONS
from agentgw.observability.guardrail_actions import GuardrailActions, Where
from agentgw.observability.refusals import Refusals
from agentgw.policy.live import LivePolicies
from agentgw.policy.rate_limits import Kind
from agentgw.policy.tool_guard import NamedCall, Rewrite, ToolGuard
from agentgw.sessions.stateless import StatelessHandles
from agentgw.sessions.store import SessionRecord, SessionRecords
from agentgw.upstream.answers import Answer, read_answer, refuse_backend_auth
from agentgw.upstream.credentials import Presenting
from agentgw.upstream.http import UpstreamResponse
from agentgw.upstream.mcp import ACCEPT, BackendPool, McpUpstream

log = logging.getLogger("agentgw.inbound.mcp")

# Answers the gateway reads whole and checks before the client sees them (contract 11).
CHECKED_METHODS = frozenset(
    {"initialize", "tools/list", "prompts/list", "resources/list", "resources/templates/list", "server/discover"}
)
# A call naming a tool the catalogue does not know has the target listed again at most this often,
# so names a client invents cost the backend one listing per interval, not one per call.
REDISCOVER_AFTER = 10.0


@dataclass(slots=True)
class McpPost:
    """One MCP POST as read: the request, its target's backends, its messages and the body to forward
    (the gateway's own serialisation, the one the policy checked)."""

    request: InboundRequest
    pool: BackendPool
    messages: list[jsonrpc.Message]
    batch: bool
    body: bytes

    @property
    def target(self) -> str:
        return self.pool.target.name

    @property
    def timeout(self) -> float:
        return self.pool.target.timeout


@dataclass(frozen=True, slots=True)
class Checked:
    """An answer to read whole and check: the id it must answer, and how its result is changed."""

    request_id: Any
    rewrite: Rewrite | None


class Listing(NamedTuple):
    """Where and how a call's target has its tools listed, should the call name one never seen."""

    url: str
    headers: dict[str, str]
    meta: Any


class McpCalls:
    """What the steps of every kind of MCP call share."""

    def __init__(
        self,
        store: SessionRecords,
        upstream: McpUpstream,
        sessions: McpSessions,
        handles: StatelessHandles,
        guard: ToolGuard,
        live: LivePolicies,
        refusals: Refusals,
        guardrail_actions: GuardrailActions,
    ) -> None:
        self.store = store
        self.upstream = upstream
        self.sessions = sessions
        self.guardrail_actions = guardrail_actions
        self.handles = handles
        self.guard = guard
        self.live = live
        # Made once per target, not per request: what an answer to another request costs the backend.
        self._foreign_answer = {
            name: functools.partial(refusals.record, name, "bad_backend_answer", "a response to another request")
            for name in upstream.pools
        }
        self._discoveries: dict[str, asyncio.Future[None]] = {}
        self._discovered_at: dict[str, float] = {}

    def steps(self, post: McpPost) -> Steps[Any]:
        if post.request.is_modern:
            return StatelessCall(self, post)
        if not post.batch and post.messages[0].get("method") == "initialize":
            return InitializeCall(self, post)
        return SessionCall(self, post)

    def answers(self, pool: BackendPool, request_ids: list[Any]) -> AnswerFilter:
        """What an answer from `pool` may hold: responses to `request_ids` only."""
        return AnswerFilter(request_ids, self._foreign_answer[pool.target.name])

    def foreign_answer(self, pool: BackendPool) -> Callable[[], None]:
        """Records that a backend of `pool` answered a request not sent with the answer's request."""
        return self._foreign_answer[pool.target.name]

    # -- policy -------------------------------------------------------------------

    async def check(self, call: Call, post: McpPost, listing: Listing) -> None:
        """The policy step: one catalogue lookup per named call, a second only after the target's
        tools were listed because the call names one never seen."""
        self.guard.decide(call, post.target, await self.looked_up(post, listing), post.batch)

    async def looked_up(self, post: McpPost, listing: Listing) -> list[NamedCall]:
        """What the catalogue knows of the tools the messages name, the target listed first when one
        of them was never seen (at most once per target every REDISCOVER_AFTER seconds)."""
        named = self.guard.lookup(post.target, post.messages)
        if self.guard.unseen(named) and self._may_discover(post.target):
            await self._discover_once(post, listing)
            named = self.guard.lookup(post.target, post.messages)
        return named

    async def _discover_once(self, post: McpPost, listing: Listing) -> None:
        """Calls arriving together for unseen tools share one listing of the target."""
        target = post.target
        running = self._discoveries.get(target)
        if running is None:
            self._discovered_at[target] = time.monotonic()
            presenting = post.pool.presenting(post.request.principal)
            running = self._discoveries[target] = asyncio.ensure_future(self._discover(post.pool, listing, presenting))
            running.add_done_callback(lambda _: self._discoveries.pop(target, None))
        await asyncio.shield(running)

    async def _discover(self, pool: BackendPool, listing: Listing, presenting: Presenting | None) -> None:
        target = pool.target
        tools, complete = await self.upstream.list_tools(
            listing.url, listing.headers, listing.meta, target.timeout, presenting
        )
        await self.guard.observe(target.name, tools, target.max_tools, complete)

    def _may_discover(self, target: str) -> bool:
        last = self._discovered_at.get(target)
        return last is None or time.monotonic() - last >= REDISCOVER_AFTER or target in self._discoveries

    # -- upstream and relay -----------------------------------------------------------

    async def send_to_first(self, candidates: list[str], post: McpPost) -> tuple[str, UpstreamResponse]:
        """POST to the first backend that can be reached: an initialize opens no session on the ones
        skipped, and the stateless revision keeps none."""
        headers = post.request.forwarded_headers()
        presenting = post.pool.presenting(post.request.principal)
        return await self.upstream.send_to_first(candidates, headers, post.body, post.timeout, post.target, presenting)

    async def send_in_session(
        self, request: InboundRequest, pool: BackendPool, record: SessionRecord, body: bytes | None
    ) -> tuple[SessionRecord, UpstreamResponse]:
        """Send to the session's backend; when it is gone, or no longer knows the session, fail over
        (`failover: reinitialize`) and send again, once. The session as it ends up, and the answer."""
        headers = request.forwarded_headers()
        presenting = pool.presenting(request.principal)
        for _ in range(2):
            if record.backend_session_id is not None:
                headers[MCP_SESSION_ID] = record.backend_session_id
            try:
                response = await self.upstream.send(
                    request.method, record.backend, headers, body, timeout=pool.target.timeout, presenting=presenting
                )
            except UpstreamTimeout:
                raise
            except UpstreamUnavailable:
                record = await self.sessions.fail_over(pool, record, presenting)
                continue
            if response.status == 404 and record.backend_session_id is not None:
                # The backend no longer knows its session: it restarted or expired it.
                response.release()
                record = await self.sessions.fail_over(pool, record, presenting)
                continue
            return record, response
        raise UpstreamUnavailable(f"No backend of target {pool.target.name!r} kept the session")

    def checked(self, post: McpPost, caller: Principal | None) -> Checked | None:
        """How the answer to a lone message the gateway acts on is read: whole, checked, changed by
        `rewrite`; None for any other answer, which is relayed as it streams."""
        message = post.messages[0]
        method = message.get("method")
        if post.batch or method not in CHECKED_METHODS or "id" not in message:
            return None
        target = post.pool.target
        rewrite = self.guard.answer_rewrite(target.name, method, message, caller, target.max_tools)
        return Checked(message["id"], rewrite)

    async def relay(
        self,
        response: UpstreamResponse,
        headers: list[tuple[str, str]],
        receive: Receive,
        send: Send,
        post: McpPost,
        checked: Checked | None,
    ) -> None:
        refuse_backend_auth(response)
        if checked is None:
            await relay(response, headers, receive, send, post.timeout, answers=post.request.answers)
        else:
            await relay_checked(response, headers, send, post.timeout, checked.request_id, checked.rewrite)

    def screen(
        self, target: str, caller: Principal | None, session_id: str | None, answer_backend: AnswerBackend, *also: str
    ) -> MessageScreen | None:
        """What a backend of `target` (a member of virtual server `also`) sends, held to the
        GuardrailPolicy in force; None when none applies, and the answer streams as it comes."""
        guard = self.live.guardrails.guard("mcp", target, *also)
        if guard is None:
            return None
        where = Where(target, caller.subject if caller is not None else None, session_id, "answer")
        return MessageScreen(guard, self.guardrail_actions, where, answer_backend)

    def guard_session_answers(
        self, answers: AnswerFilter | None, pool: BackendPool, record: SessionRecord, caller: Principal | None
    ) -> None:
        """A stateful session's answer or stream: screened, and the backend's requests in it noted
        as awaiting the client's answer (contract 15)."""
        if answers is None:
            return
        answers.expecting = functools.partial(self.store.expect_answers, record.id)
        answers.screen = self.screen(pool.target.name, caller, record.id, self._answer_in_session(pool, record, caller))

    def _answer_in_session(self, pool: BackendPool, record: SessionRecord, caller: Principal | None) -> AnswerBackend:
        # Made on every stateful request, used only when a backend's request is refused: the
        # headers are built then.
        def answer(body: bytes) -> None:
            headers = {"content-type": "application/json", "accept": ACCEPT}
            headers[MCP_PROTOCOL_VERSION] = record.protocol_version
            if record.backend_session_id is not None:
                headers[MCP_SESSION_ID] = record.backend_session_id
            timeout, presenting = pool.target.timeout, pool.presenting(caller)
            in_background(self.upstream.post_answer(record.backend, headers, body, timeout, presenting))

        return answer

    def session_headers(self, session_id: str) -> list[tuple[str, str]]:
        """Mcp-Session-Id, and the SessionPolicy's second header, both naming the gateway's session."""
        second = self.live.policies.session.second_header
        if second == MCP_SESSION_ID:
            return [(MCP_SESSION_ID, session_id)]
        return [(MCP_SESSION_ID, session_id), (second, session_id)]


class InitializeCall:
    """`initialize`: no session yet; the backend's answer is checked, then the session is stored."""

    kind: Kind = "mcp"

    def __init__(self, calls: McpCalls, post: McpPost) -> None:
        self.calls = calls
        self.post = post

    async def session(self, call: Call) -> None:
        if self.post.request.session_id is not None:
            raise InvalidRequest("initialize must not carry a session id")

    async def policy(self, call: Call) -> None:
        """An initialize names nothing a policy rules on."""

    async def upstream(self, call: Call) -> tuple[str, UpstreamResponse]:
        candidates = await self.post.pool.candidates(self.calls.store, time.time())
        return await self.calls.send_to_first(candidates, self.post)

    async def relay(self, call: Call, answer: tuple[str, UpstreamResponse], receive: Receive, send: Send) -> None:
        url, response = answer
        post, calls = self.post, self.calls
        try:
            refuse_backend_auth(response)
            if not 200 <= response.status < 300:
                # The backend refused: its answer, and no session. (Any 2xx is an answer clients
                # accept, so any 2xx is checked.)
                await relay(response, [], receive, send, post.timeout)
                return
            message = post.messages[0]
            backend_session_id = response.header(MCP_SESSION_ID)
            record = calls.sessions.new_record(post.target, url, backend_session_id, message, post.body, call.caller)
            checked = await self._open(record, response, message.get("id"))
            call.session_id, call.backend = record.id, url
            await send_answer(send, checked, client_headers(response, calls.session_headers(record.id)))
        finally:
            response.release()

    async def _open(self, record: SessionRecord, response: UpstreamResponse, request_id: Any) -> Answer:
        """Check the backend's answer and store the new session. A backend session whose answer is
        refused, or that cannot be stored, is ended at once: no client leaves one open behind the gateway."""
        calls, target = self.calls, self.post.pool.target
        try:
            answer = await read_answer(response, request_id, target.timeout)
            if answer.result is not None:
                calls.guard.scan_initialize(target.name, answer.result)
            await calls.sessions.create(record)
        except (StoreUnavailable, BackendRefused, UpstreamUnavailable):
            presenting = self.post.pool.presenting(self.post.request.principal)
            await calls.upstream.end_session(record, target.timeout, presenting)
            raise
        return answer


class SessionCall:
    """A message in a stateful session (2025 revisions): sent to the session's backend."""

    kind: Kind = "mcp"

    def __init__(self, calls: McpCalls, post: McpPost) -> None:
        self.calls = calls
        self.post = post
        self.record: SessionRecord | None = None

    def _record(self) -> SessionRecord:
        assert self.record is not None, "the session step comes first"
        return self.record

    async def session(self, call: Call) -> None:
        answers = [json.dumps(m["id"]) for m in self.post.messages if "method" not in m and "id" in m]
        self.record = await self.calls.sessions.find(self.post.request, self.post.target, answers)
        call.session_id = self.record.id

    async def policy(self, call: Call) -> None:
        record = self._record()
        headers = {MCP_PROTOCOL_VERSION: self.post.request.protocol_version or record.protocol_version}
        if record.backend_session_id is not None:
            headers[MCP_SESSION_ID] = record.backend_session_id
        await self.calls.check(call, self.post, Listing(record.backend, headers, None))

    async def upstream(self, call: Call) -> UpstreamResponse:
        post = self.post
        self.record, response = await self.calls.send_in_session(post.request, post.pool, self._record(), post.body)
        call.backend = self.record.backend
        return response

    async def relay(self, call: Call, answer: UpstreamResponse, receive: Receive, send: Send) -> None:
        try:
            record = self._record()
            headers = self.calls.session_headers(record.id)
            self.calls.guard_session_answers(self.post.request.answers, self.post.pool, record, call.caller)
            checked = self.calls.checked(self.post, call.caller)
            await self.calls.relay(answer, headers, receive, send, self.post, checked)
        finally:
            answer.release()


class StatelessCall:
    """A message of the stateless 2026-07-28 revision: to any healthy backend, or to the one the
    client's echoed handle pins when the SessionPolicy keeps `stickySession`."""

    kind: Kind = "mcp"

    def __init__(self, calls: McpCalls, post: McpPost) -> None:
        self.calls = calls
        self.post = post
        self.sticky = calls.live.policies.session.sticky_session
        self.pinned: str | None = None
        self.candidates: list[str] = []

    async def session(self, call: Call) -> None:
        self.pinned = await self._pinned_backend(call) if self.sticky else None
        self.candidates = self.post.pool.rotation()
        if self.pinned is not None:
            self.candidates = [self.pinned] + [url for url in self.candidates if url != self.pinned]
        call.session_id = self.post.request.session_id if self.pinned is not None else None

    async def _pinned_backend(self, call: Call) -> str | None:
        """The backend an echoed handle pins to; an unknown one simply pins afresh,
        since this revision promises clients no session to lose."""
        handle, pool = self.post.request.session_id, self.post.pool
        if handle is None:
            return None
        backends = pool.backends
        index = await self.calls.handles.backend_index(handle, pool.target.name, len(backends), call.caller)
        return backends[index].url if index is not None else None

    async def policy(self, call: Call) -> None:
        meta = self.post.messages[0].get("params", {}).get("_meta")
        modern = {MCP_PROTOCOL_VERSION: MODERN_PROTOCOL_VERSIONS[-1], MCP_METHOD: "tools/list"}
        await self.calls.check(call, self.post, Listing(self.candidates[0], modern, meta))

    async def upstream(self, call: Call) -> tuple[str, UpstreamResponse]:
        return await self.calls.send_to_first(self.candidates, self.post)

    async def relay(self, call: Call, answer: tuple[str, UpstreamResponse], receive: Receive, send: Send) -> None:
        url, response = answer
        pool = self.post.pool
        try:
            handle_header = []
            handle = call.session_id
            if self.sticky:
                if url != self.pinned or handle is None:
                    handle = await self.calls.handles.mint(pool.target.name, pool.index_of(url), call.caller)
                handle_header = [(self.calls.live.policies.session.second_header, handle)]
            call.session_id, call.backend = handle, url
            answers = self.post.request.answers
            if answers is not None:
                answers.screen = self.calls.screen(pool.target.name, call.caller, None, no_session_to_answer_in)
            checked = self.calls.checked(self.post, call.caller)
            await self.calls.relay(response, handle_header, receive, send, self.post, checked)
        finally:
            response.release()


def no_session_to_answer_in(body: bytes) -> None:
    # The stateless revision keeps no session a refused request could be answered in.
    log.warning("a backend's request refused by a guardrail in a stateless exchange was dropped")
