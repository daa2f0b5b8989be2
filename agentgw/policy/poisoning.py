"""Tool poisoning from the server side (contract 7 and 11): fingerprints, scanning, quarantine.

A definition that differs from the approved one (a rug pull), or whose text hides
instructions, is quarantined until an operator approves it. This module decides
that for one definition; `catalogue.py` keeps the decisions per target, shared
through the session store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import rfc8785

from agentgw.policy.model import PoisoningDetection

log = logging.getLogger("agentgw.poisoning")

# How fingerprints are made. 1: SHA-256 of sorted-key JSON of name, description, inputSchema
# and annotations (entries written then carry no `rule`). 2: SHA-256 of the RFC 8785 canonical
# JSON of the whole definition. An entry of an older rule is re-baselined when next listed.
FINGERPRINT_RULE = 2
_LEGACY_RULE = 1
# Prefixed to what RFC 8785 cannot encode, so such a hash never equals a canonical one.
_FALLBACK_TAG = b"agentgw-noncanonical\x00"

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
    """SHA-256 of the RFC 8785 canonical JSON of the whole definition, every field included.

    A definition RFC 8785 cannot encode (a number outside its range, a lone surrogate, absurd
    depth) still gets a stable fingerprint, from a deterministic encoding of its own.
    """
    # rfc8785 recurses: a definition too deep for it would exhaust the stack (and leave its
    # unwinding to the garbage collector), so absurd depth goes straight to the fallback.
    if _deeper_than(tool, MAX_CANONICAL_DEPTH):
        return hashlib.sha256(_FALLBACK_TAG + _plain_json(tool)).hexdigest()
    try:
        material = rfc8785.dumps(tool)
    except (rfc8785.CanonicalizationError, RecursionError):
        material = _FALLBACK_TAG + _plain_json(tool)
    return hashlib.sha256(material).hexdigest()


MAX_CANONICAL_DEPTH = 200


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` nests objects and arrays deeper than `limit`; walked without recursion."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def legacy_fingerprint(tool: dict[str, Any]) -> str:
    """The fingerprint of rule 1, only to recognise entries recorded before the upgrade."""
    material = {k: tool.get(k) for k in ("name", "description", "inputSchema", "annotations")}
    return hashlib.sha256(_plain_json(material)).hexdigest()


def _plain_json(value: Any) -> bytes:
    try:
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    except (ValueError, TypeError, RecursionError):
        text = _walked_json(value)
    return text.encode("utf-8", "surrogatepass")


class _Raw(str):
    """Text already encoded."""


def _walked_json(value: Any) -> str:
    """Sorted-key JSON without recursion, for what nests deeper than the C encoder goes."""
    out: list[str] = []
    pending: list[Any] = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, _Raw):
            out.append(item)
        elif isinstance(item, dict):
            parts: list[Any] = [_Raw("{")]
            for i, key in enumerate(sorted(item, key=str)):
                parts += [_Raw(","), _Raw(json.dumps(str(key), ensure_ascii=False)), _Raw(":"), item[key]][i == 0 :]
            pending.extend(reversed([*parts, _Raw("}")]))
        elif isinstance(item, list | tuple):
            parts = [_Raw("[")]
            for i, inner in enumerate(item):
                parts += [_Raw(","), inner][i == 0 :]
            pending.extend(reversed([*parts, _Raw("]")]))
        else:
            try:
                out.append(json.dumps(item, ensure_ascii=False))
            except TypeError:
                out.append(repr(item))
    return "".join(out)


def scan(value: Any) -> list[str]:
    """What in any JSON value's strings (keys included, at any depth) looks like an attack on
    the model reading it; empty when nothing does. Used for tool definitions, initialize
    instructions, prompts and resources alike."""
    findings: list[str] = []
    for text in _strings(value):
        if _INVISIBLE.search(text) and "invisible Unicode characters" not in findings:
            findings.append("invisible Unicode characters")
        for pattern, finding in _MARKERS:
            if finding not in findings and pattern.search(text):
                findings.append(finding)
    return findings


def _strings(value: Any) -> Iterator[str]:
    """Every string of a JSON value, keys included; iterative, so no depth can exhaust the stack."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            for key, inner in item.items():
                pending.append(key)
                pending.append(inner)
        elif isinstance(item, list | tuple):
            pending.extend(item)


@dataclass
class ToolEntry:
    """What the gateway knows of one listed tool. Whether it is quarantined follows from these
    facts and the detection policy in force, so a policy change applies to tools already seen."""

    approved: str  # the fingerprint accepted: at first sight, or by an operator
    current: str  # the fingerprint last listed
    findings: list[str]  # what the scan found in the current definition, unless an operator approved it
    input_schema: dict[str, Any] | None
    rule: int = FINGERPRINT_RULE  # how `approved` and `current` were made

    @property
    def flagged(self) -> bool:
        """Quarantined under `action: quarantine`: such a record outlives its tool's absence."""
        return self.current != self.approved or bool(self.findings)

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
        """The entry, whatever version wrote it (fields it does not know are ignored); None when
        it holds no fingerprints, and the tool is then judged again when next listed."""
        try:
            data = json.loads(text)
        except ValueError:
            log.warning("a catalogue entry in the store is not JSON; its tool is judged again when next listed")
            return None
        if not isinstance(data, dict):
            return None
        approved, current = data.get("approved"), data.get("current")
        findings, schema = data.get("findings") or [], data.get("input_schema")
        rule = data.get("rule", _LEGACY_RULE)
        if not isinstance(approved, str) or not isinstance(current, str) or not isinstance(findings, list):
            return None
        if not isinstance(rule, int) or isinstance(rule, bool):
            return None
        return cls(approved, current, [str(f) for f in findings], schema if isinstance(schema, dict) else None, rule)


def definition_digest(tool: dict[str, Any]) -> bytes:
    """A cheap identity of a definition, to tell an unchanged relisting without fingerprinting it."""
    return hashlib.blake2b(_plain_json(tool), digest_size=16).digest()


def judged(target: str, name: str, tool: dict[str, Any], current: str, old: ToolEntry | None) -> ToolEntry:
    """The entry for a definition whose fingerprint is new to the catalogue: scanned whole."""
    schema = tool.get("inputSchema") if isinstance(tool.get("inputSchema"), dict) else None
    findings = scan(tool)
    if findings:
        log.warning("tool %s of target %s: %s", name, target, ", ".join(findings))
    if old is None:
        return ToolEntry(current, current, findings, schema)
    if old.rule != FINGERPRINT_RULE:
        return _rebaselined(target, name, tool, current, old, findings, schema)
    if current != old.approved:
        log.warning("tool %s of target %s changed its definition after first sight", name, target)
    return ToolEntry(old.approved, current, findings, schema)


def _rebaselined(
    target: str,
    name: str,
    tool: dict[str, Any],
    current: str,
    old: ToolEntry,
    findings: list[str],
    schema: dict[str, Any] | None,
) -> ToolEntry:
    """An entry of the older rule, judged under this one: accepted as it stands when it was
    approved and the definition is still the one approved; quarantined otherwise."""
    if old.approved == old.current == legacy_fingerprint(tool):
        log.info("tool %s of target %s: fingerprint re-baselined under rule %d", name, target, FINGERPRINT_RULE)
        return ToolEntry(current, current, findings, schema)
    # Its old approved fingerprint can never equal a new one: quarantined until an operator approves.
    log.warning("tool %s of target %s: quarantined under the older fingerprint rule, stays quarantined", name, target)
    return ToolEntry(old.approved, current, findings, schema)
