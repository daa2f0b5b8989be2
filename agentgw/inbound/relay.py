"""Backend responses back to the client: JSON whole, event streams event by event.

An answer the gateway acts on (a list it trims, an `initialize` it scans) is
read whole and checked (`agentgw.upstream.answers`), rewritten, and sent as the
gateway's own serialisation of what it checked.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import Receive, Send

from agentgw import jsonrpc, sse
from agentgw.errors import BadBackendAnswer, StoreUnavailable
from agentgw.inbound.mcp_guardrails import MessageScreen
from agentgw.policy.tool_guard import Rewrite
from agentgw.upstream.answers import MAX_ANSWER_BYTES, Answer, read_answer, read_body
from agentgw.upstream.http import UpstreamConnectionError, UpstreamResponse

log = logging.getLogger("agentgw.inbound.relay")

# The only backend response headers a client sees (contract 11): cookies, auth challenges,
# redirects, CORS grants and the backend's session id are the gateway's business, not the client's.
RELAYED_HEADERS = frozenset({b"content-type", b"cache-control", b"retry-after"})

KEEP_ALIVE = b": keep-alive\n\n"


class AnswerFilter:
    """The JSON-RPC responses an answer may carry: those to the ids its request asked (contract 11).

    An MCP client routes a response by its id across every stream of its session, so a
    backend answering another id (a `tools/list` the client is waiting for, say) in the
    stream of a `tools/call` would hand the client a list nobody checked. Such a response
    is dropped from an event stream, and refuses a JSON answer (502). Requests and
    notifications pass: they answer nothing.

    With a `screen`, each message is also held to the GuardrailPolicy in force (contract 15).
    The backend's own requests relayed in a session are noted in `asked` (their ids, as JSON,
    as the client sees them) and recorded by `expecting` before the client gets them: the
    client may answer each once, and nothing else (contract 15).
    """

    __slots__ = ("_ids", "_refused", "asked", "expecting", "screen")

    def __init__(self, request_ids: list[Any], refused: Callable[[], None]) -> None:
        self._ids = frozenset((type(i), i) for i in request_ids)
        self._refused = refused
        self.screen: MessageScreen | None = None
        self.asked: list[str] = []
        self.expecting: Callable[[list[str]], Awaitable[None]] | None = None

    def allows(self, message: Any) -> bool:
        if not isinstance(message, dict) or "method" in message:
            return True
        answered = message.get("id")
        if (type(answered), answered) in self._ids:
            return True
        self._refused()
        return False

    def checked_json(self, body: bytes) -> bytes:
        """A JSON answer as the client gets it: refused when it answers another request, screened."""
        if not body:
            return body  # 202 Accepted, to a notification or an answer
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            log.warning("a backend answer that is not JSON was relayed as it came (no client routes it)")
            return body
        messages = value if isinstance(value, list) else [value]
        if not all(self.allows(m) for m in messages):
            raise BadBackendAnswer("Backend answered a request the client did not send here")
        if self.screen is None:
            return body
        screened = [m if not isinstance(m, dict) else self.screen.screened(m) for m in messages]
        if all(s is m for s, m in zip(screened, messages, strict=True)):
            return body
        kept = [m for m in screened if m is not None]
        return jsonrpc.serialise(kept if isinstance(value, list) else (kept[0] if kept else {}))

    def client_id(self, request_id: Any) -> Any:
        """The id the client sees a backend's request under (a subclass may map it)."""
        return request_id

    def encoded(self, event: sse.Event, message: Any, changed: bool) -> bytes:
        """An event as the client gets it: as it came, or carrying `message` when that changed
        (a subclass may change the message too)."""
        return event.encode(jsonrpc.serialise(message).decode()) if changed else event.encode()

    def events(self, decoder: sse.SseDecoder, chunk: bytes) -> bytes:
        """The events a chunk completes, those answering another request left out, in the gateway's framing."""
        kept = []
        for event in decoder.feed(chunk):
            try:
                message = event.json() if event.data else None  # no data: a resumable stream's priming event
            except (ValueError, RecursionError):
                log.warning("a backend stream event that is not JSON was relayed as it came")
                message = None
            if not self.allows(message):
                continue
            screened = message
            if self.screen is not None and isinstance(message, dict):
                screened = self.screen.screened(message)
                if screened is None:
                    continue
            if isinstance(screened, dict) and "method" in screened and "id" in screened:
                self.asked.append(json.dumps(self.client_id(screened["id"])))
            kept.append(self.encoded(event, screened, screened is not message))
        if not kept and b":" in chunk:
            # A comment the backend sends to keep an idle stream open: the client's proxies need one too.
            return KEEP_ALIVE
        return b"".join(kept)

    async def record_asked(self) -> None:
        """The backend's requests just noted, recorded as awaiting the client's answer; with no
        session to record them in, they are forgotten (and answers to them refused)."""
        asked, self.asked = self.asked, []
        if self.expecting is None:
            return
        try:
            await self.expecting(asked)
        except StoreUnavailable:
            log.warning("a backend's request was relayed, but the store did not note it: its answer will be refused")


