"""OpenAI-compatible chat (contract 9): `/v1/chat/completions` and `/v1/models`.

Errors here are OpenAI-shaped (`{"error": {"message", "type", "code"}}`), as
OpenAI SDKs expect. A model alias is a fallback chain: a connection error,
timeout, 429 or 5xx moves on to the next entry, for a stream only before its
first chunk reached the client; after that a failure ends the stream with an
error event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.types import Receive, Scope, Send

from agentgw import jsonrpc
from agentgw.auth.principal import Principal, principal_of
from agentgw.config import ServerConfig
from agentgw.errors import GatewayError
from agentgw.inbound.mcp_request import check_content_type, read_body
from agentgw.inbound.relay import wait_for_disconnect
from agentgw.observability.metrics import Metrics
from agentgw.observability.refusals import Refusals
from agentgw.observability.requests import RequestInfo, request_info
from agentgw.policy.live import LivePolicies
from agentgw.policy.model import RateLimitTier
from agentgw.sessions.store import SessionStore
from agentgw.upstream.llm.chat_fields import InvalidChatRequest
from agentgw.upstream.llm.provider import BadProviderAnswer, ChatChunk, ProviderError, usage_of
from agentgw.upstream.llm.router import LlmRouter, Route, UnknownModel

log = logging.getLogger("agentgw.inbound.chat")

T = TypeVar("T")

MODEL_COMMAND = "/model "
WINDOW = 60.0  # rate limits count per minute


class ChatError(GatewayError):
    """An error of the chat endpoints, with the `type`, `code` and `param` OpenAI SDKs read."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str,
        code: str,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ):
        super().__init__(message, headers=headers)
        self.http_status, self.openai_type, self.openai_code = status, kind, code
        self.param = param

    def openai_body(self) -> bytes:
        error = {"message": self.message, "type": self.openai_type, "param": self.param, "code": self.openai_code}
        return _dump({"error": error})


def _invalid_field(exc: InvalidChatRequest) -> ChatError:
    return ChatError(400, str(exc), "invalid_request_error", "invalid_request", param=exc.param)


