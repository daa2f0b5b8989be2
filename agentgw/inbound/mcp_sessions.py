"""The gateway's MCP sessions (contract 5.2 to 5.4), apart from the transport that carries them.

A session is opened on `initialize`, looked up and checked against its owner on
every request, ended on DELETE, and moved to a healthy backend (or ended) when
its backend goes: the transport (`mcp_http.py`) only asks.
"""

from __future__ import annotations

import time

from agentgw import jsonrpc
from agentgw.auth.principal import Principal
from agentgw.errors import InvalidRequest, SessionForbidden, SessionNotFound, SessionRequired, UpstreamUnavailable
from agentgw.inbound.mcp_request import DEFAULT_STATEFUL_VERSION, InboundRequest
from agentgw.mcp_headers import HANDSHAKE_PROTOCOL_VERSIONS
from agentgw.policy.live import LivePolicies
from agentgw.sessions.store import SessionRecord, SessionRecords, new_session_id
from agentgw.upstream.credentials import Presenting
from agentgw.upstream.mcp import BackendPool, McpUpstream


class McpSessions:
    def __init__(self, store: SessionRecords, upstream: McpUpstream, live: LivePolicies) -> None:
        self.store = store
        self.upstream = upstream
        self.live = live

    @property
    def ttl(self) -> float:
        return self.live.policies.session.session_timeout

    def new_record(
        self,
        target: str,
        backend: str,
        backend_session_id: str | None,
        initialize: jsonrpc.Message,
        forwarded: bytes,
        principal: Principal | None,
    ) -> SessionRecord:
        """The record of a session a backend has just opened, owned by the caller that opened it;
        `forwarded` is the initialize as sent, which `failover: reinitialize` replays."""
        requested = initialize.get("params", {}).get("protocolVersion")
        version = requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else DEFAULT_STATEFUL_VERSION
        now = time.time()
        return SessionRecord(
            id=new_session_id(),
            target=target,
            backend=backend,
            backend_session_id=backend_session_id,
            protocol_version=version,
            created_at=now,
            last_seen=now,
            initialize=forwarded.decode(),
            issuer=principal.issuer if principal else None,
            subject=principal.subject if principal else None,
            scopes=sorted(principal.scopes) if principal else [],
        )

    async def create(self, record: SessionRecord) -> None:
        await self.store.create(record, self.ttl)

    async def find(self, request: InboundRequest, target: str, answers: list[str] | None = None) -> SessionRecord:
        """The caller's session, its lifetime slid: one store round trip. `answers`: the ids (JSON)
        of the backend's requests the client answers in this request; each must be one the gateway
        relayed in this session and not answered yet (contract 15), taken in the same round trip."""
        if request.session_id is None:
            raise SessionRequired("Bad Request: missing session id")
        unasked: list[str] = []
        if answers:
            record, unasked = await self.store.touch_answering(request.session_id, time.time(), self.ttl, answers)
        else:
            record = await self.store.touch(request.session_id, time.time(), self.ttl)
        # Another target's session is as unknown here as no session: targets never shadow each other.
        if record is None or record.target != target:
            raise SessionNotFound("Session not found")
        if not self._owned_by_caller(request.principal, record):
            # Refused, and the session stays as it was for its owner.
            raise SessionForbidden("Forbidden: the session belongs to another subject")
        if unasked:
            raise InvalidRequest("Invalid request: an answer to a request the client was not sent, or answered already")
        return record

    def _owned_by_caller(self, principal: Principal | None, record: SessionRecord) -> bool:
        """A session belongs to the issuer and subject whose token created it (contract 5.4).

        A refreshed token of the same subject continues it; its scopes, not the
        session's, are the ones every check uses.
        """
        authenticator = self.live.authenticator
        if principal is None or record.subject is None or authenticator is None:
            return True
        if not authenticator.binds_sessions(record.issuer):
            return True
        return (principal.issuer, principal.subject) == (record.issuer, record.subject)

    async def end(self, record: SessionRecord, pool: BackendPool, caller: Principal | None) -> None:
        """DELETE: the backend frees its session, and the id answers 404 from now on."""
        await self.upstream.end_session(record, pool.target.timeout, pool.presenting(caller))
        await self.store.delete(record.id)

    async def fail_over(self, pool: BackendPool, record: SessionRecord, presenting: Presenting | None) -> SessionRecord:
        """Move the session to a healthy backend (`failover: reinitialize`), or end it so the client
        re-initializes (SessionNotFound, 404)."""
        if pool.target.failover == "reinitialize" and record.initialize is not None:
            for url in await pool.candidates(self.store, time.time()):
                try:
                    backend_session_id = await self.upstream.initialize(
                        url, record.initialize.encode(), record.protocol_version, pool.target.timeout, presenting
                    )
                except UpstreamUnavailable:
                    continue
                record.backend = url
                record.backend_session_id = backend_session_id
                await self.store.replace_backend(record, self.ttl)
                return record
        await self.store.delete(record.id)
        raise SessionNotFound("Session ended: its backend is gone; initialize a new session")
