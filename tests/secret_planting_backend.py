"""A real MCP SDK server that plants secrets in every place a server sends text toward a client
(contract 15), and asks the client for things (sampling, elicitation) on request.

Every secret is assembled at run time from harmless parts, so no file of the repository holds
anything a secret scanner would take for a credential. `PLANTED` holds one of each kind beside
near-misses that must come through untouched; `PLANTED_REDACTED` is what a redacting gateway
makes of it.

    async with planting_backend() as backend:
        ...  # a gateway target with backends [{url: backend.url}]
        assert backend.answers() == [...]  # the client answers that reached it
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from mcp import MCPError, types
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.shared.message import ServerMessageMetadata
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.token_checking_backend import MCP_PATH, served


def _b64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


ALNUM = "A1b2C3d4E5f6G7h8J9k0"
AWS_KEY_ID = "AKIA" + "IOSFODNN7" + "EXAMPLE"
GITHUB_TOKEN = "ghp" + "_" + ALNUM + ALNUM[:16]
JWT = _b64url({"alg": "HS256", "typ": "JWT"}) + "." + _b64url({"sub": "alice", "exp": 1}) + ".c2lnbmF0dXJl" + ALNUM
CARD = "4111 " + "1111 " * 2 + "1111"
PRIVATE_KEY = "-----BEGIN " + "RSA PRIVATE KEY-----\n" + "MIIE" + ALNUM * 3 + "\n-----END RSA PRIVATE KEY-----"
SECRETS = {
    "aws_access_key_id": AWS_KEY_ID,
    "github_token": GITHUB_TOKEN,
    "jwt": JWT,
    "payment_card": CARD,
    "private_key": PRIVATE_KEY,
}
# Near-misses: a 16-digit number that fails the Luhn check, words that merely contain "token".
LUHN_INVALID = "4111 " + "1111 " * 2 + "1112"
TOKEN_WORDS = "the tokenizer and my_token_count"
NEAR_MISSES = f"near misses: {LUHN_INVALID}, {TOKEN_WORDS}"


def _planted(secret: dict[str, str]) -> str:
    return (
        f"key {secret['aws_access_key_id']}, token {secret['github_token']}, jwt {secret['jwt']}, "
        f"card {secret['payment_card']}; {NEAR_MISSES}\n{secret['private_key']}\nthe end"
    )


PLANTED = _planted(SECRETS)
PLANTED_REDACTED = _planted({detector: f"[REDACTED:{detector}]" for detector in SECRETS})
# What holds no secret at all: relayed as the backend wrote it.
CLEAN = f"nothing to hide; {NEAR_MISSES}"

PLANTED_RESOURCE = "notes://planted"
SAMPLING_PROMPT = "Summarise."
DANGEROUS_URL = "http://login.example.test/sign-in"


class City(BaseModel):
    city: str


class Password(BaseModel):
    password: str


def planted_result() -> types.CallToolResult:
    """A tools/call result with PLANTED in every place a result carries text."""
    return types.CallToolResult(
        content=[
            types.TextContent(type="text", text=PLANTED),
            types.EmbeddedResource(
                type="resource",
                resource=types.TextResourceContents(uri="file:///notes.txt", mime_type="text/plain", text=PLANTED),
            ),
            types.ResourceLink(type="resource_link", uri="file:///elsewhere", name=PLANTED, description=PLANTED),
        ],
        structured_content={"outer": {"inner": [PLANTED, {"deep": PLANTED}], "count": 3}, "clean": CLEAN},
        _meta={"note": PLANTED},
    )


async def _asked(
    ctx: Context, request: types.ServerRequest, result_type: type[BaseModel], in_own_stream: bool = True
) -> str:
    """Send the client a request, in the tool's own stream or else in the session's standalone
    (GET) stream; what came back, as JSON for the test."""
    metadata = ServerMessageMetadata(related_request_id=ctx.request_context.request_id) if in_own_stream else None
    try:
        result = await ctx.session.send_request(request, result_type, metadata=metadata)
    except MCPError as exc:
        return json.dumps({"error": {"code": exc.code, "message": exc.message, "data": exc.data}})
    return json.dumps({"result": result.model_dump(by_alias=True, mode="json", exclude_none=True)})


def planting_server() -> MCPServer:
    server = MCPServer(name="secret-planting-backend")

    @server.tool()
    def leak() -> types.CallToolResult:
        """Secrets in content text, an embedded resource, a resource link, structuredContent and _meta."""
        return planted_result()

    @server.tool()
    async def leak_after_reconnect(ctx: Context) -> types.CallToolResult:
        """`leak`, answered after the tool closed its stream: the client resumes it (GET with
        Last-Event-ID) to get the result, which a resumable server replays from its event store."""
        await ctx.close_sse_stream()
        return planted_result()

    @server.tool()
    def quiet() -> str:
        """Nothing secret, near-misses only."""
        return CLEAN

    @server.tool()
    def fail_rpc() -> str:
        """A JSON-RPC error whose message and data hold secrets."""
        raise MCPError(-32000, f"failed: {PLANTED}", {"detail": PLANTED})

    @server.tool()
    def fail_tool() -> str:
        """An isError result whose text holds secrets."""
        raise ToolError(PLANTED)

    @server.tool()
    async def chatty(ctx: Context) -> str:
        """A progress notification and a log message holding secrets, then a clean one of each."""
        related = ctx.request_context.request_id
        await ctx.report_progress(1, 3, PLANTED)
        await ctx.session.send_notification(_log({"detail": PLANTED}), related_request_id=related)
        await ctx.session.send_notification(_log({"detail": CLEAN}), related_request_id=related)
        await ctx.report_progress(2, 3, CLEAN)
        return CLEAN

    @server.tool()
    async def ask_model(ctx: Context, text: str = SAMPLING_PROMPT, in_own_stream: bool = True) -> str:
        """sampling/createMessage with `text` to the client; what came back."""
        message = types.SamplingMessage(role="user", content=types.TextContent(type="text", text=text))
        params = types.CreateMessageRequestParams(messages=[message], max_tokens=16)
        request = types.CreateMessageRequest(params=params)
        return await _asked(ctx, request, types.CreateMessageResult, in_own_stream)

    @server.tool()
    async def ask_user(field: str, ctx: Context) -> str:
        """elicitation/create asking for `field` (city or password); what came back."""
        schema = (Password if field == "password" else City).model_json_schema()
        params = types.ElicitRequestFormParams(message=f"Your {field}, please.", requested_schema=schema)
        return await _asked(ctx, types.ElicitRequest(params=params), types.ElicitResult)

    @server.tool()
    async def ask_url(url: str, ctx: Context) -> str:
        """A URL-mode elicitation/create sending the user to `url`; what came back."""
        params = types.ElicitRequestURLParams(message="Sign in there.", url=url, elicitation_id="sign-in-1")
        return await _asked(ctx, types.ElicitRequest(params=params), types.ElicitResult)

    @server.resource(PLANTED_RESOURCE)
    def planted_notes() -> str:
        """Notes holding secrets."""
        return PLANTED

    @server.prompt()
    def leaky() -> str:
        """A prompt holding secrets."""
        return PLANTED

    return server


def _log(data: Any) -> types.LoggingMessageNotification:
    return types.LoggingMessageNotification(params=types.LoggingMessageNotificationParams(level="info", data=data))


class RememberedEvents(EventStore):
    """Every event of every stream, so that a client may resume any of them."""

    def __init__(self) -> None:
        self._events: list[tuple[StreamId, EventId, types.JSONRPCMessage | None]] = []

    async def store_event(self, stream_id: StreamId, message: types.JSONRPCMessage | None) -> EventId:
        event_id = str(len(self._events) + 1)
        self._events.append((stream_id, event_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        stream = next((stream for stream, event_id, _ in self._events if event_id == last_event_id), None)
        if stream is None:
            return None
        later = self._events[int(last_event_id) :]
        for event_stream, event_id, message in later:
            if event_stream == stream and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream


@dataclass
class ReceivedMessages:
    """Pure ASGI middleware noting every JSON-RPC message POSTed to the app, in order."""

    app: ASGIApp
    received: list[Any] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = bytearray()

        async def noting() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
                if not message.get("more_body"):
                    with contextlib.suppress(ValueError):
                        self.received.append(json.loads(body))
            return message

        await self.app(scope, noting, send)

    def answers(self) -> list[dict[str, Any]]:
        """The responses a client sent to the server's own requests."""
        return [m for m in self.received if isinstance(m, dict) and "method" not in m and "id" in m]


# How soon a client resumes a stream the server closed (the SDK client waits a second otherwise).
RESUME_AFTER_MS = 50


@dataclass
class PlantingBackend:
    """A served planting server, and what was POSTed to it."""

    port: int
    recorder: ReceivedMessages

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{MCP_PATH}"

    def answers(self) -> list[dict[str, Any]]:
        """The responses a client sent to the server's own requests, as they reached it."""
        return self.recorder.answers()


@contextlib.asynccontextmanager
async def planting_backend(resumable: bool = False) -> AsyncIterator[PlantingBackend]:
    """The planting server on Streamable HTTP (stateful, SSE answers), served from the test's loop;
    `resumable`: its streams are kept in an event store, and a client may resume them."""
    app = planting_server().streamable_http_app(
        streamable_http_path=MCP_PATH,
        host="127.0.0.1",
        event_store=RememberedEvents() if resumable else None,
        retry_interval=RESUME_AFTER_MS if resumable else None,
    )
    recorder = ReceivedMessages(app)
    async with served(recorder) as port:
        yield PlantingBackend(port, recorder)