class ChatEndpoint:
    def __init__(
        self,
        router: LlmRouter,
        store: SessionStore,
        live: LivePolicies,
        metrics: Metrics,
        refusals: Refusals,
        server: ServerConfig,
    ) -> None:
        self.router = router
        self.store = store
        self.live = live
        self.metrics = metrics
        self.refusals = refusals
        self.max_body = server.max_body_bytes
        self.body_timeout = server.body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if scope["path"].rstrip("/") == "/v1/models" and scope["method"] == "GET":
                await self._models(send)
            elif scope["path"].rstrip("/") == "/v1/chat/completions" and scope["method"] == "POST":
                await self._complete(scope, receive, send)
            else:
                raise ChatError(404, "Unknown endpoint", "invalid_request_error", "not_found")
        except GatewayError as exc:  # bad input, store down: the same status, OpenAI's shape
            await exc.send(send, openai=True)
        except Exception:
            log.exception("unexpected error in the chat endpoint")
            await ChatError(500, "Internal error", "server_error", "internal_error").send(send, openai=True)

    async def _models(self, send: Send) -> None:
        data = [
            {"id": i, "object": "model", "created": 0, "owned_by": owner} for i, owner in await self.router.model_ids()
        ]
        await _send_json(send, 200, {"object": "list", "data": data})

    async def _complete(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        check_content_type(headers)
        request = jsonrpc.parse(await read_body(headers, receive, self.max_body, self.body_timeout))
        if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
            raise ChatError(400, "messages must be a list", "invalid_request_error", "invalid_request")
        if not request["messages"] or not all(isinstance(m, dict) for m in request["messages"]):
            raise ChatError(
                400, "messages must be a non-empty list of objects", "invalid_request_error", "invalid_request"
            )
        if not isinstance(request.get("model"), str):
            raise ChatError(400, "model must be a string", "invalid_request_error", "invalid_request")
        if request.get("stream") is not None and not isinstance(request["stream"], bool):
            raise _invalid_field(InvalidChatRequest("stream", "a boolean"))
        principal = principal_of(scope)
        tier = self._tier(principal)
        subject = principal.subject if principal is not None else "anonymous"
        await self._admit(subject, tier)
        model = _apply_model_command(request)
        try:
            routes = self.router.routes(model)
        except UnknownModel:
            raise ChatError(
                404, f"The model {model!r} does not exist", "invalid_request_error", "model_not_found"
            ) from None
        info = request_info(scope)
        if request.get("stream"):
            await self._stream(request, routes, subject, info, receive, send)
        else:
            route, (answer, usage) = await self._first_answer(request, routes)
            _note_route(info, route)
            await self._count(subject, route, *usage)
            await _send_json(send, 200, answer)

    # -- limits ---------------------------------------------------------------

    def _tier(self, principal: Principal | None) -> RateLimitTier | None:
        for policy in self.live.policies.rate_limits:
            spec = policy.spec
            if "llm" not in spec.applies_to:
                continue
            claimed = principal.claims.get(spec.tier_claim) if principal is not None else None
            name = claimed if isinstance(claimed, str) and claimed in spec.tiers else spec.default_tier
            if name is not None:
                return spec.tiers[name]
        return None

    async def _admit(self, subject: str, tier: RateLimitTier | None) -> None:
        """Requests and tokens per minute, counted in the session store: N replicas share one limit."""
        if tier is None:
            return
        window = int(time.time() // WINDOW)
        retry_after = str(int(WINDOW - time.time() % WINDOW) + 1)
        if tier.requests_per_minute is not None:
            used = await self.store.add(f"ratelimit:{subject}:requests:{window}", 1, WINDOW * 2)
            if used > tier.requests_per_minute:
                raise _rate_limited("requests", tier.requests_per_minute, retry_after)
        if tier.tokens_per_minute is not None:
            used = await self.store.add(f"ratelimit:{subject}:tokens:{window}", 0, WINDOW * 2)
            if used >= tier.tokens_per_minute:
                raise _rate_limited("tokens", tier.tokens_per_minute, retry_after)

    async def _count(self, subject: str, route: Route, prompt: int, completion: int) -> None:
        """Usage per provider and model in the metrics, per subject in the store (the token limits read it)."""
        if prompt + completion:
            self.metrics.llm_tokens(route.provider.name, route.model, prompt, completion)
            window = int(time.time() // WINDOW)
            await self.store.add(f"ratelimit:{subject}:tokens:{window}", prompt + completion, WINDOW * 2)

    # -- forwarding -------------------------------------------------------------

    async def _first_answer(
        self, request: dict[str, Any], routes: list[Route]
    ) -> tuple[Route, tuple[dict[str, Any], tuple[int, int]]]:
        """The first answer and its usage; an answer whose usage is no count fails like a provider down."""

        async def complete(route: Route) -> tuple[dict[str, Any], tuple[int, int]]:
            answer = await route.provider.complete(request, route.model)
            return answer, usage_of(answer)

        return await self._first_success(routes, complete)

    async def _stream(
        self,
        request: dict[str, Any],
        routes: list[Route],
        subject: str,
        info: RequestInfo,
        receive: Receive,
        send: Send,
    ) -> None:
        async def open_stream(route: Route) -> tuple[ChatChunk | None, AsyncIterator[ChatChunk]]:
            chunks = route.provider.stream(request, route.model)
            try:
                first = await anext(chunks)
                usage_of(first)  # a malformed first chunk fails before the client saw anything: fall back
            except StopAsyncIteration:
                return None, chunks
            except BaseException:
                await _close(route, chunks)  # its response goes back to the pool
                raise
            return first, chunks

        route, (first, chunks) = await self._first_success(routes, open_stream)
        _note_route(info, route)
        await self._relay_stream(route, first, chunks, subject, receive, send)

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
                try:
                    answer = await call(route)
                    outcome = True
                except InvalidChatRequest as exc:  # refused before the provider was asked: no outcome
                    raise _invalid_field(exc) from None
                except ProviderError as exc:
                    outcome = not exc.retryable  # a refusal means the provider answered; the request was at fault
                    if not exc.retryable:
                        raise ChatError(exc.status, str(exc), "invalid_request_error", "provider_refused") from None
                    last = exc
                    self._provider_failed(route, exc)
                    if exc.timed_out:
                        break
                    continue
                finally:
                    route.breaker.done(outcome)
                return route, answer
        raise _all_failed(last)

    def _provider_failed(self, route: Route, exc: ProviderError, when: str = "") -> None:
        """One log line per provider failure; what the provider sent that the gateway would not relay
        is a refusal (contract 11), logged and counted as such."""
        if isinstance(exc, BadProviderAnswer):
            self.refusals.record(route.provider.name, "bad_provider_answer", f"{str(exc)[:120]}{when}")
        else:
            log.warning("provider %s failed%s: %s", route.name, when, exc)

    async def _relay_stream(
        self,
        route: Route,
        first: ChatChunk | None,
        chunks: AsyncIterator[ChatChunk],
        subject: str,
        receive: Receive,
        send: Send,
    ) -> None:
        """Relay chunk by chunk. From the response start on, nothing may escape unlogged: a failure
        can no longer become an error response, so it is logged here and the stream ended cleanly."""
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        usage = [0, 0]
        relaying = asyncio.ensure_future(self._relay_chunks(route, first, chunks, usage, send))
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
        try:
            await self._count(subject, route, *usage)
        except Exception:  # the client has its answer; only the count is lost, and that must be known
            log.exception("the usage of a stream of %s could not be counted", route.name)

    async def _relay_chunks(
        self, route: Route, first: ChatChunk | None, chunks: AsyncIterator[ChatChunk], usage: list[int], send: Send
    ) -> None:
        try:
            if first is not None:
                await _send_event(send, first, usage)
                async for chunk in chunks:
                    await _send_event(send, chunk, usage)
        except ProviderError as exc:
            # The client already has part of the answer: no fallback now, but a clean error, not a cut.
            self._provider_failed(route, exc, when=" mid-stream")
            route.breaker.failed_later()
            await _send_error_event(send, f"provider failed mid-stream: {exc}", "upstream_error")
        except Exception:
            log.exception("the stream of %s failed mid-way", route.name)
            await _send_error_event(send, "the gateway failed mid-stream", "internal_error")
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


def _note_route(info: RequestInfo, route: Route) -> None:
    info.target, info.backend = route.provider.name, route.name


def _rate_limited(what: str, limit: int, retry_after: str) -> ChatError:
    return ChatError(
        429,
        f"Rate limit reached: {limit} {what} per minute",
        "rate_limit_error",
        "rate_limit_exceeded",
        headers={"retry-after": retry_after},
    )


def _all_failed(last: ProviderError | None) -> ChatError:
    detail = f": {last}" if last is not None else " (every provider's circuit is open)"
    return ChatError(503, f"No provider could answer{detail}", "server_error", "upstream_unavailable")


async def _send_event(send: Send, chunk: ChatChunk, usage: list[int]) -> None:
    """Send one chunk, adding the usage it reports to `usage` ([prompt, completion])."""
    prompt, completion = usage_of(chunk)
    usage[0] += prompt
    usage[1] += completion
    await send({"type": "http.response.body", "body": b"data: " + _dump(chunk) + b"\n\n", "more_body": True})


async def _send_error_event(send: Send, message: str, code: str) -> None:
    error = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    await send({"type": "http.response.body", "body": b"data: " + _dump(error) + b"\n\n", "more_body": True})


async def _close(route: Route, chunks: AsyncIterator[ChatChunk]) -> None:
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
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