class ResumedAnswers(AnswerFilter):
    """A stream the client resumes (Last-Event-ID) replays what an earlier request's stream
    carried: responses to any of the client's requests may come."""

    __slots__ = ()

    def allows(self, message: Any) -> bool:
        return True


Tap = Callable[[bytes], Awaitable[None]]


def response_headers(response: UpstreamResponse) -> list[tuple[bytes, bytes]]:
    """The headers of a backend's answer that the client may see."""
    return [(name.lower(), value) for name, value in response.raw_headers if name.lower() in RELAYED_HEADERS]


def client_headers(response: UpstreamResponse, extra_headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """What the client's answer carries: the headers it may see, and the gateway's own."""
    return response_headers(response) + [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra_headers]


def is_event_stream(response: UpstreamResponse) -> bool:
    return sse.is_event_stream(response.header("content-type"))


async def relay(
    response: UpstreamResponse,
    extra_headers: list[tuple[str, str]],
    receive: Receive,
    send: Send,
    timeout: float,
    tap: Tap | None = None,
    answers: AnswerFilter | None = None,
) -> None:
    """Relay a backend response: JSON whole, an event stream event by event as it arrives.

    `tap` sees every chunk of an event stream just before the client gets it; `answers`
    holds back responses to requests the client did not send with this one.
    """
    headers = client_headers(response, extra_headers)
    if not is_event_stream(response):
        body = await read_body(response, timeout, MAX_ANSWER_BYTES)
        if answers is not None and 200 <= response.status < 300:
            body = answers.checked_json(body)
        await _send_whole(send, response.status, headers, body)
        return
    await stream_events(response.status, headers, _relay_events(response, send, tap, answers), receive, send)


async def stream_events(
    status: int, headers: list[tuple[bytes, bytes]], events: Awaitable[None], receive: Receive, send: Send
) -> None:
    """An event stream to the client: its head, then `events` (which sends the body) until they end
    or the client goes away, then the end of the body."""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    relaying = asyncio.ensure_future(events)
    disconnect = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait((relaying, disconnect), return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnect.cancel()
        relaying.cancel()
        for outcome in await asyncio.gather(relaying, disconnect, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.error("relaying an event stream failed", exc_info=outcome)
    await send({"type": "http.response.body", "body": b""})


async def relay_checked(
    response: UpstreamResponse,
    extra_headers: list[tuple[str, str]],
    send: Send,
    timeout: float,
    request_id: Any,
    rewrite: Rewrite | None,
) -> None:
    """Read a 2xx answer whole and check it, let `rewrite` change its result, send the gateway's serialisation.

    A backend's error status is its own answer, relayed as it came.
    """
    headers = client_headers(response, extra_headers)
    if not 200 <= response.status < 300:
        await _send_whole(send, response.status, headers, await read_body(response, timeout, MAX_ANSWER_BYTES))
        return
    answer = await read_answer(response, request_id, timeout)
    result = answer.result
    if rewrite is not None and result is not None:
        await rewrite(result)
    await send_answer(send, answer, headers)


async def send_answer(send: Send, answer: Answer, headers: list[tuple[bytes, bytes]]) -> None:
    """A checked answer as the gateway serialises it, in the media type it came in."""
    media_type = sse.EVENT_STREAM if answer.events is not None else "application/json"
    headers = [(k, v) for k, v in headers if k != b"content-type"] + [(b"content-type", media_type.encode())]
    await _send_whole(send, 200, headers, answer.encode())


async def _send_whole(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _relay_events(response: UpstreamResponse, send: Send, tap: Tap | None, answers: AnswerFilter | None) -> None:
    decoder = sse.SseDecoder() if answers is not None else None
    try:
        # No read timeout: an event stream may rightly stay quiet for a long time.
        async for chunk in response.chunks(None):
            if tap is not None:
                await tap(chunk)
            if answers is not None and decoder is not None:
                chunk = answers.events(decoder, chunk)
                if answers.asked:
                    await answers.record_asked()
                if not chunk:
                    continue
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except UpstreamConnectionError as exc:
        # The answer has started: the client sees the stream end, the operator reads why.
        log.warning("backend event stream broke after the answer started: %s", exc)


async def wait_for_disconnect(receive: Receive) -> None:
    """Return once the client has gone away (its request body already read)."""
    while (await receive())["type"] != "http.disconnect":
        pass
