"""Real backends that check every credential the gateway presents them (contract 14), and the
token endpoint they trust, served from the test's event loop on ports the kernel picks.

`CredentialCheck` wraps any ASGI app and lets through only requests carrying the credential it
is set to accept: a static bearer token, a static header, or a token issued by a `TokenEndpoint`
(examples/token_endpoint.py) for one audience. What a request presented is in `scope["auth"]`,
Starlette's place for it, which the a2a-sdk copies into its call context; the MCP server's
`whoami` tool and the A2A agent both answer it as JSON.

    endpoint = TokenEndpoint(TokenEndpointSettings(issuer=..., clients={"agentgw": secret}))
    async with served_token_endpoint(endpoint) as token_url, checked_mcp_backend(
        endpoint=endpoint, audience="https://billing.test/mcp"
    ) as backend:
        ...  # a gateway target with backends [{url: backend.url}] and tokenUrl token_url
        assert backend.check.seen[-1]["sub"] == "agentgw"
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

import jwt
import uvicorn
from a2a.helpers.proto_helpers import new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore
from a2a.types.a2a_pb2 import AgentCapabilities, AgentCard, AgentInterface, AgentSkill
from mcp.server.mcpserver import Context, MCPServer
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from examples.token_endpoint import TOKEN_PATH, TokenEndpoint
from tests.support import START_TIMEOUT, STOP_TIMEOUT, poll

MCP_PATH = "/mcp"
A2A_RPC_PATH = "/a2a/jsonrpc"
INVALID_TOKEN = 'Bearer error="invalid_token"'


class Accepts(TypedDict, total=False):
    """The one credential a `CredentialCheck` accepts: `bearer`, `header`, or `endpoint` (with `audience`)."""

    bearer: str
    header: tuple[str, str]
    endpoint: TokenEndpoint
    audience: str


class CredentialCheck:
    """Pure ASGI middleware refusing, with 401, every HTTP request without the accepted credential.

    `presented`: the raw credential of every request, in order (None when it carried none).
    `seen`: what each accepted request presented: a token's verified claims, or
    `{"header": name, "value": value}` for a static credential. `accepted`, `refused`: counts.
    `revoke(jti)` refuses an issued token from then on; `refuse_all` refuses everything.
    """

    def __init__(self, app: ASGIApp, **accepts: Unpack[Accepts]) -> None:
        if sum(name in accepts for name in ("bearer", "header", "endpoint")) != 1:
            raise ValueError("accept exactly one of bearer=, header=, endpoint=")
        self.app = app
        self.accepts = accepts
        self.presented: list[str | None] = []
        self.seen: list[dict[str, Any]] = []
        self.accepted = 0
        self.refused = 0
        self.refuse_all = False
        self.revoked: set[str] = set()
        self.open_paths: set[str] = set()  # served to anyone, as a public agent card is

    def revoke(self, jti: str) -> None:
        self.revoked.add(jti)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:  # the lifespan carries no credential
            await self.app(scope, receive, send)
            return
        credential = self._credential(scope)
        self.presented.append(credential)
        identity = None if credential is None or self.refuse_all else self._verified(credential)
        if identity is None:
            self.refused += 1
            refusal = JSONResponse({"error": "invalid_token"}, 401, headers={"WWW-Authenticate": INVALID_TOKEN})
            await refusal(scope, receive, send)
            return
        self.accepted += 1
        self.seen.append(identity)
        await self.app({**scope, "auth": identity}, receive, send)

    def _header_name(self) -> str:
        return self.accepts["header"][0].lower() if "header" in self.accepts else "authorization"

    def _credential(self, scope: Scope) -> str | None:
        name = self._header_name().encode()
        return next((v.decode("latin-1") for k, v in scope["headers"] if k.lower() == name), None)

    def _verified(self, credential: str) -> dict[str, Any] | None:
        """What the credential stands for, or None when it is not the one accepted."""
        if "header" in self.accepts:
            return self._static(credential) if credential == self.accepts["header"][1] else None
        scheme, _, token = credential.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        if "bearer" in self.accepts:
            return self._static(credential) if token == self.accepts["bearer"] else None
        try:
            claims = self.accepts["endpoint"].verify(token, self.accepts.get("audience"))
        except jwt.InvalidTokenError:
            return None
        return None if claims["jti"] in self.revoked else claims

    def _static(self, credential: str) -> dict[str, Any]:
        return {"header": self._header_name(), "value": credential}


def _as_json(scope_auth: Any) -> str:
    return json.dumps(scope_auth, sort_keys=True)


# -- the backends -----------------------------------------------------------------------------------


def whoami_mcp_app() -> Starlette:
    """A stateful MCP SDK server on Streamable HTTP at /mcp: `whoami` answers the JSON of what the
    request carrying the call presented (see `CredentialCheck.seen`), `echo` its text."""
    server = MCPServer(name="token-checking-backend")

    @server.tool()
    def whoami(ctx: Context) -> str:
        """What the credential on this request stands for."""
        request = ctx.request_context.request
        return _as_json(getattr(request, "scope", {}).get("auth"))

    @server.tool()
    def echo(text: str) -> str:
        """The text, unchanged."""
        return text

    return server.streamable_http_app(streamable_http_path=MCP_PATH, host="127.0.0.1")


class WhoamiExecutor(AgentExecutor):
    """Replies to every message with the JSON of what the request presented."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        reply = _as_json(context.call_context.state.get("auth"))
        await event_queue.enqueue_event(new_text_message(reply, context_id=context.context_id))

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        raise NotImplementedError("whoami answers at once; there is nothing to cancel")


