"""Gateway errors carry their wire codes; this is the one place they become responses."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Receive, Scope, Send

# JSON-RPC codes the gateway itself answers with.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
HEADER_MISMATCH = -32020
UNSUPPORTED_PROTOCOL_VERSION = -32022
SERVER_UNAVAILABLE = -32000
UNAUTHORIZED = -32001
POLICY_DENIED = -32051
BAD_BACKEND_ANSWER = -32052
GUARDRAIL = -32053
# No JSON-RPC code is standard for this; 429's digits in the server-error range.
RATE_LIMITED = -32029


# RFC 9728: where a client finds out which identity provider issues this resource's tokens.
WELL_KNOWN_METADATA = "/.well-known/oauth-protected-resource"


def base_url(scope: Scope) -> str:
    """The gateway's own URL as the client addressed it."""
    host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "localhost")
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    return f"{scheme}://{host}"


class GatewayError(Exception):
    """An error answered to the client with an HTTP status and a JSON-RPC error body.

    What an answer says is fixed by the error's type; the request it answers (its
    JSON-RPC id, its URL for a challenge) is given when it is sent.
    """

    http_status = 500
    jsonrpc_code = INTERNAL_ERROR
    # The `type` and `code` of the OpenAI-shaped body the chat endpoints answer with (no type: from the status).
    openai_type: str | None = None
    openai_code = "invalid_request"
    # The request field at fault, the `param` of the OpenAI-shaped body.
    openai_param: str | None = None
    # The `error` of the WWW-Authenticate challenge this answer carries (RFC 6750 section 3.1); None: none.
    challenge_error: str | None = None

    def __init__(self, message: str, *, data: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data
        self.headers = headers or {}

    def body(self, request_id: Any = None) -> bytes:
        error: dict[str, Any] = {"code": self.jsonrpc_code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}, separators=(",", ":")).encode()

    def openai_body(self) -> bytes:
        """The error as OpenAI SDKs expect it on `/v1/...`."""
        kind = self.openai_type or ("server_error" if self.http_status >= 500 else "invalid_request_error")
        error = {"message": self.message, "type": kind, "param": self.openai_param, "code": self.openai_code}
        return json.dumps({"error": error}, separators=(",", ":")).encode()

    def challenge(self, scope: Scope) -> str:
        """The WWW-Authenticate value: what went wrong, and where the resource metadata is."""
        parts = ['Bearer realm="agentgw"', f'error="{self.challenge_error}"']
        parts.append(f'resource_metadata="{base_url(scope)}{WELL_KNOWN_METADATA}"')
        return ", ".join(parts)

    async def refuse(self, scope: Scope, receive: Receive, send: Send, openai: bool = False) -> None:
        """Refuse a request before it reached an endpoint. A WebSocket handshake gets the HTTP answer
        too where the server can send one (ASGI's websocket.http.response), else a close with 1008."""
        if scope["type"] != "websocket":
            await self.send(scope, send, openai=openai)
            return
        await receive()  # the connect event
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008, "reason": self.message[:120]})
            return
        body = self.body()
        head = self._head(scope, body)
        await send({"type": "websocket.http.response.start", "status": self.http_status, "headers": head})
        await send({"type": "websocket.http.response.body", "body": body})

    async def send(self, scope: Scope, send: Send, *, openai: bool = False, request_id: Any = None) -> None:
        """Answer the request of `scope` with this error; the one place errors become responses.
        `request_id`: the id of the JSON-RPC request that failed, once its body was parsed.

        Once a response has started (an event stream), nothing more can be said:
        the server refuses a second start, and the stream simply ends.
        """
        body = self.openai_body() if openai else self.body(request_id)
        try:
            await send({"type": "http.response.start", "status": self.http_status, "headers": self._head(scope, body)})
        except RuntimeError:
            return
        await send({"type": "http.response.body", "body": body})

    def _head(self, scope: Scope, body: bytes) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        if self.challenge_error is not None:
            headers.append((b"www-authenticate", self.challenge(scope).encode("latin-1")))
        return headers


class InternalError(GatewayError):
    """A fault of the gateway itself, logged where it happened; never a client's fault."""

    openai_code = "internal_error"


class ParseError(GatewayError):
    http_status = 400
    jsonrpc_code = PARSE_ERROR


class InvalidRequest(GatewayError):
    http_status = 400
    jsonrpc_code = INVALID_REQUEST


class InvalidParams(GatewayError):
    """A request whose params name nothing the gateway serves (a virtual server's unknown name):
    a JSON-RPC error answered with 200, as an MCP server answers it."""

    http_status = 200
    jsonrpc_code = INVALID_PARAMS


class HeaderMismatch(GatewayError):
    http_status = 400
    jsonrpc_code = HEADER_MISMATCH


class UnsupportedProtocolVersion(GatewayError):
    http_status = 400
    jsonrpc_code = UNSUPPORTED_PROTOCOL_VERSION


class BodyTooLarge(GatewayError):
    http_status = 413
    jsonrpc_code = INVALID_REQUEST


class UnsupportedMediaType(GatewayError):
    http_status = 415
    jsonrpc_code = INVALID_REQUEST


class NotAcceptable(GatewayError):
    http_status = 406
    jsonrpc_code = INVALID_REQUEST


class MethodNotAllowed(GatewayError):
    http_status = 405
    jsonrpc_code = INVALID_REQUEST


class Forbidden(GatewayError):
    """Host or Origin not allowed (DNS-rebinding protection)."""

    http_status = 403
    jsonrpc_code = INVALID_REQUEST


