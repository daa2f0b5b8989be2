"""The session store: the session record (contract 5.2), and the small protocols each part of the
gateway uses, all held by one store (memory or Redis)."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncGenerator, Collection, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol


def new_session_id() -> str:
    """256 random bits, never derived from anything a client sent."""
    return secrets.token_urlsafe(32)


@dataclass
class SessionRecord:
    id: str
    target: str
    backend: str
    protocol_version: str
    created_at: float
    last_seen: float
    # The backend's own session id; None for the stateless 2026-07-28 revision.
    backend_session_id: str | None = None
    issuer: str | None = None
    subject: str | None = None
    scopes: list[str] = field(default_factory=list)
    # The client's initialize request as forwarded, replayed by `failover: reinitialize`.
    initialize: str | None = None
    # A virtual server's session (contract 12): its members' backend sessions, as JSON.
    members: str | None = None

    def to_fields(self) -> dict[str, str]:
        fields = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        fields["scopes"] = " ".join(self.scopes)
        return {k: str(v) for k, v in fields.items()}

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> SessionRecord:
        return cls(
            id=fields["id"],
            target=fields["target"],
            backend=fields["backend"],
            protocol_version=fields["protocol_version"],
            created_at=float(fields["created_at"]),
            last_seen=float(fields["last_seen"]),
            backend_session_id=fields.get("backend_session_id"),
            issuer=fields.get("issuer"),
            subject=fields.get("subject"),
            scopes=fields.get("scopes", "").split(),
            initialize=fields.get("initialize"),
            members=fields.get("members"),
        )


class StoredCatalogue(NamedTuple):
    """A target's tool catalogue as stored: tool name -> its entry as JSON, and the version it is at."""

    version: int
    entries: dict[str, str]


class CatalogueStore(Protocol):
    """The tool catalogues (contract 7), with change notification so that keeping a copy
    current costs nothing while nothing changes.

    Every method raises `StoreUnavailable` when the store does not answer.
    """

    async def tool_entries(self, target: str) -> StoredCatalogue:
        """The whole catalogue of a target, read at one version."""
        ...

    async def put_tool_entries(self, target: str, entries: dict[str, str], removed: Collection[str] = ()) -> int:
        """Write and remove entries and bump the target's version, all at once; the new version."""
        ...

    def catalogue_changes(self, targets: list[str]) -> AsyncGenerator[tuple[str, int], None]:
        """(target, version) for catalogues other processes may have changed: each target once
        when watching starts or resumes after a lost connection, then one per write. Ends at
        once when no other process can write the store; otherwise never ends, whatever fails."""
        ...


class SessionRecords(Protocol):
    """The MCP session records (contract 5.2), shared by every gateway process that uses the same store.

    Every method raises `StoreUnavailable` when the store does not answer.
    """

    async def create(self, record: SessionRecord, ttl: float) -> None: ...

    async def touch(self, session_id: str, now: float, ttl: float) -> SessionRecord | None:
        """The live record, its lifetime slid to `now + ttl`; one round trip."""
        ...

    async def touch_answering(
        self, session_id: str, now: float, ttl: float, answer_ids: list[str]
    ) -> tuple[SessionRecord | None, list[str]]:
        """`touch`, and the client's answers to server-to-client requests taken, in the same round
        trip: the ids (JSON) among `answer_ids` the client was never asked, or has answered already."""
        ...

    async def expect_answers(self, session_id: str, request_ids: list[str]) -> None:
        """The client was sent these server-to-client requests (ids as JSON): each may be answered once."""
        ...

    async def replace_backend(self, record: SessionRecord, ttl: float) -> None:
        """Store a record whose backend changed (failover: reinitialize)."""
        ...

    async def delete(self, session_id: str) -> SessionRecord | None: ...

    async def count_by_backend(self, target: str, backends: list[str], now: float) -> dict[str, int]:
        """Live sessions per backend of a target, for `balance: least_sessions`."""
        ...

    async def get(self, session_id: str) -> SessionRecord | None:
        """The live record, left as it is (an operator looking does not keep a session alive)."""
        ...

    async def sessions(self, target: str, backends: list[str], now: float, limit: int) -> list[SessionRecord]:
        """Up to `limit` live sessions of a target's backends, the most recently used first."""
        ...


class AuditStore(Protocol):
    """The bounded audit stream (contract 6). Raises `StoreUnavailable` when the store does not answer."""

    async def append_audit(self, entries: list[str]) -> None:
        """Append JSON audit lines to the bounded audit stream."""
        ...

    async def audit_tail(self, count: int) -> list[str]:
        """The latest `count` audit lines, oldest first."""
        ...


class KeyValues(Protocol):
    """Small records kept beside the sessions: A2A task and context pins, stateless handles.
    Raises `StoreUnavailable` when the store does not answer."""

    async def get_value(self, key: str) -> str | None: ...

    async def put_value(self, key: str, value: str, ttl: float) -> None: ...

    async def claim_value(self, key: str, value: str, ttl: float) -> str:
        """Store `value` unless the key holds one already; the value the key holds after. One round trip."""
        ...


class Counters(Protocol):
    """Counters that live a while from their first use (rate limits).
    Raises `StoreUnavailable` when the store does not answer."""

    async def add(self, key: str, amount: int, ttl: float) -> int:
        """Add to a counter that lives `ttl` seconds from its first use; the new total. One round trip."""
        ...

    async def add_many(self, amounts: Sequence[tuple[str, int]], ttl: float) -> list[int]:
        """Add to several counters as `add` does, all in one round trip (a request counted and a
        token count read at once); their new totals, in order."""
        ...


class SessionStore(SessionRecords, CatalogueStore, AuditStore, KeyValues, Counters, Protocol):
    """The one store behind all of these, over one shared connection (memory or Redis): each part
    of the gateway is handed the store but typed against the small protocol it uses."""

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
