"""In-process session store for one gateway process; bounded so churn cannot grow it."""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncGenerator, Collection, Sequence

from agentgw.sessions.store import SessionRecord, StoredCatalogue

AUDIT_LENGTH = 10_000
# Server-to-client requests awaiting the client's answer, per session; beyond it, answers are refused.
MAX_ASKED = 1000


class MemorySessionStore:
    def __init__(self, max_sessions: int) -> None:
        self._max_sessions = max_sessions
        # Least recently used first, so expired and evicted records leave from the front.
        self._records: OrderedDict[str, tuple[SessionRecord, float]] = OrderedDict()
        self._per_backend: Counter[tuple[str, str]] = Counter()
        self._tools: dict[str, dict[str, str]] = {}
        self._tool_versions: dict[str, int] = {}
        self._audit: deque[str] = deque(maxlen=AUDIT_LENGTH)
        self._values: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._asked: dict[str, set[str]] = {}

    async def create(self, record: SessionRecord, ttl: float) -> None:
        self._drop_expired(record.created_at)
        while len(self._records) >= self._max_sessions:
            self._forget(next(iter(self._records)))
        self._records[record.id] = (record, record.created_at + ttl)
        self._per_backend[(record.target, record.backend)] += 1

    async def touch(self, session_id: str, now: float, ttl: float) -> SessionRecord | None:
        entry = self._records.get(session_id)
        if entry is None:
            return None
        record, expires_at = entry
        if expires_at <= now:
            self._forget(session_id)
            return None
        record.last_seen = now
        self._records[session_id] = (record, now + ttl)
        self._records.move_to_end(session_id)
        return record

    async def touch_answering(
        self, session_id: str, now: float, ttl: float, answer_ids: list[str]
    ) -> tuple[SessionRecord | None, list[str]]:
        record = await self.touch(session_id, now, ttl)
        asked = self._asked.get(session_id, set())
        unasked = []
        for answer in answer_ids:  # in order: the same answer twice is refused the second time
            if answer in asked:
                asked.discard(answer)
            else:
                unasked.append(answer)
        return record, unasked

    async def expect_answers(self, session_id: str, request_ids: list[str]) -> None:
        if session_id in self._records:
            asked = self._asked.setdefault(session_id, set())
            if len(asked) + len(request_ids) <= MAX_ASKED:
                asked.update(request_ids)

    async def replace_backend(self, record: SessionRecord, ttl: float) -> None:
        asked = self._asked.get(record.id)
        self._forget(record.id)
        if asked is not None:
            self._asked[record.id] = asked
        self._records[record.id] = (record, record.last_seen + ttl)
        self._per_backend[(record.target, record.backend)] += 1

    async def delete(self, session_id: str) -> SessionRecord | None:
        return self._forget(session_id)

    async def count_by_backend(self, target: str, backends: list[str], now: float) -> dict[str, int]:
        self._drop_expired(now)
        return {backend: self._per_backend[(target, backend)] for backend in backends}

    async def get(self, session_id: str) -> SessionRecord | None:
        entry = self._records.get(session_id)
        return entry[0] if entry is not None and entry[1] > time.time() else None

    async def sessions(self, target: str, backends: list[str], now: float, limit: int) -> list[SessionRecord]:
        self._drop_expired(now)
        wanted = set(backends)
        found = [r for r, _ in reversed(self._records.values()) if r.target == target and r.backend in wanted]
        return found[:limit]

    async def tool_entries(self, target: str) -> StoredCatalogue:
        return StoredCatalogue(self._tool_versions.get(target, 0), dict(self._tools.get(target, {})))

    async def put_tool_entries(self, target: str, entries: dict[str, str], removed: Collection[str] = ()) -> int:
        stored = self._tools.setdefault(target, {})
        stored.update(entries)
        for name in removed:
            stored.pop(name, None)
        version = self._tool_versions[target] = self._tool_versions.get(target, 0) + 1
        return version

    async def catalogue_changes(self, targets: list[str]) -> AsyncGenerator[tuple[str, int], None]:
        # This process is the only writer: its catalogue already holds every change.
        return
        yield

    async def append_audit(self, entries: list[str]) -> None:
        self._audit.extend(entries)

    async def audit_tail(self, count: int) -> list[str]:
        return list(self._audit)[-count:] if count > 0 else []

    async def get_value(self, key: str) -> str | None:
        entry = self._values.get(key)
        if entry is None or entry[1] <= time.time():
            return None
        return entry[0]

    async def put_value(self, key: str, value: str, ttl: float) -> None:
        self._values[key] = (value, time.time() + ttl)
        self._values.move_to_end(key)
        while len(self._values) > self._max_sessions:
            self._values.popitem(last=False)

    async def claim_value(self, key: str, value: str, ttl: float) -> str:
        held = await self.get_value(key)
        if held is not None:
            return held
        await self.put_value(key, value, ttl)
        return value

    async def add(self, key: str, amount: int, ttl: float) -> int:
        return self._add(key, amount, ttl, time.time())

    async def add_many(self, amounts: Sequence[tuple[str, int]], ttl: float) -> list[int]:
        now = time.time()
        return [self._add(key, amount, ttl, now) for key, amount in amounts]

    def _add(self, key: str, amount: int, ttl: float, now: float) -> int:
        entry = self._values.get(key)
        if entry is None or entry[1] <= now:
            entry = ("0", now + ttl)
        total = int(entry[0]) + amount
        self._values[key] = (str(total), entry[1])
        self._values.move_to_end(key)
        while len(self._values) > self._max_sessions:
            self._values.popitem(last=False)  # counters of every subject must not grow without bound
        return total

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._records.clear()
        self._per_backend.clear()

    def _forget(self, session_id: str) -> SessionRecord | None:
        self._asked.pop(session_id, None)
        entry = self._records.pop(session_id, None)
        if entry is None:
            return None
        record = entry[0]
        key = (record.target, record.backend)
        self._per_backend[key] -= 1
        if self._per_backend[key] <= 0:
            del self._per_backend[key]
        return record

    def _drop_expired(self, now: float) -> None:
        while self._records:
            session_id, (_, expires_at) = next(iter(self._records.items()))
            if expires_at > now:
                return
            self._forget(session_id)
