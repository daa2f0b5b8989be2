"""OpenAI-compatible chat (contract 9): `/v1/chat/completions` and `/v1/models`.

Errors here are OpenAI-shaped (`{"error": {"message", "type", "code"}}`), as
OpenAI SDKs expect. A model alias is a fallback chain: a connection error,
timeout, 429 or 5xx moves on to the next entry, for a stream only before its
first chunk reached the client; after that a failure ends the stream with an
error event.

Where a GuardrailPolicy applies to the provider (contract 15), a whole answer is
scanned before it is sent, and a streamed one as it goes: its chunks are held back
(never more than 256 characters of a text) until what they carry is settled, so
that a secret split across chunks is still caught, and go out byte for byte
unless a secret touches them. Without one, chunks go out byte for byte as the
provider sent them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

from starlette.types import Receive, Scope, Send

from agentgw import jsonrpc
from agentgw.call import Call, CallPipeline, Steps, call_of
from agentgw.config import ServerConfig
from agentgw.errors import GatewayError, GuardrailBlocked, InternalError, InvalidRequest, NotFound
from agentgw.inbound.chat_guardrails import ScreenedChunks, blocked
from agentgw.inbound.mcp_request import check_content_type, read_body
from agentgw.inbound.relay import wait_for_disconnect
from agentgw.observability.guardrail_actions import GuardrailActions, Where
from agentgw.observability.metrics import Metrics
from agentgw.observability.refusals import Refusals
from agentgw.policy import rate_limits
from agentgw.policy.guardrails import Guard
from agentgw.policy.live import LivePolicies
from agentgw.policy.rate_limits import Kind, TokenAccount
from agentgw.sessions.store import Counters
from agentgw.upstream.llm.chat_fields import InvalidChatRequest
from agentgw.upstream.llm.provider import (
    BadProviderAnswer,
    NoProviderAnswered,
    ProviderError,
    RawChunk,
    StreamChunk,
    chunk_usage,
    usage_of,
)
from agentgw.upstream.llm.router import LlmRouter, Route

log = logging.getLogger("agentgw.inbound.chat")

T = TypeVar("T")

MODEL_COMMAND = "/model "
# Made once: json.dumps with options builds an encoder on every call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class ChatEndpoint:
    def __init__(
        self,
        router: LlmRouter,
        store: Counters,
        pipeline: CallPipeline,
        metrics: Metrics,
        refusals: Refusals,
        server: ServerConfig,
        live: LivePolicies,
        guardrail_actions: GuardrailActions,
    ) -> None:
        self.live = live
        self.guardrail_actions = guardrail_actions
        self.router = router
        self.store = store
        self.pipeline = pipeline
        self.metrics = metrics
        self.refusals = refusals
        self.max_body = server.max_body_bytes
        self.body_timeout = server.body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        call = call_of(scope)
        try:
            if scope["path"].rstrip("/") == "/v1/models" and scope["method"] == "GET":
                await self._models(send)
            elif scope["path"].rstrip("/") == "/v1/chat/completions" and scope["method"] == "POST":
                await self._complete(scope, call, receive, send)
            else:
                raise NotFound("Unknown endpoint")
        except GatewayError as exc:  # bad input, store down, providers down: the same status, OpenAI's shape
            await exc.send(scope, send, openai=True)
        except Exception:
            log.exception("unexpected error in the chat endpoint")
            await InternalError("Internal error").send(scope, send, openai=True)

    async def _models(self, send: Send) -> None:
        data = [
            {"id": i, "object": "model", "created": 0, "owned_by": owner} for i, owner in await self.router.model_ids()
        ]
        await _send_json(send, 200, {"object": "list", "data": data})

    async def _complete(self, scope: Scope, call: Call, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        check_content_type(headers)
        request = call.message = jsonrpc.parse(await read_body(headers, receive, self.max_body, self.body_timeout))
        if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
            raise InvalidRequest("messages must be a list")
        if not request["messages"] or not all(isinstance(m, dict) for m in request["messages"]):
            raise InvalidRequest("messages must be a non-empty list of objects")
        if not isinstance(request.get("model"), str):
            raise InvalidRequest("model must be a string")
        if request.get("stream") is not None and not isinstance(request["stream"], bool):
            raise InvalidChatRequest("stream", "a boolean")
        routes = self.router.routes(_apply_model_command(request))
        steps: Steps[Any] = (
            _StreamedChat(self, request, routes) if request.get("stream") else _Chat(self, request, routes)
        )
        await self.pipeline.run(steps, call, receive, send)

    def count(self, account: TokenAccount | None, route: Route, prompt: int, completion: int) -> None:
        """Usage per provider and model in the metrics, per subject in the store when its tier limits
        tokens (written in the background: the client does not wait for it)."""
        if prompt + completion:
            self.metrics.llm_tokens(route.provider.name, route.model, prompt, completion)
            rate_limits.spend_tokens(self.store, account, prompt + completion)

    # -- guardrails -------------------------------------------------------------

    def guard(self, route: Route) -> Guard | None:
        return self.live.guardrails.guard("llm", route.provider.name)

    def where(self, route: Route, call: Call) -> Where:
        return Where(route.provider.name, call.subject, None, "answer")

    def screened(self, guard: Guard, answer: dict[str, Any], where: Where) -> Any:
        """A whole answer with its secrets redacted; GuardrailBlocked when it holds what a policy blocks."""
        scan = guard.scan(answer)
        self.guardrail_actions.found(scan.findings, where)
        if scan.blocked is not None:
            raise blocked(where, scan.blocked)
        return scan.value

    # -- forwarding -------------------------------------------------------------

    async def first_answer(
        self, request: dict[str, Any], routes: list[Route]
    ) -> tuple[Route, tuple[dict[str, Any], tuple[int, int]]]:
        """The first answer and its usage; an answer whose usage is no count fails like a provider down."""

        async def complete(route: Route) -> tuple[dict[str, Any], tuple[int, int]]:
            answer = await route.provider.complete(request, route.model)
            return answer, usage_of(answer)

        return await self._first_success(routes, complete)

    async def open_stream(
        self, request: dict[str, Any], routes: list[Route]
    ) -> tuple[Route, tuple[StreamChunk | None, AsyncIterator[StreamChunk]]]:
        """The first route whose stream starts well: its first chunk (None: an empty stream) and the rest."""

        async def open_stream(route: Route) -> tuple[StreamChunk | None, AsyncIterator[StreamChunk]]:
            chunks = route.provider.stream(request, route.model)
            try:
                first = await anext(chunks)
                chunk_usage(first)  # a malformed first chunk fails before the client saw anything: fall back
            except StopAsyncIteration:
                return None, chunks
            except BaseException:
                await _close(route, chunks)  # its response goes back to the pool
                raise
            return first, chunks

        return await self._first_success(routes, open_stream)

    async def _first_success(self, routes: list[Route], call: Callable[[Route], Awaitable[T]]) -> tuple[Route, T]:
        """The first route that answers: each in turn, and the last one retried with backoff.

        While another route is left, a failure moves on at once (the fallback is
        the better retry). No retry starts after the deadline.
        """
        retry = self.router.retry
        deadline = time.monotonic() + retry.deadline
        last: ProviderError | None = None
        for index, route in enumerate(routes):
            attempts = retry.attempts if index == len(routes) - 1 else 1
            for attempt in range(attempts):
                if attempt:
                    pause = retry.backoff * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)
                    if time.monotonic() + pause > deadline:
                        break
                    await asyncio.sleep(pause)
                # With another route left, an unproven provider busy with others is skipped, not waited for.
                wait = 0.0 if index < len(routes) - 1 else max(0.0, deadline - time.monotonic())
                if not await route.breaker.admit(wait):
                    break
                outcome: bool | None = None
                # Anything but a ProviderError (InvalidChatRequest: refused before the provider was
                # asked) leaves the outcome unknown.
                try:
                    answer = await call(route)
                    outcome = True
                except ProviderError as exc:
                    outcome = not exc.retryable  # a refusal means the provider answered; the request was at fault
                    if not exc.retryable:
                        raise
                    last = exc
                    self._provider_failed(route, exc)
                    if exc.timed_out:
                        break
                    continue
                finally:
                    route.breaker.done(outcome)
                return route, answer
        detail = f": {last}" if last is not None else " (every provider's circuit is open)"
        raise NoProviderAnswered(f"No provider could answer{detail}")

    def _provider_failed(self, route: Route, exc: ProviderError, when: str = "") -> None:
        """One log line per provider failure; what the provider sent that the gateway would not relay
        is a refusal (contract 11), logged and counted as such."""
        if isinstance(exc, BadProviderAnswer):
            self.refusals.record(route.provider.name, "bad_provider_answer", f"{str(exc)[:120]}{when}")
        else:
            log.warning("provider %s failed%s: %s", route.name, when, exc)

    async def relay_stream(
        self,
        route: Route,
        first: StreamChunk | None,
        chunks: AsyncIterator[StreamChunk],
        account: TokenAccount | None,
        screen: ScreenedChunks | None,
        receive: Receive,
        send: Send,
    ) -> None:
        """Relay chunk by chunk (through `screen` when a guardrail applies). From the response start on,
        nothing may escape unlogged: a failure can no longer become an error response, so it is
        logged here and the stream ended cleanly."""
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        usage = [0, 0]
        relaying = asyncio.ensure_future(self._relay_chunks(route, first, chunks, usage, screen, send))
        disconnect = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await asyncio.wait((relaying, disconnect), return_when=asyncio.FIRST_COMPLETED)
        finally:
            # A client that went away stops the provider's stream too: nobody would read the rest.
            for task in (relaying, disconnect):
                task.cancel()
            for result in await asyncio.gather(relaying, disconnect, return_exceptions=True):
                if isinstance(result, Exception):  # CancelledError is no Exception: cancelled is fine
                    log.error("relaying the stream of %s failed", route.name, exc_info=result)
            await _close(route, chunks)
        self.count(account, route, *usage)

    async def _relay_chunks(
        self,
        route: Route,
        first: StreamChunk | None,
        chunks: AsyncIterator[StreamChunk],
        usage: list[int],
        screen: ScreenedChunks | None,
        send: Send,
    ) -> None:
        try:
            if first is not None:
                await _send_event(send, first, usage, screen)
                async for chunk in chunks:
                    await _send_event(send, chunk, usage, screen)
            closing = _events(screen.closing()) if screen is not None else b""
            if closing:
                await send({"type": "http.response.body", "body": closing, "more_body": True})
        except GuardrailBlocked as exc:
            # What was held back goes nowhere: the answer ends here, as a failed stream does.
            await _send_error_event(send, exc)
        except ProviderError as exc:
            # The client already has part of the answer: no fallback now, but a clean error, not a cut.
            self._provider_failed(route, exc, when=" mid-stream")
            route.breaker.failed_later()
            await _send_error_event(send, ProviderError(f"provider failed mid-stream: {exc}"))
        except Exception:
            log.exception("the stream of %s failed mid-way", route.name)
            await _send_error_event(send, InternalError("the gateway failed mid-stream"))
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


def _apply_model_command(request: dict[str, Any]) -> str:
    """`/model provider,model` on the first line of the first user message switches the model; the line goes.

    The message's content is a string, or a list of parts whose first is a text part.
    """
    for message in request["messages"]:
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        holder, key = (message, "content") if isinstance(content, str) else _first_text_part(content)
        text = holder.get(key) if holder is not None else None
        if isinstance(text, str) and text.startswith(MODEL_COMMAND):
            line, _, rest = text.partition("\n")
            provider, _, model = line[len(MODEL_COMMAND) :].strip().partition(",")
            if holder is not None and provider and model:
                holder[key] = rest
                return f"{provider.strip()}/{model.strip()}"
        break
    return str(request["model"])


def _first_text_part(content: Any) -> tuple[dict[str, Any] | None, str]:
    if isinstance(content, list) and content and isinstance(content[0], dict) and content[0].get("type") == "text":
        return content[0], "text"
    return None, "text"


class _ChatSteps:
    """What the steps of a chat completion (`agentgw/call.py`) share: no session, no policy yet but
    the rate limit."""

    kind: Kind = "llm"

    def __init__(self, endpoint: ChatEndpoint, request: dict[str, Any], routes: list[Route]) -> None:
        self.endpoint = endpoint
        self.request = request
        self.routes = routes

    async def session(self, call: Call) -> None:
        """Chat has no session."""

    async def policy(self, call: Call) -> None:
        """Who may use a model is the token's and the rate limit's to say."""


class _Chat(_ChatSteps):
    """A chat completion answered whole."""

    async def upstream(self, call: Call) -> tuple[Route, tuple[dict[str, Any], tuple[int, int]]]:
        route, answer = await self.endpoint.first_answer(self.request, self.routes)
        call.target, call.backend = route.provider.name, route.name
        return route, answer

    async def relay(
        self, call: Call, answer: tuple[Route, tuple[dict[str, Any], tuple[int, int]]], receive: Receive, send: Send
    ) -> None:
        route, (body, usage) = answer
        self.endpoint.count(call.tokens, route, *usage)
        guard = self.endpoint.guard(route)
        if guard is not None:
            body = self.endpoint.screened(guard, body, self.endpoint.where(route, call))
        await _send_json(send, 200, body)


class _StreamedChat(_ChatSteps):
    """A chat completion relayed chunk by chunk as the provider sends it."""

    async def upstream(self, call: Call) -> tuple[Route, tuple[StreamChunk | None, AsyncIterator[StreamChunk]]]:
        route, stream = await self.endpoint.open_stream(self.request, self.routes)
        call.target, call.backend = route.provider.name, route.name
        return route, stream

    async def relay(
        self,
        call: Call,
        answer: tuple[Route, tuple[StreamChunk | None, AsyncIterator[StreamChunk]]],
        receive: Receive,
        send: Send,
    ) -> None:
        route, (first, chunks) = answer
        guard = self.endpoint.guard(route)
        screen = None
        if guard is not None:
            screen = ScreenedChunks(guard, self.endpoint.guardrail_actions, self.endpoint.where(route, call))
        await self.endpoint.relay_stream(route, first, chunks, call.tokens, screen, receive, send)


async def _send_event(send: Send, chunk: StreamChunk, usage: list[int], screen: ScreenedChunks | None) -> None:
    """Send one chunk, adding the usage it reports to `usage` ([prompt, completion]). A chunk the
    provider sent in OpenAI's shape goes out as it came (only its `usage` is read) unless a
    guardrail changed it; through a guardrail, what it releases goes out in one write."""
    prompt, completion = usage_of(chunk.value if isinstance(chunk, RawChunk) else chunk)
    usage[0] += prompt
    usage[1] += completion
    if screen is not None:
        body = _events(screen.chunk(chunk))
    else:
        body = _event(chunk.data if isinstance(chunk, RawChunk) else _dump(chunk))
    if body:
        await send({"type": "http.response.body", "body": body, "more_body": True})


def _events(chunks: Iterable[StreamChunk]) -> bytes:
    """The SSE events of `chunks`: a RawChunk's data as the provider sent it, another chunk serialised."""
    return b"".join(_event(chunk.data if isinstance(chunk, RawChunk) else _dump(chunk)) for chunk in chunks)


async def _send_error_event(send: Send, error: GatewayError) -> None:
    await send({"type": "http.response.body", "body": _event(error.openai_body()), "more_body": True})


def _event(data: bytes) -> bytes:
    """One SSE event holding `data`. JSON may span lines (a provider's pretty-printed chunk): each line
    is a data line of its own, so that no line of it can pass for a field or end the event."""
    if b"\n" not in data:  # the SSE decoder joined a provider's data lines with LF, and ends lines at CR
        return b"data: " + data + b"\n\n"
    return b"".join(b"data: " + line + b"\n" for line in data.split(b"\n")) + b"\n"


async def _close(route: Route, chunks: AsyncIterator[StreamChunk]) -> None:
    """End a provider's stream (its connection goes back to the pool); a failure to is logged, not raised."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        log.exception("closing the stream of %s failed", route.name)


async def _send_json(send: Send, status: int, value: Any) -> None:
    body = _dump(value)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _dump(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()