class NotFound(GatewayError):
    http_status = 404
    jsonrpc_code = INVALID_REQUEST
    openai_code = "not_found"


class ModelNotFound(NotFound):
    """A chat request naming a model that no provider or alias answers."""

    openai_code = "model_not_found"


class SessionNotFound(NotFound):
    """Unknown, expired or ended session: a spec-following client re-initializes."""


class RequestTimeout(GatewayError):
    """The client did not send its whole body within `server.body_timeout` (contract 11).

    Answered before any response started, then the connection ends: what the client
    sends later is not a request.
    """

    http_status = 408
    jsonrpc_code = INVALID_REQUEST
    openai_code = "request_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"connection": "close"})


class ServerBusy(GatewayError):
    """More connections than `server.max_connections` (contract 11)."""

    http_status = 503
    jsonrpc_code = SERVER_UNAVAILABLE
    openai_code = "service_unavailable"


class SessionRequired(GatewayError):
    http_status = 400
    jsonrpc_code = INVALID_REQUEST


class InvalidToken(GatewayError):
    """Missing, malformed or rejected credentials: 401 with the challenge saying where to get a token."""

    http_status = 401
    jsonrpc_code = UNAUTHORIZED
    openai_code = "invalid_api_key"
    challenge_error = "invalid_token"


class SessionForbidden(GatewayError):
    """A valid token of another subject than the one the session belongs to."""

    http_status = 403
    jsonrpc_code = UNAUTHORIZED


class PolicyDenied(GatewayError):
    """A call a policy refuses (contract 6): HTTP 200 so the model reads the refusal, except
    `missing_scope`, which is 403 with the scopes that would allow it, so clients can step up."""

    http_status = 200
    jsonrpc_code = POLICY_DENIED


class InsufficientScope(PolicyDenied):
    """`missing_scope`: 403 with the challenge naming the scopes that would allow the call, so a client
    can step up its authorization (MCP authorization; RFC 6750 section 3.1)."""

    http_status = 403
    challenge_error = "insufficient_scope"

    def __init__(self, message: str, *, data: Any, required_scopes: list[str]) -> None:
        super().__init__(message, data=data)
        self.required_scopes = required_scopes

    def challenge(self, scope: Scope) -> str:
        required = " ".join(self.required_scopes)
        parts = ['Bearer realm="agentgw"', f'error="{self.challenge_error}"', f'scope="{required}"']
        parts.append(f'resource_metadata="{base_url(scope)}{WELL_KNOWN_METADATA}"')
        return ", ".join(parts)


class RateLimited(GatewayError):
    """Over a RateLimitPolicy tier's limit for this minute: 429, and when the window ends."""

    http_status = 429
    jsonrpc_code = RATE_LIMITED
    openai_type = "rate_limit_error"
    openai_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"retry-after": str(retry_after)})


class BatchDenied(GatewayError):
    """A batch holding any denied call is refused whole."""

    http_status = 400
    jsonrpc_code = INVALID_REQUEST


class StoreUnavailable(GatewayError):
    """The session store does not answer; the client may retry, soon: a failover takes seconds."""

    http_status = 503
    jsonrpc_code = SERVER_UNAVAILABLE
    openai_code = "service_unavailable"

    def __init__(self, message: str, *, data: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, data=data, headers={"retry-after": "1", **(headers or {})})


class UpstreamUnavailable(GatewayError):
    """No backend could take the request: the backend's fault, never the client's."""

    http_status = 503
    jsonrpc_code = SERVER_UNAVAILABLE


class UpstreamTimeout(UpstreamUnavailable):
    http_status = 504


class IdentityProviderUnavailable(GatewayError):
    """The key a token names cannot be fetched: the identity provider's fault, so 503, never 401."""

    http_status = 503
    jsonrpc_code = SERVER_UNAVAILABLE
    openai_code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, headers={"retry-after": str(retry_after)})


class BackendRefused(GatewayError):
    """What a backend, agent or provider sent is not relayed (contract 11): its fault, never the client's.

    Each subclass names its `reason`, the `data.reason` of the body and the label
    of `agentgw_backend_refusals_total`.
    """

    http_status = 502
    jsonrpc_code = BAD_BACKEND_ANSWER
    reason = "bad_backend_answer"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, data={"reason": self.reason}, headers=headers)


class BadBackendAnswer(BackendRefused):
    """An answer the gateway must read cannot be parsed, is no JSON-RPC response, or answers another id."""


class BackendAuthRefused(BackendRefused):
    """The backend refused the gateway's own credentials (401/403): the client cannot fix that."""

    reason = "backend_auth"


class GuardrailBlocked(GatewayError):
    """What a server sent holds what a GuardrailPolicy blocks (contract 15): answered in place of
    the result; on `/v1`, the provider's fault (502)."""

    http_status = 502
    jsonrpc_code = GUARDRAIL
    openai_code = "guardrail"

    def __init__(self, message: str, detector: str) -> None:
        super().__init__(message, data={"reason": "guardrail", "detector": detector})

    def error_object(self) -> dict[str, Any]:
        """The JSON-RPC `error` that takes the place of a result or answers a server's request."""
        return {"code": self.jsonrpc_code, "message": self.message, "data": self.data}


class UpstreamAuthFailed(BackendRefused):
    """The token endpoint that gives the gateway its upstream credentials failed or refused
    (contract 14): neither the client's fault nor its 401."""

    reason = "upstream_auth"
    openai_code = "upstream_auth"


class BadAgentCard(BackendRefused):
    """An agent card that is not JSON, or not a card."""

    reason = "bad_agent_card"
