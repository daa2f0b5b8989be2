"""Tool poisoning from the server side (contract 7): fingerprints, scanning, quarantine.

Every tool a backend lists is fingerprinted per target and kept in the session
store, so all replicas share one catalogue. A definition that differs from the
approved one (a rug pull), or whose text hides instructions, is quarantined
until an operator approves it. Each process keeps a copy of the catalogue,
refreshed in the background, so a tool call costs no extra store round trip.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass
from typing import Any

import jsonschema
from jsonschema.protocols import Validator

from agentgw.policy.model import PoisoningDetection
from agentgw.sessions.store import SessionStore

log = logging.getLogger("agentgw.poisoning")

_VALIDITY_CACHE_SIZE = 10_000

_MARKERS = [
    (re.compile(r"<\s*/?\s*important\s*>", re.IGNORECASE), "hidden-instruction marker <IMPORTANT>"),
    (
        re.compile(r"ignore\s+(all\s+)?(previous|prior|above)\s+instructions", re.IGNORECASE),
        "ignore previous instructions",
    ),
    (
        re.compile(r"do\s*n[o']t\s+(tell|inform|mention\s+(this\s+)?to)\s+the\s+user", re.IGNORECASE),
        "do not tell the user",
    ),
    (re.compile(r"~/\.ssh|\bid_(rsa|ed25519|ecdsa|dsa)\b", re.IGNORECASE), "reference to SSH keys"),
    (re.compile(r"(^|[\s/\\'\"`(])\.env\b", re.IGNORECASE), "reference to a .env file"),
    (re.compile(r"\bmcp\.json\b", re.IGNORECASE), "reference to mcp.json"),
]
_INVISIBLE = re.compile(
    "[\U000e0000-\U000e007f"  # tag block: ASCII smuggled out of sight
    "\u200b-\u200f\u2060-\u2064\ufeff\u00ad\u180e"  # zero-width and direction marks
    "\u202a-\u202e\u2066-\u2069\u061c]"  # bidi embeddings, overrides and isolates
)


def fingerprint(tool: dict[str, Any]) -> str:
    """Hash of what a model reads of a tool: name, description, inputSchema, annotations."""
    material = {k: tool.get(k) for k in ("name", "description", "inputSchema", "annotations")}
    canonical = json.dumps(material, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def scan(tool: dict[str, Any]) -> list[str]:
    """What in a tool's texts looks like an attack on the model; empty when nothing does."""
    findings: list[str] = []
    for text in _strings(tool):
        if _INVISIBLE.search(text) and "invisible Unicode characters" not in findings:
            findings.append("invisible Unicode characters")
        for pattern, finding in _MARKERS:
            if finding not in findings and pattern.search(text):
                findings.append(finding)
    return findings


