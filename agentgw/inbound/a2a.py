"""A2A, proxied (contracts 8 and 11): both protocol generations, as the agent speaks them.

The agent's card is served with every endpoint pointing at the gateway. A call
naming a task or context goes to the replica that holds it, recorded when a
response first named it; a task of another subject is answered as if it did
not exist. Streams are relayed event by event.

Where a GuardrailPolicy applies to the agent (contract 15), every string it sends back,
in a JSON answer or in a streamed event, is scanned: secrets are redacted, or the answer
(the event, ending the stream) becomes a JSON-RPC error. Without one, answers go through
as they came and events are not even parsed.

The agent is not trusted either: the ids that route a call are read only from
the fields its method defines, the first answer naming an id owns it for good,
an answer the gateway reads must be a JSON-RPC response to the request, and a
push-notification webhook may only name a public host (or an allow-listed one).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from typing import Any

from starlette.types import Receive, Scope, Send

from agentgw import jsonrpc, sse
from agentgw.auth.principal import Principal
from agentgw.call import Call, CallPipeline, call_of
from agentgw.config import Settings
from agentgw.errors import (
    BackendAuthRefused,
    BadBackendAnswer,
    GatewayError,
    InsufficientScope,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PolicyDenied,
    UpstreamTimeout,
    UpstreamUnavailable,
    base_url,
)
from agentgw.inbound.a2a_card import rewrite_card
from agentgw.inbound.a2a_guardrails import AgentScreen, relay_screened_events
from agentgw.inbound.a2a_pins import Pins, answer_to, id_text, owned, pin_key
from agentgw.inbound.a2a_webhooks import MESSAGE_METHODS, webhook_allowed, webhook_urls
from agentgw.inbound.mcp_request import check_content_type, read_body
from agentgw.inbound.relay import relay, response_headers
from agentgw.observability.guardrail_actions import GuardrailActions
from agentgw.observability.refusals import Refusals
from agentgw.policy.agents import AgentPolicyEngine, v1_method
from agentgw.policy.engine import Decision
from agentgw.policy.live import LivePolicies
from agentgw.policy.rate_limits import Kind
from agentgw.sessions.store import KeyValues
from agentgw.upstream.a2a import CARD_PATHS, AgentReplicas, Replica
from agentgw.upstream.answers import MAX_ANSWER_BYTES
from agentgw.upstream.answers import read_body as read_answer_body
from agentgw.upstream.credentials import sent_with
from agentgw.upstream.faults import BACKEND
from agentgw.upstream.http import ConnectionPool, UpstreamResponse

log = logging.getLogger("agentgw.inbound.a2a")

A2A_PREFIX = "/a2a/v1"
TASK_NOT_FOUND = -32001
# Client headers an agent needs; credentials stay at the gateway.
_FORWARDED = ("content-type", "accept", "a2a-version", "a2a-extensions", "traceparent", "tracestate")
CALL_TIMEOUT = 300.0
# The one field naming the task a method acts on (contract 11), by v1 name, as a2a-sdk 1.3 reads it:
# v1 push-config requests carry the task in `taskId` (their `id` names the config), 0.3 ones in `id`
# (but `tasks/pushNotificationConfig/set`, whose params are a TaskPushNotificationConfig).
_V1_TASK_FIELD = {
    "GetTask": "id",
    "CancelTask": "id",
    "SubscribeToTask": "id",
    "CreateTaskPushNotificationConfig": "taskId",
    "GetTaskPushNotificationConfig": "taskId",
    "ListTaskPushNotificationConfigs": "taskId",
    "DeleteTaskPushNotificationConfig": "taskId",
}
_V03_TASK_FIELD = {
    **_V1_TASK_FIELD,
    "GetTaskPushNotificationConfig": "id",
    "ListTaskPushNotificationConfigs": "id",
    "DeleteTaskPushNotificationConfig": "id",
}
# Both SDK parsers (protobuf JSON in v1, pydantic in 0.3) accept a field under its proto name too.
_SPELLINGS = {"id": ("id",), "taskId": ("taskId", "task_id"), "contextId": ("contextId", "context_id")}


class TaskNotFound(GatewayError):
    """Answered for a task that does not exist, and for one another subject created."""

    http_status = 200
    jsonrpc_code = TASK_NOT_FOUND


class A2AEndpoint:
    """The ASGI endpoint behind `/a2a/v1/{agent}` and its agent card."""

    def __init__(
        self,
        settings: Settings,
        store: KeyValues,
        pipeline: CallPipeline,
        live: LivePolicies,
        http: ConnectionPool,
        refusals: Refusals,
        env: Mapping[str, str],
        guardrail_actions: GuardrailActions,
    ) -> None:
        self.settings = settings
        self.guardrail_actions = guardrail_actions
        self.pipeline = pipeline
        self.refusals = refusals
        self.store = store
        self.live = live
        self.http = http
        self.agents = {a.name: AgentReplicas(a, http, refusals, env) for a in settings.a2a.agents}
        self.webhook_hosts = frozenset(h.lower().rstrip(".") for h in settings.a2a.push_webhook_hosts)
        self._engine_source: object = None
        self._engine = AgentPolicyEngine([])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        call = call_of(scope)
        try:
            name, _, rest = scope["path"][len(A2A_PREFIX) + 1 :].partition("/")
            agent = self.agents.get(name)
            if agent is None:
                raise NotFound("Unknown agent")
            call.target = agent.name
            if "/" + rest in CARD_PATHS:
                if scope["method"] != "GET":
                    raise MethodNotAllowed("Method not allowed", headers={"allow": "GET"})
                await self._card(scope, call, agent, send)
            elif rest.strip("/") == "":
                if scope["method"] != "POST":
                    raise MethodNotAllowed("Method not allowed", headers={"allow": "POST"})
                await self._call(scope, call, agent, receive, send)
            else:
                raise NotFound("Not found")
        except GatewayError as exc:
            await exc.send(scope, send, request_id=call.rpc_id)
        except Exception:
            log.exception("unexpected error in the A2A endpoint")
            await InternalError("Internal error").send(scope, send)

    # -- the card ---------------------------------------------------------------

    async def _card(self, scope: Scope, call: Call, agent: AgentReplicas, send: Send) -> None:
        card, replica = await self._any_card(agent)
        gateway_url = f"{base_url(scope)}{A2A_PREFIX}/{agent.name}"
        rewritten = rewrite_card(card, replica.base_url, gateway_url, call.caller)
        body = json.dumps(rewritten, ensure_ascii=False, separators=(",", ":")).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"vary", b"authorization"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _any_card(self, agent: AgentReplicas) -> tuple[dict[str, Any], Replica]:
        for replica in agent.order():
            try:
                return await agent.card(replica), replica
            except UpstreamUnavailable:
                continue
        raise UpstreamUnavailable(f"No replica of agent {agent.name!r} is reachable")

    # -- calls ------------------------------------------------------------------

    async def _call(self, scope: Scope, call: Call, agent: AgentReplicas, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        check_content_type(headers)
        server = self.settings.server
        payload = jsonrpc.parse(await read_body(headers, receive, server.max_body_bytes, server.body_timeout))
        if isinstance(payload, list):
            raise InvalidRequest("Invalid request: A2A takes one JSON-RPC request at a time")
        message = call.message = jsonrpc.check_message(payload)
        if "method" not in message:
            raise InvalidRequest("Invalid request: not a JSON-RPC request")
        forwarded = jsonrpc.serialise(message)
        call.rpc_method = v1_method(message["method"])
        task_id, context_id = _named_ids(message["method"], message.get("params", {}))
        gateway_url = f"{base_url(scope)}{A2A_PREFIX}/{agent.name}"
        upstream_headers = {k: headers[k] for k in _FORWARDED if k in headers}
        steps = _AgentCall(self, agent, task_id, context_id, gateway_url, upstream_headers, forwarded)
        await self.pipeline.run(steps, call, receive, send)

    def authorize(self, call: Call, agent: str) -> None:
        agents = self.live.policies.agents
        if self._engine_source is not agents:  # compiled again only after a policy reload
            self._engine_source, self._engine = agents, AgentPolicyEngine(agents)
        caller = call.caller
        method = call.rpc_method or ""
        decision = self._engine.decide(agent, method, caller.scopes if caller is not None else frozenset())
        if not decision.allowed:
            call.decision = "deny"
            raise _denial(agent, decision)

    async def check_webhooks(self, call: Call, agent: str, params: dict[str, Any]) -> None:
        """A push-notification webhook may name only a public host, or one the operator allow-listed."""
        method = call.rpc_method or ""
        for url in webhook_urls(method, params):
            if not await webhook_allowed(url, self.webhook_hosts):
                call.decision = "deny"
                raise PolicyDenied(
                    f"Push-notification webhook of method '{method}' not allowed",
                    data={"agent": agent, "method": method, "reason": "webhook_not_allowed"},
                )

    async def replicas_for(
        self, agent: AgentReplicas, task_id: str | None, context_id: str | None, principal: Principal | None
    ) -> list[Replica]:
        """The replica holding the named task or context, else every replica, the next in turn first."""
        for kind, value in (("task", task_id), ("context", context_id)):
            if value is None:
                continue
            pin = await self.store.get_value(pin_key(agent.name, kind, value))
            if pin is None:
                if kind == "task":
                    # A task this gateway never saw made is reachable by no one through it.
                    raise TaskNotFound("Task not found")
                continue
            owner = json.loads(pin)
            if not owned(owner, principal):
                raise TaskNotFound("Task not found")
            replica = agent.replica(owner["replica"])
            if replica is not None:
                return [replica]
        return agent.order()

    async def send_to_first(
        self,
        agent: AgentReplicas,
        replicas: list[Replica],
        headers: dict[str, str],
        body: bytes,
        caller: Principal | None,
    ) -> tuple[Replica, UpstreamResponse]:
        """POST to the first replica that can be reached: a new task may start on any of them, but one
        the request names lives on its replica alone."""
        presenting = agent.presenting(caller)
        for replica in replicas:
            try:
                url = await agent.rpc_url(replica)
                with BACKEND.mapped(f"Agent {agent.name!r}"):
                    post = functools.partial(self.http.request, "POST", url, body=body, timeout=CALL_TIMEOUT)
                    response = await sent_with(presenting, headers, post)
            except UpstreamTimeout:
                raise
            except UpstreamUnavailable:
                replica.mark_down()
                if len(replicas) == 1:
                    break  # the replica holding the task is gone: there is nowhere else to ask
                continue
            replica.mark_up()
            return replica, response
        raise UpstreamUnavailable(f"Agent {agent.name!r} is unreachable")

    async def relay(
        self, a2a: _AgentCall, call: Call, replica: Replica, response: UpstreamResponse, receive: Receive, send: Send
    ) -> None:
        try:
            pins = Pins(self.store, self.refusals, a2a.agent.name, replica.base_url, call.caller)
            guard = self.live.guardrails.guard("a2a", a2a.agent.name)
            screen = None if guard is None else AgentScreen(guard, self.guardrail_actions, call, a2a.agent.name)
            if not sse.is_event_stream(response.header("content-type")):
                await self._relay_json(a2a, call, response, replica, pins, screen, send)
            elif screen is None:
                await relay(response, [], receive, send, CALL_TIMEOUT, tap=pins.feed)
            else:
                await relay_screened_events(response, pins, screen, receive, send)
        finally:
            response.release()

    async def _relay_json(
        self,
        a2a: _AgentCall,
        call: Call,
        response: UpstreamResponse,
        replica: Replica,
        pins: Pins,
        screen: AgentScreen | None,
        send: Send,
    ) -> None:
        try:
            body = await read_answer_body(response, CALL_TIMEOUT, MAX_ANSWER_BYTES)
        except BadBackendAnswer:
            self.refusals.record(a2a.agent.name, BadBackendAnswer.reason, f"{call.rpc_method}: answer too large")
            raise
        if response.status in (401, 403):
            # The gateway's credentials, not the caller's: the caller cannot fix them.
            self.refusals.record(a2a.agent.name, BackendAuthRefused.reason, f"{call.rpc_method}")
            raise BackendAuthRefused(f"Agent {a2a.agent.name!r} refused the gateway's credentials")
        if 200 <= response.status < 300:
            answer = answer_to(body, call.rpc_id)
            if answer is None:
                detail = f"{call.rpc_method}: not a JSON-RPC answer"
                self.refusals.record(a2a.agent.name, BadBackendAnswer.reason, detail)
                raise BadBackendAnswer(f"Agent {a2a.agent.name!r} answered with something else than JSON-RPC")
            rewritten = isinstance(answer.get("result"), dict)
            rewritten = rewritten and await self._rewrite_result(a2a, call, answer, replica, pins)
            screened = answer if screen is None else screen.message(answer)
            if rewritten or screened is not answer:
                body = jsonrpc.serialise(screened)
        elif screen is not None:
            body = screen.body(body)
        headers = response_headers(response)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _rewrite_result(
        self, a2a: _AgentCall, call: Call, answer: dict[str, Any], replica: Replica, pins: Pins
    ) -> bool:
        """Pin the ids the result names; trim what the caller may not see. Whether the result changed."""
        result: dict[str, Any] = answer["result"]
        await pins.record(result)
        if call.rpc_method == "ListTasks":
            return await self._hide_foreign_tasks(result, call.caller, a2a.agent.name)
        if call.rpc_method == "GetExtendedAgentCard":
            # The extended card names endpoints too: they point at the gateway like the public card's.
            card = a2a.agent.checked_card(result)
            answer["result"] = rewrite_card(card, replica.base_url, a2a.gateway_url, call.caller)
            return True
        return False

    async def _hide_foreign_tasks(self, result: dict[str, Any], principal: Principal | None, agent: str) -> bool:
        """ListTasks shows a caller only the tasks it created through the gateway."""
        tasks = result.get("tasks")
        if not isinstance(tasks, list):
            return False
        kept = []
        for task in tasks:
            task_id = task.get("id") if isinstance(task, dict) else None
            pin = await self.store.get_value(pin_key(agent, "task", task_id)) if isinstance(task_id, str) else None
            if pin is not None and owned(json.loads(pin), principal):
                kept.append(task)
        result["tasks"] = kept
        return True


class _AgentCall:
    """The steps of one A2A call (`agentgw/call.py`): which agent, which task or context it names,
    and what is forwarded."""

    kind: Kind = "a2a"

    def __init__(
        self,
        endpoint: A2AEndpoint,
        agent: AgentReplicas,
        task_id: str | None,
        context_id: str | None,
        gateway_url: str,
        headers: dict[str, str],
        body: bytes,
    ) -> None:
        self.endpoint = endpoint
        self.agent = agent
        self.task_id, self.context_id = task_id, context_id
        self.gateway_url = gateway_url
        self.headers = headers
        self.body = body

    async def session(self, call: Call) -> None:
        """A2A has no session: a task or context is routing, found at the upstream step."""

    async def policy(self, call: Call) -> None:
        self.endpoint.authorize(call, self.agent.name)
        await self.endpoint.check_webhooks(call, self.agent.name, call.message.get("params", {}))
        call.decision = "allow"

    async def upstream(self, call: Call) -> tuple[Replica, UpstreamResponse]:
        """To the replica the named task or context lives on (a task of another subject does not
        exist), else to the next replica in turn."""
        replicas = await self.endpoint.replicas_for(self.agent, self.task_id, self.context_id, call.caller)
        replica, response = await self.endpoint.send_to_first(
            self.agent, replicas, self.headers, self.body, call.caller
        )
        call.backend = replica.base_url
        return replica, response

    async def relay(self, call: Call, answer: tuple[Replica, UpstreamResponse], receive: Receive, send: Send) -> None:
        await self.endpoint.relay(self, call, *answer, receive, send)


def _named_ids(method_name: str, params: dict[str, Any]) -> tuple[str | None, str | None]:
    """The task and context a request names, read only where its method defines them (contract 11).

    `method_name` is the name as sent: a 0.3 name (with a `/`) reads the 0.3 fields.
    """
    method = v1_method(method_name)
    if method in MESSAGE_METHODS:
        message = params.get("message")
        if not isinstance(message, dict):
            return None, None
        return id_text(_field(message, "taskId")), id_text(_field(message, "contextId"))
    fields = _V03_TASK_FIELD if "/" in method_name else _V1_TASK_FIELD
    if method in fields:
        return id_text(_field(params, fields[method])), None
    return None, None


def _field(holder: dict[str, Any], name: str) -> Any:
    """A field under any spelling the agent's parser accepts; two spellings that disagree are refused."""
    values = [holder[s] for s in _SPELLINGS[name] if s in holder]
    if any(v != values[0] for v in values):
        raise InvalidRequest(f"Invalid params: {name} given twice")
    if values and not isinstance(values[0], str):
        raise InvalidRequest(f"Invalid params: {name} must be a string")
    return values[0] if values else None


def _denial(agent: str, decision: Decision) -> PolicyDenied:
    reason = decision.reason or "not_allowed"
    message = f"Method '{decision.name}' of agent '{agent}' denied: {reason}"
    data = {
        "agent": agent,
        "method": decision.name,
        "tool": decision.name,
        "reason": reason,
        "policy": decision.policy,
        "requiredScopes": list(decision.required_scopes),
    }
    if reason == "missing_scope":
        return InsufficientScope(message, data=data, required_scopes=list(decision.required_scopes))
    return PolicyDenied(message, data=data)
