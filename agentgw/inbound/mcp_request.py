"""What an MCP client sent over HTTP, checked before anything else happens (contract 5.5).

Media types, body size, session headers, protocol version, the 2026-07-28
routing headers: all refused here with the status and JSON-RPC code the
contract names, before a session is looked up or a policy consulted.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from starlette.types import Message, Receive, Scope

from agentgw import jsonrpc
from agentgw.auth.principal import Principal
from agentgw.errors import (
    BodyTooLarge,
    HeaderMismatch,
    InvalidRequest,
    NotAcceptable,
    RequestTimeout,
    UnsupportedMediaType,
    UnsupportedProtocolVersion,
)
from agentgw.inbound.relay import AnswerFilter
from agentgw.mcp_headers import (
    KNOWN_PROTOCOL_VERSIONS,
    LAST_EVENT_ID,
    MCP_METHOD,
    MCP_NAME,
    MCP_PARAM_PREFIX,
    MCP_PROTOCOL_VERSION,
    MCP_SESSION_ID,
    MODERN_PROTOCOL_VERSIONS,
)

# A stateful request without the version header speaks 2025-03-26 (MCP transport spec).
DEFAULT_STATEFUL_VERSION = "2025-03-26"

# Client headers a backend needs; everything else (Authorization above all) stays here.
# W3C trace context passes through, so a tracing client's spans join up with the backend's.
_FORWARDED = frozenset(
    {"accept", "content-type", MCP_PROTOCOL_VERSION, MCP_METHOD, MCP_NAME, LAST_EVENT_ID, "traceparent", "tracestate"}
)
# server.body_timeout's default, for callers that do not pass their settings' value.
DEFAULT_BODY_TIMEOUT = 30.0
# An oversized body is drained up to this many bytes so the client can read its 413.
_DRAIN_LIMIT = 64 * 1024 * 1024


@dataclass
class InboundRequest:
    method: str
    headers: dict[str, str]
    raw_headers: list[tuple[str, str]]
    session_id: str | None
    protocol_version: str | None
    principal: Principal | None
    # The responses the backend's answer may carry (set once the body is read); None: any.
    answers: AnswerFilter | None = None

    def forwarded_headers(self) -> dict[str, str]:
        return {k: v for k, v in self.headers.items() if k in _FORWARDED or k.startswith(MCP_PARAM_PREFIX)}

    @property
    def is_modern(self) -> bool:
        return self.protocol_version in MODERN_PROTOCOL_VERSIONS


def read_headers(scope: Scope, second_session_header: str, caller: Principal | None) -> InboundRequest:
    """The request of `caller`; a session id may come in Mcp-Session-Id or in `second_session_header`
    (SessionPolicy `sessionIdHeader`, lower-case)."""
    raw = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
    headers: dict[str, str] = {}
    session_ids: set[str] = set()
    for name, value in raw:
        if name == MCP_SESSION_ID or name == second_session_header:
            session_ids.add(value)
        headers.setdefault(name, value)
    if len(session_ids) > 1:
        raise InvalidRequest("Conflicting session id headers")
    version = headers.get(MCP_PROTOCOL_VERSION)
    if version is not None and version not in KNOWN_PROTOCOL_VERSIONS:
        raise UnsupportedProtocolVersion(
            f"Unsupported MCP-Protocol-Version {version!r}",
            data={"supported": list(KNOWN_PROTOCOL_VERSIONS), "requested": version},
        )
    return InboundRequest(
        method=scope["method"],
        headers=headers,
        raw_headers=raw,
        session_id=next(iter(session_ids), None),
        protocol_version=version,
        principal=caller,
    )


def check_messages(payload: Any) -> list[jsonrpc.Message]:
    if isinstance(payload, list):
        if not payload:
            raise InvalidRequest("Invalid request: empty batch")
        return [jsonrpc.check_message(m) for m in payload]
    return [jsonrpc.check_message(payload)]


def check_routing_headers(request: InboundRequest, message: jsonrpc.Message) -> None:
    """2026-07-28: Mcp-Method and Mcp-Name must say what the body says, before anything else."""
    if "method" not in message:
        return
    for name in (MCP_METHOD, MCP_NAME):
        if sum(1 for header, _ in request.raw_headers if header == name) > 1:
            raise HeaderMismatch(f"Duplicated {name} header")
    if request.headers.get(MCP_METHOD) != message["method"]:
        raise HeaderMismatch("Mcp-Method header does not match the body's method")
    named = jsonrpc.named_target(message)
    if named is not None and request.headers.get(MCP_NAME) != named:
        raise HeaderMismatch("Mcp-Name header does not match the body")


_USUAL_ACCEPT = "application/json, text/event-stream"


def _media_types(value: str) -> set[str]:
    return {part.split(";", 1)[0].strip().lower() for part in value.split(",")}


def check_content_type(headers: dict[str, str]) -> None:
    content_type = headers.get("content-type", "")
    if content_type != "application/json" and _media_types(content_type) != {"application/json"}:
        raise UnsupportedMediaType("Unsupported Media Type: Content-Type must be application/json")


def check_accept(headers: dict[str, str], offered: tuple[str, ...]) -> None:
    accept = headers.get("accept")
    if accept is None or accept == _USUAL_ACCEPT:
        return  # no Accept header accepts anything (RFC 9110)
    accepted = _media_types(accept)
    if "*/*" in accepted:
        return
    for media_type in offered:
        if media_type in accepted or media_type.split("/")[0] + "/*" in accepted:
            return
    raise NotAcceptable(f"Not Acceptable: Accept must allow {' or '.join(offered)}")


async def read_body(
    headers: dict[str, str], receive: Receive, limit: int, timeout: float = DEFAULT_BODY_TIMEOUT
) -> bytes:
    """The whole request body, within `limit` bytes and `timeout` seconds."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > _DRAIN_LIMIT:
        raise BodyTooLarge(f"Body larger than {limit} bytes")
    loop = asyncio.get_running_loop()
    started = loop.time()
    # The server parses what arrived with the head before the endpoint runs, so this nearly
    # always holds the whole body: only a body still arriving pays for a deadline (measured:
    # a timeout scope on every request cost ~10% of the tools/call path). A client that sends
    # no body byte at all is cut off by the connection's own body deadline (client_limits).
    first = await receive()
    if first["type"] == "http.request" and not first.get("more_body", False):
        body: bytes = first.get("body", b"")
        if len(body) > limit:
            raise BodyTooLarge(f"Body larger than {limit} bytes")
        return body
    try:
        async with asyncio.timeout(timeout - (loop.time() - started)):
            return await _receive_body(receive, limit, first)
    except TimeoutError:
        raise RequestTimeout(f"Request body not received within {timeout:g}s") from None


async def _receive_body(receive: Receive, limit: int, message: Message) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        if message["type"] == "http.disconnect":
            raise InvalidRequest("Client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > _DRAIN_LIMIT:
            break
        if not message.get("more_body", False):
            break
        message = await receive()
    if size > limit:
        # Read (and dropped) up to _DRAIN_LIMIT first: answering while the client is
        # still sending makes the kernel reset the connection, and the 413 is lost.
        raise BodyTooLarge(f"Body larger than {limit} bytes")
    return b"".join(chunks)
