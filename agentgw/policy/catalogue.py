"""The tool catalogue of each target (contract 7 and 11), shared through the session store.

Every tool a backend lists is fingerprinted and judged by `poisoning.py`; this
module keeps the resulting entries per target in the session store, so all
replicas share one catalogue and a quarantine decided by one holds on all. Each
process keeps a copy of the catalogue and re-reads a target only when the store
announces that another process changed it, so a tool call costs a dict lookup
and an idle gateway costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Collection
from dataclasses import replace
from typing import Any

import jsonschema
from jsonschema.protocols import Validator

from agentgw.errors import StoreUnavailable
from agentgw.observability.refusals import Refusals
from agentgw.policy.poisoning import FINGERPRINT_RULE, ToolEntry, definition_digest, fingerprint, judged
from agentgw.sessions.store import CatalogueStore

# The logger the catalogue always used: operators' log filters name it.
log = logging.getLogger("agentgw.poisoning")

DEFAULT_MAX_TOOLS = 1000
_VALIDITY_CACHE_SIZE = 10_000
# The validity cache's key for a call's arguments; made once (json.dumps builds an encoder per call).
_ARGUMENTS_KEY = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
# Wait between attempts to re-read a catalogue the store announced as changed.
_REREAD_DELAY = 1.0


class ToolCatalogue:
    """The tools each target has listed, shared through the session store.

    A target's catalogue holds at most `max_tools` tools of the backend's listings plus
    the records of quarantined tools (at most as many again); lookups never add to it.
    """

    def __init__(self, store: CatalogueStore, refusals: Refusals) -> None:
        self._store = store
        self._refusals = refusals
        self._entries: dict[str, dict[str, ToolEntry]] = {}
        self._versions: dict[str, int] = {}
        # Reads and writes of one target take turns, so what is read never undoes what was written.
        self._locks: dict[str, asyncio.Lock] = {}
        # name -> (digest of the definition's plain JSON, its fingerprint): RFC 8785 in pure
        # Python costs ~65 µs a tool, the C JSON encoder ~10, and a relisting is mostly unchanged.
        self._known: dict[str, dict[str, tuple[bytes, str]]] = {}
        # Names left out of the last listings for want of room: logged once, and never a reason
        # to re-read the store.
        self._refused: dict[str, set[str]] = {}
        self._validators: dict[str, Validator] = {}
        # Validity is a pure function of (definition, arguments): agents repeat calls, so remember it.
        self._valid: dict[tuple[str, str], bool] = {}

    def entry(self, target: str, name: str) -> ToolEntry | None:
        return self._entries.get(target, {}).get(name)

    def entries(self, target: str) -> dict[str, ToolEntry]:
        return dict(self._entries.get(target, {}))

    async def refresh(self, target: str) -> None:
        """Read the target's whole catalogue from the store."""
        async with self._lock(target):
            await self._load(target)

    async def follow(self, targets: list[str]) -> None:
        """Re-read a target whenever the store announces a version this process does not hold.

        Returns at once for a store no other process writes; otherwise runs until cancelled.
        """
        async with contextlib.aclosing(self._store.catalogue_changes(targets)) as changes:
            async for target, version in changes:
                if version != self._versions.get(target, 0):  # else this process's own write, or nothing new
                    await self._reread(target)

    async def _reread(self, target: str) -> None:
        """Refresh a target, trying again until the store answers: no other notice may come."""
        while True:
            try:
                await self.refresh(target)
                return
            except StoreUnavailable:
                log.warning("catalogue of target %s not re-read: session store unavailable", target)
            except Exception:
                log.exception("catalogue of target %s not re-read", target)  # a bug: retrying cannot help
                return
            await asyncio.sleep(_REREAD_DELAY)

    async def observe(
        self, target: str, tools: list[dict[str, Any]], max_tools: int = DEFAULT_MAX_TOOLS, complete: bool = False
    ) -> list[dict[str, Any]]:
        """Record a listing: new and changed definitions are scanned, changes remembered.

        Returns the definitions recorded, in listing order: a name listed twice counts once
        (its first definition), and tools beyond `max_tools` are left out (logged, counted).
        When `complete` (every page of a listing), tools no longer listed are forgotten when
        their room is needed by a new tool (the earliest first), never before,
        unless quarantined: hiding a tool and listing it again never clears a quarantine.
        """
        async with self._lock(target):
            refused = self._refused.setdefault(target, set())
            known = self._entries.get(target, {})
            if target not in self._versions or any(
                isinstance(t.get("name"), str) and t["name"] not in known and t["name"] not in refused for t in tools
            ):
                # Another replica may have seen them already (and quarantined one): never judge
                # a tool as first seen before reading what the shared catalogue says of it.
                await self._load(target)
            return await self._record(target, tools, max_tools, complete)

    async def _record(
        self, target: str, tools: list[dict[str, Any]], max_tools: int, complete: bool
    ) -> list[dict[str, Any]]:
        entries = dict(self._entries.get(target, {}))
        listed = {t["name"] for t in tools if isinstance(t.get("name"), str)}
        # A tool no longer listed keeps its record until its room is needed: forgetting it at once
        # would let a backend hide a tool, change it and list it again as new (a rug pull unseen).
        delisted = [n for n, e in entries.items() if complete and n not in listed and not e.flagged]
        removed: list[str] = []
        room = _Room(max_tools, entries.values())
        recorded: list[dict[str, Any]] = []
        refused: list[str] = []
        changed: dict[str, ToolEntry] = {}
        seen: set[str] = set()
        for tool in tools:
            name = tool.get("name")
            if not isinstance(name, str) or name in seen:
                continue
            seen.add(name)
            old = entries.get(name)
            new = self._judge(target, name, tool, old)
            taken = room.take(old, new)
            if not taken and old is None and not new.flagged and delisted:
                gone = delisted.pop(0)  # the earliest recorded first
                del entries[gone]
                removed.append(gone)
                room.release()
                taken = room.take(old, new)
            if not taken:
                refused.append(name)
                self._known[target].pop(name, None)
                continue
            recorded.append(tool)
            if new != old:
                entries[name] = changed[name] = new
        self._note_refused(target, refused, max_tools, complete)
        if changed or removed:
            await self._write(target, entries, changed, removed)
        return recorded

    def _note_refused(self, target: str, refused: list[str], max_tools: int, complete: bool) -> None:
        already = self._refused[target]
        for name in refused:
            if name not in already:
                self._refusals.record(target, "too_many_tools", name)
        if complete or len(already) + len(refused) > 2 * max_tools:
            already.clear()
        already.update(refused)

    async def approve(self, target: str, name: str) -> ToolEntry | None:
        async with self._lock(target):
            await self._load(target)
            entry = self.entry(target, name)
            if entry is None:
                return None
            # An entry of an older rule keeps it: its next listing re-baselines it as approved.
            approved = replace(entry, approved=entry.current, findings=[])
            await self._write(target, {**self._entries[target], name: approved}, {name: approved}, [])
            return approved

    def argument_errors(self, entry: ToolEntry, arguments: Any) -> list[str]:
        """JSON-Schema errors of a call's arguments against the entry's inputSchema, as `path: message`;
        empty when valid or when the entry has no schema."""
        if entry.input_schema is None:
            return []
        validator = self._validators.get(entry.current)
        if validator is None:
            try:
                cls = jsonschema.validators.validator_for(entry.input_schema)
                cls.check_schema(entry.input_schema)
                validator = self._validators[entry.current] = cls(entry.input_schema)
            except jsonschema.SchemaError:
                return []  # a schema the backend itself cannot mean; it validates its own input
        key = (entry.current, _ARGUMENTS_KEY.encode(arguments))
        valid = self._valid.get(key)
        if valid is None:
            if len(self._valid) >= _VALIDITY_CACHE_SIZE:
                self._valid.clear()
            valid = self._valid[key] = validator.is_valid(arguments)
        if valid:
            return []
        errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
        return [f"/{'/'.join(str(p) for p in error.absolute_path)}: {error.message}" for error in errors[:5]]

    def _lock(self, target: str) -> asyncio.Lock:
        lock = self._locks.get(target)
        if lock is None:
            lock = self._locks[target] = asyncio.Lock()
        return lock

    async def _load(self, target: str) -> None:
        version, stored = await self._store.tool_entries(target)
        entries = {name: ToolEntry.from_json(text) for name, text in stored.items()}
        self._entries[target] = {name: entry for name, entry in entries.items() if entry is not None}
        self._versions[target] = version
        known = self._known.get(target, {})
        self._known[target] = {name: v for name, v in known.items() if name in self._entries[target]}

    async def _write(
        self, target: str, entries: dict[str, ToolEntry], changed: dict[str, ToolEntry], removed: Collection[str]
    ) -> None:
        written = {name: entry.to_json() for name, entry in changed.items()}
        version = await self._store.put_tool_entries(target, written, removed)
        if version == self._versions.get(target, 0) + 1:
            self._entries[target] = entries
            self._versions[target] = version
        else:
            await self._load(target)  # another process wrote in between: take the store's word
        for name in removed:
            self._known.get(target, {}).pop(name, None)

    def _judge(self, target: str, name: str, tool: dict[str, Any], old: ToolEntry | None) -> ToolEntry:
        """The entry for a listed definition; `old` itself when nothing about it changed."""
        digest = definition_digest(tool)
        known = self._known.setdefault(target, {})
        cached = known.get(name)
        if old is not None and old.rule == FINGERPRINT_RULE and cached == (digest, old.current):
            return old
        current = fingerprint(tool)
        if old is not None and old.rule == FINGERPRINT_RULE and old.current == current:
            known[name] = (digest, current)
            return old
        new = judged(target, name, tool, current, old)
        known[name] = (digest, current)
        return new


class _Room:
    """Who may join a target's catalogue: at most `max_tools` unflagged entries, as many flagged."""

    def __init__(self, max_tools: int, entries: Collection[ToolEntry]) -> None:
        self._max = max_tools
        self._total = len(entries)
        self._flagged = sum(1 for e in entries if e.flagged)

    def release(self) -> None:
        """An unflagged entry left."""
        self._total -= 1

    def take(self, old: ToolEntry | None, new: ToolEntry) -> bool:
        if old is not None:
            self._flagged += int(new.flagged) - int(old.flagged)
            return True  # already counted: a change never needs room
        if self._total >= 2 * self._max:
            return False
        if new.flagged and self._flagged >= self._max:
            return False
        if not new.flagged and self._total - self._flagged >= self._max:
            return False
        self._total += 1
        self._flagged += int(new.flagged)
        return True