def whoami_a2a_app(base_url: str) -> Starlette:
    """An a2a-sdk agent (v1.0 with 0.3 compatibility) whose card names `base_url`."""
    card = AgentCard(
        name="whoami",
        description="Tells what credential it was called with.",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(url=base_url + A2A_RPC_PATH, protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="whoami", name="whoami", description="Name the caller", tags=["auth"])],
    )
    handler = DefaultRequestHandler(agent_executor=WhoamiExecutor(), task_store=InMemoryTaskStore(), agent_card=card)
    routes = create_agent_card_routes(card) + create_jsonrpc_routes(
        handler, rpc_url=A2A_RPC_PATH, enable_v0_3_compat=True
    )
    return Starlette(routes=routes)


# -- serving them -----------------------------------------------------------------------------------


@dataclass
class CheckedServer:
    """A served backend: where to reach it (`url`: the MCP endpoint, or the agent's base URL) and its check."""

    url: str
    port: int
    check: CredentialCheck


def _loopback_socket() -> socket.socket:
    """Bound before the app is built, so an app that names its own URL (an agent card) knows its port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def _serving(app: ASGIApp, sock: socket.socket) -> AsyncIterator[None]:
    config = uvicorn.Config(app, lifespan="on", log_config=None, access_log=False, timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))

    async def started() -> bool:
        return server.started or task.done()

    try:
        await poll(started, timeout=START_TIMEOUT, interval=0.01)
        if task.done():
            task.result()
            raise RuntimeError("the server stopped as it started")
        yield
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, STOP_TIMEOUT)
        sock.close()


@contextlib.asynccontextmanager
async def served(app: ASGIApp) -> AsyncIterator[int]:
    """Serve `app` (its lifespan included) on 127.0.0.1; the port the kernel picked."""
    sock = _loopback_socket()
    async with _serving(app, sock):
        yield int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def served_token_endpoint(endpoint: TokenEndpoint) -> AsyncIterator[str]:
    """Serve the token endpoint; its token URL."""
    async with served(endpoint.app()) as port:
        yield f"http://127.0.0.1:{port}{TOKEN_PATH}"


@contextlib.asynccontextmanager
async def checked_mcp_backend(**accepts: Unpack[Accepts]) -> AsyncIterator[CheckedServer]:
    """The whoami MCP server behind a `CredentialCheck` accepting `accepts`."""
    check = CredentialCheck(whoami_mcp_app(), **accepts)
    async with served(check) as port:
        yield CheckedServer(f"http://127.0.0.1:{port}{MCP_PATH}", port, check)


@contextlib.asynccontextmanager
async def checked_a2a_agent(**accepts: Unpack[Accepts]) -> AsyncIterator[CheckedServer]:
    """The whoami A2A agent behind a `CredentialCheck` accepting `accepts`. Its card is served
    behind the check too: a gateway fetching it presents the credential."""
    sock = _loopback_socket()
    port = int(sock.getsockname()[1])
    base_url = f"http://127.0.0.1:{port}"
    check = CredentialCheck(whoami_a2a_app(base_url), **accepts)
    async with _serving(check, sock):
        yield CheckedServer(base_url, port, check)
