"""Every tool-call decision, appended to the audit stream in the session store (contract 10).

Entries are buffered and written in the background, a batch at a time, so a
decision costs the request no store round trip.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import deque

from agentgw.errors import StoreUnavailable
from agentgw.sessions.store import AuditStore

log = logging.getLogger("agentgw.audit")

FLUSH_INTERVAL = 0.2
# Made once: json.dumps with options builds an encoder on every call, and every audited call has a line.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# While the store is down, at most this many entries wait; the oldest are dropped first.
MAX_BUFFERED = 10_000


def hash_session(session_id: str | None) -> str | None:
    """Audit lines and logs carry a hash of the session id, never the id itself."""
    return None if session_id is None else hashlib.sha256(session_id.encode()).hexdigest()[:16]


_Decision = tuple[float, str | None, str | None, str, str, str, str, str | None]


class AuditLog:
    def __init__(self, store: AuditStore) -> None:
        self._store = store
        # Decisions as recorded; hashed and serialised when flushed, off the request's path.
        self._buffer: deque[_Decision] = deque(maxlen=MAX_BUFFERED)
        self._task: asyncio.Task[None] | None = None

    def record(
        self,
        *,
        subject: str | None,
        session_id: str | None,
        target: str,
        tool: str,
        decision: str,
        reason: str | None,
        method: str = "tools/call",
    ) -> None:
        self._buffer.append((time.time(), subject, session_id, target, method, tool, decision, reason))

    async def tail(self, count: int) -> list[dict[str, object]]:
        await self.flush()
        return [json.loads(line) for line in await self._store.audit_tail(count)]

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            [result] = await asyncio.gather(self._task, return_exceptions=True)
            if isinstance(result, Exception):  # CancelledError is no Exception: cancelled is fine
                log.error("the audit writer had stopped", exc_info=result)
        try:
            await self.flush()
        except StoreUnavailable:
            log.warning("audit entries lost at shutdown: the session store is unreachable")

    async def flush(self) -> None:
        if not self._buffer:
            return
        batch = list(self._buffer)
        self._buffer.clear()
        try:
            await self._store.append_audit([_line(decision) for decision in batch])
        except StoreUnavailable:
            self._buffer.extendleft(reversed(batch))  # kept for the next flush
            raise

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                await self.flush()
            except StoreUnavailable:
                log.warning("audit flush failed; %d entries wait", len(self._buffer))
            except Exception:  # the writer lives on: one bad batch must not end the audit trail
                log.exception("audit flush failed; a batch of entries is lost")


def _line(decision: _Decision) -> str:
    at, subject, session_id, target, method, tool, verdict, reason = decision
    entry = {
        "time": round(at, 3),
        "subject": subject,
        "session": hash_session(session_id),
        "target": target,
        "method": method,
        "tool": tool,
        "decision": verdict,
        "reason": reason,
    }
    return _ENCODER.encode(entry)
