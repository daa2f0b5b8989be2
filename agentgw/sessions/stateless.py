"""Pinning handles for the stateless 2026-07-28 revision, kept in the handle itself rather than the store.

The revision has no sessions, so the `X-MCP-Session-ID` handle only says which
backend answered: `<backend index>.<MAC>`, the MAC binding the index to the
target and the caller. A handle that is forged, from another caller or from a
key that changed is simply unknown: the request is pinned afresh. No store
round trip per request, and no record left behind by clients that never echo
the handle; only the key lives in the store, so every replica reads a handle
alike.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

from agentgw.auth.principal import Principal
from agentgw.sessions.store import KeyValues

KEY_NAME = "stateless-handle-key"
KEY_TTL = 10 * 365 * 24 * 3600.0
MAC_CHARS = 22  # 132 bits
MAX_INDEX_DIGITS = 4
KEY_REREAD_INTERVAL = 10.0  # seconds between store reads prompted by handles that do not verify


class StatelessHandles:
    def __init__(self, store: KeyValues) -> None:
        self._store = store
        self._key: bytes | None = None
        self._key_read_at = 0.0

    async def mint(self, target: str, backend_index: int, principal: Principal | None) -> str:
        return f"{backend_index}.{self._mac(await self._shared_key(), target, backend_index, principal)}"

    async def backend_index(self, handle: str, target: str, backends: int, principal: Principal | None) -> int | None:
        """The backend a handle pins to; None when it is not one this gateway gave this caller."""
        index_text, _, mac = handle.partition(".")
        if not (index_text.isascii() and index_text.isdigit() and len(index_text) <= MAX_INDEX_DIGITS):
            return None
        index = int(index_text)
        if index >= backends or not mac.isascii():
            return None
        if hmac.compare_digest(mac, self._mac(await self._shared_key(), target, index, principal)):
            return index
        # Another process may hold a newer key (the stored one lapsed or was lost): look again, now and then.
        if time.monotonic() - self._key_read_at < KEY_REREAD_INTERVAL:
            return None
        self._key = None
        return (
            index if hmac.compare_digest(mac, self._mac(await self._shared_key(), target, index, principal)) else None
        )

    @staticmethod
    def _mac(key: bytes, target: str, index: int, principal: Principal | None) -> str:
        caller = (principal.issuer, principal.subject) if principal is not None else ("", "")
        message = "\x00".join((target, str(index), *caller)).encode()
        digest = hmac.new(key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode()[:MAC_CHARS]

    async def _shared_key(self) -> bytes:
        """One key for every process sharing the store: the first to ask claims it."""
        if self._key is None:
            claimed = await self._store.claim_value(KEY_NAME, secrets.token_urlsafe(32), KEY_TTL)
            self._key, self._key_read_at = claimed.encode(), time.monotonic()
        return self._key
