"""MCP Streamable HTTP, proxied (contract section 5).

Stateful 2025 revisions: the gateway mints its own session id on `initialize`,
pins the session to one backend and swaps the backend's id in and out. The
stateless 2026-07-28 revision is forwarded request by request, pinned only when
the client echoes the `X-MCP-Session-ID` handle the gateway answers with.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, KNOWN_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from starlette.types import Receive, Scope, Send

from agentgw import jsonrpc
from agentgw.config import Settings
from agentgw.errors import (
    BodyTooLarge,
    GatewayError,
    HeaderMismatch,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotAcceptable,
    NotFound,
    SessionNotFound,
    SessionRequired,
    UnsupportedMediaType,
    UnsupportedProtocolVersion,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from agentgw.policy.model import PolicySet
from agentgw.sessions.store import SessionRecord, SessionStore, new_session_id
from agentgw.upstream.http import UpstreamConnectionError, UpstreamResponse, UpstreamTimeoutError
from agentgw.upstream.mcp import BackendPool, McpUpstream

log = logging.getLogger("agentgw.inbound.mcp")

MCP_SESSION_ID = "mcp-session-id"
X_MCP_SESSION_ID = "x-mcp-session-id"
MCP_PROTOCOL_VERSION = "mcp-protocol-version"
MCP_METHOD = "mcp-method"
MCP_NAME = "mcp-name"
MCP_PARAM_PREFIX = "mcp-param-"
LAST_EVENT_ID = "last-event-id"
# A stateful request without the version header speaks 2025-03-26 (MCP transport spec).
DEFAULT_STATEFUL_VERSION = "2025-03-26"

# Client headers a backend needs; everything else (Authorization above all) stays here.
_FORWARDED = frozenset({"accept", "content-type", MCP_PROTOCOL_VERSION, MCP_METHOD, MCP_NAME, LAST_EVENT_ID})
# Backend response headers never relayed: hop-by-hop, recomputed, or the backend's session id.
_NOT_RELAYED = frozenset(
    name.encode()
    for name in (
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "date",
        "server",
        MCP_SESSION_ID,
        X_MCP_SESSION_ID,
    )
)
# An oversized body is drained up to this many bytes so the client can read its 413.
_DRAIN_LIMIT = 64 * 1024 * 1024
_INITIALIZED = jsonrpc.serialise({"jsonrpc": "2.0", "method": "notifications/initialized"})


@dataclass
class InboundRequest:
    method: str
    headers: dict[str, str]
    raw_headers: list[tuple[str, str]]
    session_id: str | None
    protocol_version: str | None

    def forwarded_headers(self) -> dict[str, str]:
        return {k: v for k, v in self.headers.items() if k in _FORWARDED or k.startswith(MCP_PARAM_PREFIX)}

    @property
    def is_modern(self) -> bool:
        return self.protocol_version in MODERN_PROTOCOL_VERSIONS


def read_headers(scope: Scope) -> InboundRequest:
    raw = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
    headers: dict[str, str] = {}
    session_ids: set[str] = set()
    for name, value in raw:
        if name in (MCP_SESSION_ID, X_MCP_SESSION_ID):
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
    )


class McpHttpEndpoint:
    """The ASGI endpoint behind `/mcp/v1` and `/mcp/v1/{target}`."""

    def __init__(self, settings: Settings, store: SessionStore, upstream: McpUpstream, policies: PolicySet) -> None:
        self.settings = settings
        self.store = store
        self.upstream = upstream
        self.policies = policies
        self._default_target = settings.mcp.targets[0].name if settings.mcp.targets else None

    @property
    def _ttl(self) -> float:
        return self.policies.session.session_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            pool = self._pool(scope)
            request = read_headers(scope)
            if request.method == "POST":
                await self._post(request, pool, receive, send)
            elif request.method == "GET":
                await self._get(request, pool, receive, send)
            elif request.method == "DELETE":
                await self._delete(request, pool, send)
            else:
                raise MethodNotAllowed("Method not allowed", headers={"allow": "GET, POST, DELETE"})
        except GatewayError as exc:
            await exc.send(send)
        except Exception:
            log.exception("unexpected error in the MCP endpoint")
            await InternalError("Internal error").send(send)

    def _pool(self, scope: Scope) -> BackendPool:
        name = scope.get("path_params", {}).get("target", self._default_target)
        pool = self.upstream.pools.get(name) if name is not None else None
        if pool is None:
            raise NotFound("Unknown MCP target")
        return pool

    # -- POST ---------------------------------------------------------------

    async def _post(self, request: InboundRequest, pool: BackendPool, receive: Receive, send: Send) -> None:
        _check_content_type(request.headers)
        _check_accept(request.headers, ("application/json", "text/event-stream"))
        body = await _read_body(request.headers, receive, self.settings.server.max_body_bytes)
        payload = jsonrpc.parse(body)
        messages = _check_messages(payload)
        try:
            if request.is_modern:
                await self._post_modern(request, pool, payload, messages, receive, send)
            elif len(messages) == 1 and messages[0].get("method") == "initialize":
                await self._initialize(request, pool, messages[0], receive, send)
            else:
                if any(m.get("method") == "initialize" for m in messages):
                    raise InvalidRequest("initialize must be sent alone")
                record = await self._session(request, pool)
                await self._forward_in_session(request, pool, record, jsonrpc.serialise(payload), receive, send)
        except GatewayError as exc:
            if exc.request_id is None and isinstance(payload, dict):
                exc.request_id = payload.get("id")
            raise

    async def _initialize(
        self, request: InboundRequest, pool: BackendPool, message: jsonrpc.Message, receive: Receive, send: Send
    ) -> None:
        if request.session_id is not None:
            raise InvalidRequest("initialize must not carry a session id")
        body = jsonrpc.serialise(message)
        headers = request.forwarded_headers()
        now = time.time()
        for url in await pool.candidates(self.store, now):
            try:
                response = await self.upstream.send("POST", url, headers, body, timeout=pool.target.timeout)
            except UpstreamTimeout:
                raise
            except UpstreamUnavailable:
                continue  # an initialize that never arrived is safe to try on the next backend
            try:
                if response.status != 200:
                    await _relay(
                        response, [], receive, send, pool.target.timeout
                    )  # the backend refused: its answer, no session
                    return
                requested = message.get("params", {}).get("protocolVersion")
                record = SessionRecord(
                    id=new_session_id(),
                    target=pool.target.name,
                    backend=url,
                    backend_session_id=response.header(MCP_SESSION_ID),
                    protocol_version=requested
                    if requested in HANDSHAKE_PROTOCOL_VERSIONS
                    else DEFAULT_STATEFUL_VERSION,
                    created_at=now,
                    last_seen=now,
                    initialize=body.decode(),
                )
                await self.store.create(record, self._ttl)
                await _relay(response, _session_headers(record.id), receive, send, pool.target.timeout)
                return
            finally:
                response.release()
        raise UpstreamUnavailable(f"No backend of target {pool.target.name!r} is reachable")

    async def _post_modern(
        self,
        request: InboundRequest,
        pool: BackendPool,
        payload: Any,
        messages: list[jsonrpc.Message],
        receive: Receive,
        send: Send,
    ) -> None:
        if isinstance(payload, list):
            raise InvalidRequest("Batches are not part of MCP 2026-07-28")
        _check_routing_headers(request, messages[0])
        record = await self._pinned(request, pool)
        body = jsonrpc.serialise(payload)
        headers = request.forwarded_headers()
        now = time.time()
        candidates = await pool.candidates(self.store, now)
        if record is not None:
            candidates = [record.backend] + [url for url in candidates if url != record.backend]
        for url in candidates:
            try:
                response = await self.upstream.send("POST", url, headers, body, timeout=pool.target.timeout)
            except UpstreamTimeout:
                raise
            except UpstreamUnavailable:
                continue  # nothing arrived, and the revision keeps no state at the backend
            try:
                record = await self._pin_modern(record, pool, url, now)
                await _relay(response, [(X_MCP_SESSION_ID, record.id)], receive, send, pool.target.timeout)
                return
            finally:
                response.release()
        raise UpstreamUnavailable(f"No backend of target {pool.target.name!r} is reachable")

    async def _pinned(self, request: InboundRequest, pool: BackendPool) -> SessionRecord | None:
        """The record behind an echoed handle; an unknown or expired one simply pins afresh,
        since this revision promises clients no session to lose."""
        if request.session_id is None:
            return None
        record = await self.store.touch(request.session_id, time.time(), self._ttl)
        return record if record is not None and record.target == pool.target.name else None

    async def _pin_modern(self, record: SessionRecord | None, pool: BackendPool, url: str, now: float) -> SessionRecord:
        if record is None:
            record = SessionRecord(
                id=new_session_id(),
                target=pool.target.name,
                backend=url,
                protocol_version=MODERN_PROTOCOL_VERSIONS[-1],
                created_at=now,
                last_seen=now,
            )
            await self.store.create(record, self._ttl)
        elif record.backend != url:
            record.backend = url
            await self.store.replace_backend(record, self._ttl)
        return record

    # -- GET and DELETE -------------------------------------------------------

    async def _get(self, request: InboundRequest, pool: BackendPool, receive: Receive, send: Send) -> None:
        _check_accept(request.headers, ("text/event-stream",))
        if request.is_modern:
            raise MethodNotAllowed("MCP 2026-07-28 has no GET stream", headers={"allow": "POST"})
        record = await self._session(request, pool)
        await self._forward_in_session(request, pool, record, None, receive, send)

    async def _delete(self, request: InboundRequest, pool: BackendPool, send: Send) -> None:
        record = await self._session(request, pool)
        if record.backend_session_id is not None:
            headers = {MCP_SESSION_ID: record.backend_session_id, MCP_PROTOCOL_VERSION: record.protocol_version}
            try:
                response = await self.upstream.send(
                    "DELETE", record.backend, headers, None, timeout=pool.target.timeout
                )
                response.release()
            except UpstreamUnavailable:
                pass  # the backend is gone, and its session with it
        await self.store.delete(record.id)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    # -- sessions and failover ----------------------------------------------

    async def _session(self, request: InboundRequest, pool: BackendPool) -> SessionRecord:
        if request.session_id is None:
            raise SessionRequired("Bad Request: missing session id")
        record = await self.store.touch(request.session_id, time.time(), self._ttl)
        # Another target's session is as unknown here as no session: targets never shadow each other.
        if record is None or record.target != pool.target.name:
            raise SessionNotFound("Session not found")
        return record

    async def _forward_in_session(
        self,
        request: InboundRequest,
        pool: BackendPool,
        record: SessionRecord,
        body: bytes | None,
        receive: Receive,
        send: Send,
    ) -> None:
        headers = request.forwarded_headers()
        for _ in range(2):
            if record.backend_session_id is not None:
                headers[MCP_SESSION_ID] = record.backend_session_id
            try:
                response = await self.upstream.send(
                    request.method, record.backend, headers, body, timeout=pool.target.timeout
                )
            except UpstreamTimeout:
                raise
            except UpstreamUnavailable:
                record = await self._failover(pool, record)
                continue
            try:
                if response.status == 404 and record.backend_session_id is not None:
                    # The backend no longer knows its session: it restarted or expired it.
                    record = await self._failover(pool, record)
                    continue
                await _relay(response, _session_headers(record.id), receive, send, pool.target.timeout)
                return
            finally:
                response.release()
        raise UpstreamUnavailable(f"No backend of target {pool.target.name!r} kept the session")

    async def _failover(self, pool: BackendPool, record: SessionRecord) -> SessionRecord:
        """Move the session to a healthy backend, or end it so the client re-initializes."""
        if pool.target.failover == "reinitialize" and record.initialize is not None:
            for url in await pool.candidates(self.store, time.time()):
                try:
                    backend_session_id = await self._replay_initialize(pool, url, record)
                except UpstreamUnavailable:
                    continue
                record.backend = url
                record.backend_session_id = backend_session_id
                await self.store.replace_backend(record, self._ttl)
                return record
        await self.store.delete(record.id)
        raise SessionNotFound("Session ended: its backend is gone; initialize a new session")

    async def _replay_initialize(self, pool: BackendPool, url: str, record: SessionRecord) -> str | None:
        assert record.initialize is not None
        headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        timeout = pool.target.timeout
        response = await self.upstream.send("POST", url, headers, record.initialize.encode(), timeout=timeout)
        try:
            await response.read(timeout)
            backend_session_id = response.header(MCP_SESSION_ID)
            if response.status != 200:
                raise UpstreamUnavailable("Backend refused the replayed initialize")
        except (UpstreamConnectionError, UpstreamTimeoutError) as exc:
            raise UpstreamUnavailable("Backend failed during the replayed initialize") from exc
        finally:
            response.release()
        headers[MCP_PROTOCOL_VERSION] = record.protocol_version
        if backend_session_id is not None:
            headers[MCP_SESSION_ID] = backend_session_id
        (await self.upstream.send("POST", url, headers, _INITIALIZED, timeout=timeout)).release()
        return backend_session_id


def _session_headers(session_id: str) -> list[tuple[str, str]]:
    return [(MCP_SESSION_ID, session_id), (X_MCP_SESSION_ID, session_id)]


def _check_messages(payload: Any) -> list[jsonrpc.Message]:
    if isinstance(payload, list):
        if not payload:
            raise InvalidRequest("Invalid request: empty batch")
        return [jsonrpc.check_message(m) for m in payload]
    return [jsonrpc.check_message(payload)]


def _check_routing_headers(request: InboundRequest, message: jsonrpc.Message) -> None:
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


def _check_content_type(headers: dict[str, str]) -> None:
    content_type = headers.get("content-type", "")
    if content_type != "application/json" and _media_types(content_type) != {"application/json"}:
        raise UnsupportedMediaType("Unsupported Media Type: Content-Type must be application/json")


def _check_accept(headers: dict[str, str], offered: tuple[str, ...]) -> None:
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


async def _read_body(headers: dict[str, str], receive: Receive, limit: int) -> bytes:
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > _DRAIN_LIMIT:
        raise BodyTooLarge(f"Body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
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
    if size > limit:
        # Read (and dropped) up to _DRAIN_LIMIT first: answering while the client is
        # still sending makes the kernel reset the connection, and the 413 is lost.
        raise BodyTooLarge(f"Body larger than {limit} bytes")
    return b"".join(chunks)


async def _relay(
    response: UpstreamResponse, extra_headers: list[tuple[str, str]], receive: Receive, send: Send, timeout: float
) -> None:
    """Relay a backend response: JSON whole, an event stream event by event as it arrives."""
    headers = [(name.lower(), value) for name, value in response.raw_headers if name.lower() not in _NOT_RELAYED]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra_headers]
    if not (response.header("content-type") or "").startswith("text/event-stream"):
        try:
            body = await response.read(timeout)
        except (UpstreamConnectionError, UpstreamTimeoutError) as exc:
            raise UpstreamUnavailable("Backend failed while answering") from exc
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    relay = asyncio.ensure_future(_relay_events(response, send))
    disconnect = asyncio.ensure_future(_wait_for_disconnect(receive))
    try:
        await asyncio.wait((relay, disconnect), return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnect.cancel()
        relay.cancel()
        await asyncio.gather(relay, disconnect, return_exceptions=True)
    await send({"type": "http.response.body", "body": b""})


async def _relay_events(response: UpstreamResponse, send: Send) -> None:
    try:
        # No read timeout: an event stream may rightly stay quiet for a long time.
        async for chunk in response.chunks(None):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except UpstreamConnectionError:
        pass  # the backend went away mid-stream; the client sees the stream end


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
