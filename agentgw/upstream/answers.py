"""Reading the backend answers the gateway acts on, as strictly as client input (contract 11).

The answers to `initialize`, the `*/list` methods and `server/discover` are
filtered or scanned before a client sees them, so they are read whole, as JSON
or as an event stream whatever the backend's spelling of the media type, and
every message is parsed by the same strict parser as client input. An answer
that cannot be parsed, holds no JSON-RPC response, or answers another `id`
(another type counts: `1` is not `"1"`) is refused; what the client gets is
always the gateway's own serialisation of what it checked.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from agentgw import jsonrpc, sse
from agentgw.errors import BackendAuthRefused, BadBackendAnswer, GatewayError
from agentgw.upstream.faults import BACKEND
from agentgw.upstream.http import (
    UpstreamResponse,
)

JSON = "application/json"
# Larger answers to the methods read whole are refused rather than held in memory.
MAX_ANSWER_BYTES = 64 * 1024 * 1024


@dataclass
class Answer:
    """A checked answer: every message it carried, and which of them answers the request."""

    messages: list[jsonrpc.Message]
    events: list[sse.Event] | None  # the events they came in, for an event stream; None for JSON
    index: int  # of the response to the request

    @property
    def response(self) -> jsonrpc.Message:
        return self.messages[self.index]

    @property
    def result(self) -> dict[str, Any] | None:
        result = self.response.get("result")
        return result if isinstance(result, dict) else None

    def encode(self) -> bytes:
        """The gateway's own serialisation of the messages as they are now (after any rewrite)."""
        if self.events is None:
            return jsonrpc.serialise(self.response)
        pairs = zip(self.events, self.messages, strict=True)
        return b"".join(event.encode(jsonrpc.serialise(message).decode()) for event, message in pairs)


def refuse_backend_auth(response: UpstreamResponse) -> None:
    """A backend's 401 or 403 refuses the gateway's credentials, which the client cannot fix: a
    challenge relayed would send the client to the wrong identity provider (contract 11)."""
    if response.status in (401, 403):
        raise BackendAuthRefused("Backend refused the gateway's credentials")


async def read_body(response: UpstreamResponse, timeout: float, limit: int | None = None) -> bytes:
    """The whole body within `timeout` of the request, head included; a backend that fails meanwhile
    is the backend's fault."""
    remaining = max(0.0, timeout - (asyncio.get_running_loop().time() - response.sent_at))
    with BACKEND.mapped("Backend"):
        return await response.read(remaining, limit=limit)


async def read_answer(response: UpstreamResponse, request_id: Any, timeout: float) -> Answer:
    """Read and check the answer to the request with `request_id`; BadBackendAnswer when it fails."""
    body = await read_body(response, timeout, MAX_ANSWER_BYTES)
    return parse_answer(response.header("content-type"), body, request_id)


def parse_answer(content_type: str | None, body: bytes, request_id: Any) -> Answer:
    kind = sse.media_type(content_type)
    if kind == JSON:
        message = _message(body)
        _check_response(message, request_id)
        return Answer([message], None, 0)
    if kind != sse.EVENT_STREAM:
        raise BadBackendAnswer("Backend answered with neither JSON nor an event stream")
    # An event with no data (a resumable server's priming event, which gives the stream an id
    # before the answer) carries no message; the answer is read whole, so nothing resumes from it.
    events = [event for event in sse.decode_all(body) if event.data]
    messages = [_message(event.data.encode()) for event in events]
    responses = [index for index, message in enumerate(messages) if "method" not in message]
    # Exactly one response, to this request: any other would reach the client unchecked.
    if len(responses) != 1:
        raise BadBackendAnswer("Backend's event stream holds no single answer to the request")
    _check_response(messages[responses[0]], request_id)
    return Answer(messages, events, responses[0])


def _message(data: bytes) -> jsonrpc.Message:
    try:
        value = jsonrpc.parse(data)
        if isinstance(value, list):
            raise BadBackendAnswer("Backend answered with a batch")
        jsonrpc.serialise(value)  # refuses lone surrogates here, where they are the backend's fault
        return jsonrpc.check_message(value)
    except BadBackendAnswer:
        raise
    except GatewayError as exc:
        raise BadBackendAnswer(f"Backend answer is not a JSON-RPC message ({exc.message})") from None


def _check_response(message: jsonrpc.Message, request_id: Any) -> None:
    if "method" in message:
        raise BadBackendAnswer("Backend answered a request with a request")
    if not _same_id(message.get("id"), request_id):
        raise BadBackendAnswer("Backend answered another request id")
    if "result" in message and not isinstance(message["result"], dict):
        raise BadBackendAnswer("Backend's result is not an object")
    error = message.get("error")
    if error is not None and (not isinstance(error.get("code"), int) or not isinstance(error.get("message"), str)):
        raise BadBackendAnswer("Backend's error is not a JSON-RPC error")


def _same_id(value: Any, request_id: Any) -> bool:
    return type(value) is type(request_id) and value == request_id
