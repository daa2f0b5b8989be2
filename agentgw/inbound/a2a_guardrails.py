"""What an agent sends back, held to the GuardrailPolicy for it (contract 15): whole answers and
streamed events scanned; an answer or event holding what a policy blocks becomes the JSON-RPC
error -32053, and a stream ends with it."""

from __future__ import annotations

import logging
from typing import Any

from starlette.types import Receive, Send

from agentgw import jsonrpc, sse
from agentgw.call import Call
from agentgw.errors import GatewayError, GuardrailBlocked
from agentgw.inbound.a2a_pins import Pins
from agentgw.inbound.relay import KEEP_ALIVE, response_headers, stream_events
from agentgw.observability.guardrail_actions import GuardrailActions, Where
from agentgw.policy.guardrails import Guard
from agentgw.upstream.http import UpstreamConnectionError, UpstreamResponse

log = logging.getLogger("agentgw.inbound.a2a")


class AnswerBlocked(GuardrailBlocked):
    """What an agent sent holds what a GuardrailPolicy blocks: answered in its place with 200,
    as the agent's own JSON-RPC errors are."""

    http_status = 200


class AgentScreen:
    """What an agent sends back, through the guard for it (contract 15); every finding is counted,
    logged and audited."""

    def __init__(self, guard: Guard, actions: GuardrailActions, call: Call, agent: str) -> None:
        self.guard = guard
        self.actions = actions
        self.request_id = call.rpc_id
        self.where = Where(agent, call.subject, None, call.rpc_method or "answer")

    def message(self, message: Any) -> Any:
        """`message` with its secrets redacted; the very object when no string changed. AnswerBlocked
        when it holds what a policy blocks. The request's own id is the client's, and left alone."""
        own_id = isinstance(message, dict) and _same(message.get("id"), self.request_id)
        scanned = {k: v for k, v in message.items() if k != "id"} if own_id else message
        scan = self.guard.scan(scanned)
        self.actions.found(scan.findings, self.where)
        if scan.blocked is not None:
            detector = scan.blocked.detector
            raise AnswerBlocked(f"Agent {self.where.target!r} answered with what a guardrail blocks", detector)
        if scan.value is scanned:
            return message
        return {k: v if k == "id" else scan.value[k] for k, v in message.items()} if own_id else scan.value

    def body(self, body: bytes) -> bytes:
        """A whole answer the gateway does not read otherwise (an agent's error status): as JSON when
        it is JSON, else as text."""
        try:
            value: Any = jsonrpc.parse(body)
        except GatewayError:
            text = body.decode("utf-8", "replace")
            screened_text = self.message(text)
            return body if screened_text is text else str(screened_text).encode()
        screened = self.message(value)
        return body if screened is value else jsonrpc.serialise(screened)

    def event(self, event: sse.Event, message: Any) -> bytes:
        """An event as the client gets it (`message`: its data as JSON, None when it is not JSON)."""
        if message is None:
            text = self.message(event.data)
            return event.encode(None if text is event.data else str(text))
        screened = self.message(message)
        return event.encode(None if screened is message else jsonrpc.serialise(screened).decode())

    def error_event(self, blocked: AnswerBlocked) -> bytes:
        return sse.Event(blocked.body(self.request_id).decode()).encode()


def _same(answered: Any, request_id: Any) -> bool:
    return type(answered) is type(request_id) and answered == request_id


async def relay_screened_events(
    response: UpstreamResponse, pins: Pins, screen: AgentScreen, receive: Receive, send: Send
) -> None:
    """An event stream through the guard: each event whole, in the gateway's framing, as it completes."""
    events = _screened_events(response, pins, screen, send)
    await stream_events(response.status, response_headers(response), events, receive, send)


async def _screened_events(response: UpstreamResponse, pins: Pins, screen: AgentScreen, send: Send) -> None:
    """Until the agent's stream ends, or an event holds what a policy blocks: that event becomes the
    error, and the stream ends with it."""
    decoder = sse.SseDecoder()
    try:
        # No read timeout: an event stream may rightly stay quiet for a long time.
        async for chunk in response.chunks(None):
            relayed: list[bytes] = []
            try:
                for event in decoder.feed(chunk):
                    message = _event_json(event)
                    if isinstance(message, dict) and isinstance(message.get("result"), dict):
                        await pins.record(message["result"])
                    relayed.append(screen.event(event, message))
            except AnswerBlocked as exc:
                body = b"".join(relayed) + screen.error_event(exc)
                await send({"type": "http.response.body", "body": body, "more_body": True})
                return
            if not relayed and b":" in chunk:
                relayed.append(KEEP_ALIVE)  # an idle stream's comment: the client's proxies need one too
            if relayed:
                await send({"type": "http.response.body", "body": b"".join(relayed), "more_body": True})
    except UpstreamConnectionError as exc:
        # The answer has started: the client sees the stream end, the operator reads why.
        log.warning("agent event stream broke after the answer started: %s", exc)


def _event_json(event: sse.Event) -> Any:
    try:
        return event.json()
    except (ValueError, RecursionError):
        log.warning("an agent stream event that is not JSON was scanned as text")
        return None
