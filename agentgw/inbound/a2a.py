"""A2A, proxied (contract 8): both protocol generations, as the agent speaks them.

The agent's card is served with every endpoint pointing at the gateway. A call
naming a task or context goes to the replica that holds it, recorded when a
response first named it; a task of another subject is answered as if it did
not exist. Streams are relayed event by event.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from starlette.types import Receive, Scope, Send

from agentgw import jsonrpc
from agentgw.auth.middleware import base_url, challenge
from agentgw.auth.principal import Principal, principal_of
from agentgw.config import Settings
from agentgw.errors import (
    GatewayError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PolicyDenied,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from agentgw.inbound.a2a_card import rewrite_card
from agentgw.inbound.mcp_request import check_content_type, read_body
from agentgw.inbound.relay import NOT_RELAYED, is_event_stream, relay
from agentgw.inbound.relay import read_body as read_response_body
from agentgw.observability.requests import RequestInfo, request_info
from agentgw.policy.agents import AgentPolicyEngine, v1_method
from agentgw.policy.engine import Decision
from agentgw.policy.live import LivePolicies
from agentgw.sessions.store import SessionStore
from agentgw.upstream.a2a import CARD_PATHS, AgentReplicas, Replica
from agentgw.upstream.http import ConnectionPool, UpstreamConnectionError, UpstreamResponse, UpstreamTimeoutError

log = logging.getLogger("agentgw.inbound.a2a")

A2A_PREFIX = "/a2a/v1"
TASK_NOT_FOUND = -32001
# Client headers an agent needs; credentials stay at the gateway.
_FORWARDED = ("content-type", "accept", "a2a-version", "a2a-extensions", "traceparent", "tracestate")
PIN_TTL = 7 * 24 * 3600.0
CALL_TIMEOUT = 300.0
_TASK_ID_METHODS = frozenset(
    {
        "GetTask",
        "CancelTask",
        "SubscribeToTask",
        "CreateTaskPushNotificationConfig",
        "GetTaskPushNotificationConfig",
        "ListTaskPushNotificationConfigs",
        "DeleteTaskPushNotificationConfig",
    }
)


class TaskNotFound(GatewayError):
    """Answered for a task that does not exist, and for one another subject created."""

    http_status = 200
    jsonrpc_code = TASK_NOT_FOUND


class A2AEndpoint:
    """The ASGI endpoint behind `/a2a/v1/{agent}` and its agent card."""

    def __init__(self, settings: Settings, store: SessionStore, live: LivePolicies, http: ConnectionPool) -> None:
        self.settings = settings
        self.store = store
        self.live = live
        self.http = http
        self.agents = {a.name: AgentReplicas(a, http) for a in settings.a2a.agents}
        self._engine_source: object = None
        self._engine = AgentPolicyEngine([])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            name, _, rest = scope["path"][len(A2A_PREFIX) + 1 :].partition("/")
            agent = self.agents.get(name)
            if agent is None:
                raise NotFound("Unknown agent")
            request_info(scope).target = agent.name
            if "/" + rest in CARD_PATHS:
                if scope["method"] != "GET":
                    raise MethodNotAllowed("Method not allowed", headers={"allow": "GET"})
                await self._card(scope, agent, send)
            elif rest.strip("/") == "":
                if scope["method"] != "POST":
                    raise MethodNotAllowed("Method not allowed", headers={"allow": "POST"})
                await self._call(scope, agent, receive, send)
            else:
                raise NotFound("Not found")
        except GatewayError as exc:
            await exc.send(send)
        except Exception:
            log.exception("unexpected error in the A2A endpoint")
            await InternalError("Internal error").send(send)

    # -- the card ---------------------------------------------------------------

    async def _card(self, scope: Scope, agent: AgentReplicas, send: Send) -> None:
        card, replica = await self._any_card(agent)
        gateway_url = f"{base_url(scope)}{A2A_PREFIX}/{agent.name}"
        principal = principal_of(scope)
        rewritten = rewrite_card(card, replica.base_url, gateway_url, principal)
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

    async def _call(self, scope: Scope, agent: AgentReplicas, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        check_content_type(headers)
        payload = jsonrpc.parse(await read_body(headers, receive, self.settings.server.max_body_bytes))
        if isinstance(payload, list):
            raise InvalidRequest("Invalid request: A2A takes one JSON-RPC request at a time")
        message = jsonrpc.check_message(payload)
        if "method" not in message:
            raise InvalidRequest("Invalid request: not a JSON-RPC request")
        try:
            forwarded = jsonrpc.serialise(message)
            principal = principal_of(scope)
            method = v1_method(message["method"])
            info = request_info(scope)
            info.rpc_method = method
            self._authorize(scope, agent.name, method, principal)
            info.decision = "allow"
            task_id, context_id = _named_ids(method, message.get("params", {}))
            replicas = await self._replicas_for(agent, task_id, context_id, principal)
            upstream_headers = {k: headers[k] for k in _FORWARDED if k in headers}
            call = _Call(agent, method, principal, f"{base_url(scope)}{A2A_PREFIX}/{agent.name}", info)
            await self._forward(call, replicas, upstream_headers, forwarded, receive, send)
        except GatewayError as exc:
            if exc.request_id is None:
                exc.request_id = message.get("id")
            raise

    def _authorize(self, scope: Scope, agent: str, method: str, principal: Principal | None) -> None:
        agents = self.live.policies.agents
        if self._engine_source is not agents:  # compiled again only after a policy reload
            self._engine_source, self._engine = agents, AgentPolicyEngine(agents)
        scopes = principal.scopes if principal is not None else frozenset()
        decision = self._engine.decide(agent, method, scopes)
        if not decision.allowed:
            request_info(scope).decision = "deny"
            raise _denial(scope, agent, decision)

    async def _replicas_for(
        self, agent: AgentReplicas, task_id: str | None, context_id: str | None, principal: Principal | None
    ) -> list[Replica]:
        """The replica holding the named task or context, else every replica, the next in turn first."""
        for kind, value in (("task", task_id), ("context", context_id)):
            if value is None:
                continue
            pin = await self.store.get_value(_pin_key(agent.name, kind, value))
            if pin is None:
                if kind == "task":
                    # A task this gateway never saw made is reachable by no one through it.
                    raise TaskNotFound("Task not found")
                continue
            owner = json.loads(pin)
            if not _owned(owner, principal):
                raise TaskNotFound("Task not found")
            replica = agent.replica(owner["replica"])
            if replica is not None:
                return [replica]
        return agent.order()

    async def _forward(
        self,
        call: _Call,
        replicas: list[Replica],
        headers: dict[str, str],
        body: bytes,
        receive: Receive,
        send: Send,
    ) -> None:
        agent = call.agent
        for replica in replicas:
            try:
                url = await agent.rpc_url(replica)
                response = await self.http.request("POST", url, headers, body, CALL_TIMEOUT)
            except UpstreamTimeoutError as exc:
                raise UpstreamTimeout(f"Agent {agent.name!r} did not answer in time") from exc
            except (UpstreamConnectionError, UpstreamUnavailable):
                replica.mark_down()
                if len(replicas) == 1:
                    break  # the replica holding the task is gone: there is nowhere else to ask
                continue  # a new task may start on the next replica
            replica.mark_up()
            call.info.backend = replica.base_url
            try:
                pins = _Pins(self.store, agent.name, replica.base_url, call.principal)
                if is_event_stream(response):
                    await relay(response, [], receive, send, CALL_TIMEOUT, tap=pins.feed)
                else:
                    await self._relay_json(call, response, replica, pins, send)
                return
            finally:
                response.release()
        raise UpstreamUnavailable(f"Agent {agent.name!r} is unreachable")

    async def _relay_json(
        self, call: _Call, response: UpstreamResponse, replica: Replica, pins: _Pins, send: Send
    ) -> None:
        body = await read_response_body(response, CALL_TIMEOUT)
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if isinstance(answer, dict) and isinstance(answer.get("result"), dict):
            result = answer["result"]
            await pins.record(result)
            changed = False
            if call.method == "ListTasks":
                changed = await self._hide_foreign_tasks(result, call.principal, call.agent.name)
            elif call.method == "GetExtendedAgentCard":
                # The extended card names endpoints too: they point at the gateway like the public card's.
                answer["result"] = rewrite_card(result, replica.base_url, call.gateway_url, call.principal)
                changed = True
            if changed:
                body = json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode()
        headers = [(k.lower(), v) for k, v in response.raw_headers if k.lower() not in NOT_RELAYED]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _hide_foreign_tasks(self, result: dict[str, Any], principal: Principal | None, agent: str) -> bool:
        """ListTasks shows a caller only the tasks it created through the gateway."""
        tasks = result.get("tasks")
        if not isinstance(tasks, list):
            return False
        kept = []
        for task in tasks:
            task_id = task.get("id") if isinstance(task, dict) else None
            pin = await self.store.get_value(_pin_key(agent, "task", task_id)) if isinstance(task_id, str) else None
            if pin is not None and _owned(json.loads(pin), principal):
                kept.append(task)
        result["tasks"] = kept
        return True


@dataclass(frozen=True)
class _Call:
    """One A2A request on its way: to which agent, which method, for whom, behind which URL."""

    agent: AgentReplicas
    method: str
    principal: Principal | None
    gateway_url: str
    info: RequestInfo


class _Pins:
    """Records which replica holds the tasks and contexts a response names, once each."""

    def __init__(self, store: SessionStore, agent: str, replica: str, principal: Principal | None) -> None:
        self._store = store
        self._agent = agent
        self._owner = json.dumps(
            {
                "replica": replica,
                "iss": principal.issuer if principal else None,
                "sub": principal.subject if principal else None,
            }
        )
        self._seen: set[tuple[str, str]] = set()
        self._pending = b""

    async def record(self, result: dict[str, Any]) -> None:
        for kind, value in _ids_in_result(result):
            if (kind, value) not in self._seen:
                self._seen.add((kind, value))
                await self._store.put_value(_pin_key(self._agent, kind, value), self._owner, PIN_TTL)

    async def feed(self, chunk: bytes) -> None:
        """Read the ids out of a relayed event stream as its events complete."""
        self._pending += chunk.replace(b"\r\n", b"\n")
        *events, self._pending = self._pending.split(b"\n\n")
        for event in events:
            data = b"\n".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))
            try:
                answer = json.loads(data) if data else None
            except ValueError:
                continue
            if isinstance(answer, dict) and isinstance(answer.get("result"), dict):
                await self.record(answer["result"])


def _pin_key(agent: str, kind: str, value: str) -> str:
    return f"a2a:{agent}:{kind}:{value}"


def _owned(owner: dict[str, Any], principal: Principal | None) -> bool:
    if owner.get("sub") is None:
        return True  # made while no SessionAuthPolicy applied
    return principal is not None and (principal.issuer, principal.subject) == (owner.get("iss"), owner.get("sub"))


def _named_ids(method: str, params: dict[str, Any]) -> tuple[str | None, str | None]:
    """The task and context a request names (a follow-up message names them in the message)."""
    message = params.get("message")
    if isinstance(message, dict):
        return _text(message.get("taskId")), _text(message.get("contextId"))
    if method in _TASK_ID_METHODS:
        task_id = _text(params.get("taskId")) or _text(params.get("id"))
        name = _text(params.get("name"))  # `tasks/{id}` resource names
        if task_id is None and name is not None and name.startswith("tasks/"):
            task_id = name.split("/")[1]
        return task_id, None
    return None, None


def _ids_in_result(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The task and context ids a response names, in either generation's shape."""
    found: list[tuple[str, str]] = []
    candidates = [result.get(k) for k in ("task", "message", "statusUpdate", "artifactUpdate")] + [result]
    for item in candidates:
        if not isinstance(item, dict):
            continue
        is_task = item is result.get("task") or item.get("kind") == "task"
        task_id = _text(item.get("id")) if is_task else _text(item.get("taskId"))
        if task_id is not None:
            found.append(("task", task_id))
        context_id = _text(item.get("contextId"))
        if context_id is not None:
            found.append(("context", context_id))
    return found


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _denial(scope: Scope, agent: str, decision: Decision) -> PolicyDenied:
    reason = decision.reason or "not_allowed"
    denial = PolicyDenied(
        f"Method '{decision.name}' of agent '{agent}' denied: {reason}",
        data={
            "agent": agent,
            "method": decision.name,
            "tool": decision.name,
            "reason": reason,
            "policy": decision.policy,
            "requiredScopes": list(decision.required_scopes),
        },
    )
    if reason == "missing_scope":
        denial.http_status = 403
        denial.headers["www-authenticate"] = challenge(scope, "insufficient_scope", " ".join(decision.required_scopes))
    return denial