def _strings(value: Any) -> list[str]:
    """Every string (keys included) of the description, title, schema and annotations."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [*_strings(k), *_strings(v)]]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


@dataclass
class ToolEntry:
    """What the gateway knows of one listed tool. Whether it is quarantined follows from these
    facts and the detection policy in force, so a policy change applies to tools already seen."""

    approved: str  # the fingerprint accepted: at first sight, or by an operator
    current: str  # the fingerprint last listed
    findings: list[str]  # what the scan found in the current definition, unless an operator approved it
    input_schema: dict[str, Any] | None

    def quarantine_reason(self, detection: PoisoningDetection) -> str | None:
        if not detection.enabled or detection.action != "quarantine":
            return None
        if self.current != self.approved:
            return "definition changed after first sight"
        if self.findings:
            return "suspicious: " + ", ".join(self.findings)
        return None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ToolEntry | None:
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError):
            return None  # written by another version: the tool is judged again when next listed


class ToolCatalogue:
    """The tools each target has listed, shared through the session store."""

    def __init__(self, store: SessionStore) -> None:
        self._store = store
        self._entries: dict[str, dict[str, ToolEntry]] = {}
        self._validators: dict[str, Validator] = {}
        # Validity is a pure function of (definition, arguments): agents repeat calls, so remember it.
        self._valid: dict[tuple[str, str], bool] = {}
        # Bumped by every local write, so a refresh that raced one does not undo it.
        self._writes = 0

    def entry(self, target: str, name: str) -> ToolEntry | None:
        return self._entries.get(target, {}).get(name)

    def entries(self, target: str) -> dict[str, ToolEntry]:
        return dict(self._entries.get(target, {}))

    async def refresh(self, target: str) -> None:
        writes = self._writes
        stored = await self._store.tool_entries(target)
        if writes != self._writes:
            return  # a newer local write may be missing from what was read: the next refresh catches up
        entries = {name: ToolEntry.from_json(text) for name, text in stored.items()}
        self._entries[target] = {name: entry for name, entry in entries.items() if entry is not None}

    async def observe(self, target: str, tools: list[dict[str, Any]]) -> None:
        """Record a listing: new tools are scanned, changed ones remembered as changed."""
        if any(tool.get("name") not in self._entries.get(target, {}) for tool in tools):
            # Another replica may have seen them already (and quarantined one): never judge
            # a tool as first seen before reading what the shared catalogue says of it.
            await self.refresh(target)
        known = self._entries.setdefault(target, {})
        changed: dict[str, ToolEntry] = {}
        for tool in tools:
            name = tool.get("name")
            if not isinstance(name, str):
                continue
            entry = _judge(target, tool, known.get(name))
            if entry is not None:
                known[name] = changed[name] = entry
        if changed:
            self._writes += 1
            await self._store.put_tool_entries(target, {name: e.to_json() for name, e in changed.items()})

    async def approve(self, target: str, name: str) -> ToolEntry | None:
        await self.refresh(target)
        entry = self.entry(target, name)
        if entry is None:
            return None
        approved = ToolEntry(entry.current, entry.current, [], entry.input_schema)
        self._entries[target][name] = approved
        self._writes += 1
        await self._store.put_tool_entries(target, {name: approved.to_json()})
        return approved

    def argument_errors(self, target: str, name: str, arguments: Any) -> list[str]:
        """JSON-Schema errors of a call's arguments, as `path: message`; empty when valid or unknown."""
        entry = self.entry(target, name)
        if entry is None or entry.input_schema is None:
            return []
        validator = self._validators.get(entry.current)
        if validator is None:
            try:
                cls = jsonschema.validators.validator_for(entry.input_schema)
                cls.check_schema(entry.input_schema)
                validator = self._validators[entry.current] = cls(entry.input_schema)
            except jsonschema.SchemaError:
                return []  # a schema the backend itself cannot mean; it validates its own input
        key = (entry.current, json.dumps(arguments, sort_keys=True, separators=(",", ":")))
        valid = self._valid.get(key)
        if valid is None:
            if len(self._valid) >= _VALIDITY_CACHE_SIZE:
                self._valid.clear()
            valid = self._valid[key] = validator.is_valid(arguments)
        if valid:
            return []
        errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
        return [f"/{'/'.join(str(p) for p in error.absolute_path)}: {error.message}" for error in errors[:5]]


def _judge(target: str, tool: dict[str, Any], entry: ToolEntry | None) -> ToolEntry | None:
    """The new entry for a listed tool, or None when its definition is the one already known."""
    current = fingerprint(tool)
    if entry is not None and entry.current == current:
        return None
    schema = tool.get("inputSchema") if isinstance(tool.get("inputSchema"), dict) else None
    findings = scan(tool)
    if findings:
        log.warning("tool %s of target %s: %s", tool["name"], target, ", ".join(findings))
    if entry is None:
        return ToolEntry(current, current, findings, schema)
    if current != entry.approved:
        log.warning("tool %s of target %s changed its definition after first sight", tool["name"], target)
    return ToolEntry(entry.approved, current, findings, schema)
