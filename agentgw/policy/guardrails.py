"""Guardrails on what servers send toward clients (contract 15): what a guard does with what it finds.

Secrets in results, errors, notifications, agent messages and model answers are redacted,
blocked or reported; server-to-client sampling and elicitation requests are put under policy.
What a secret looks like, the built-in detectors and what a scan costs: agentgw/policy/secrets.py.
"""

from __future__ import annotations

import itertools
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from agentgw.policy.model import GuardrailAction, GuardrailPolicy, Traffic
from agentgw.policy.secrets import BUILTIN_NAMES, TOO_DEEP, Detector, matcher_for

Action = Literal["redact", "block", "warn"]
TRAFFIC: tuple[Traffic, ...] = ("mcp", "a2a", "llm")
# How much of a text stream is held back so a secret split across chunks is still caught.
HOLDBACK = 256
# Deeper than any answer a real server sends; deeper values are blocked, not walked.
MAX_SCAN_DEPTH = 256
_STRICTNESS: dict[GuardrailAction, int] = {"off": 0, "warn": 1, "redact": 2, "block": 3}
# The detectors' lookbehinds reach this far back from where a match starts, and a match starts up to
# this far before its secret (an AWS secret key after its label): a stream keeps both of what it
# settled, and looks for matches starting in the second.
_LOOKBEHIND = 32
_LEAD = 32
_COMBINED_CACHE_SIZE = 4096


# -- what a scan finds ----------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One match; never the matched text, so it can be logged, audited and counted as it is."""

    detector: str
    action: Action


@dataclass(frozen=True)
class Scan:
    # The redacted copy; the very object scanned when nothing was replaced, so the caller can
    # relay the bytes it received.
    value: Any
    findings: list[Finding] = field(default_factory=list)
    blocked: Finding | None = None  # the first `block`: relay nothing of this value


class _TooDeep(Exception):
    pass


class Guard:
    """The guardrails for one kind of traffic to one target: every GuardrailPolicy that applies,
    combined. Per detector the strictest action wins (block > redact > warn > off), patterns
    are the union, sampling deny wins, elicitation deny and sensitiveFields block win."""

    def __init__(self, policies: tuple[GuardrailPolicy, ...]) -> None:
        specs = [policy.spec for policy in policies]
        self.policies = tuple(policy.metadata.name for policy in policies)
        secrets = _strictest(spec.secrets for spec in specs)
        patterns: dict[str, GuardrailAction] = {}
        regexes: dict[tuple[str, str], None] = {}  # an ordered set
        for spec in specs:
            for pattern in spec.patterns:
                patterns[pattern.name] = _strictest((patterns.get(pattern.name, "off"), pattern.action))
                regexes[(pattern.name, pattern.regex)] = None
        # Every detector and its effective action, built-ins first (for `policy explain`).
        self.actions: dict[str, GuardrailAction] = {name: secrets for name in BUILTIN_NAMES} | patterns
        self.sampling: Literal["allow", "deny"] = "deny" if any(s.sampling == "deny" for s in specs) else "allow"
        denied = any(spec.elicitation.action == "deny" for spec in specs)
        self.elicitation: Literal["allow", "deny"] = "deny" if denied else "allow"
        blocked = any(spec.elicitation.sensitive_fields == "block" for spec in specs)
        self.sensitive_fields: Literal["block", "allow"] = "block" if blocked else "allow"
        self._active: dict[str, Action] = {}
        for name, action in self.actions.items():
            if action != "off":
                self._active[name] = action
        self._markers = {name: f"[REDACTED:{name}]" for name in self._active}
        custom = tuple(key for key in regexes if key[0] in self._active)
        self._matcher = matcher_for(secrets != "off", custom) if secrets != "off" or custom else None

    def scan(self, value: Any) -> Scan:
        """Every string value of a JSON value, at any depth (keys are left alone): content text,
        structuredContent, _meta, error message and data, whatever the caller hands in.

        A redacted string stays a string, so structuredContent still fits an outputSchema
        property of type string; a `pattern`, `format` or `maxLength` there may no longer hold,
        and schemas are not checked here.
        """
        if self._matcher is None:
            return Scan(value)
        findings: list[Finding] = []
        try:
            scanned = self._walk(value, findings, 0)
        except _TooDeep:
            finding = Finding(TOO_DEEP, "block")
            return Scan(value, [*findings, finding], finding)
        blocked = next((finding for finding in findings if finding.action == "block"), None)
        return Scan(scanned, findings, blocked)

    def text_stream(self) -> TextStream:
        """A scanner for one streamed text (a chat answer's content deltas)."""
        return TextStream(self)

    def elicitation_refusal(self, params: Mapping[str, Any]) -> str | None:
        """Why an `elicitation/create` with these params must not reach the client; None: relay it.

        Refused with sensitiveFields block: a requested-schema property whose name or title
        says password, passphrase, secret, token (the word, not `tokens` or `tokenizer`),
        api key, private key, SSN, card number or CVV (and their close spellings), or whose
        format is password; a URL-mode elicitation whose URL is not https. Descriptions are
        not read: they explain, and may well mention a secret they do not ask for.
        """
        if self.elicitation == "deny":
            return "elicitation is denied"
        if self.sensitive_fields == "allow":
            return None
        if (params.get("mode") == "url" or "url" in params) and not _is_https(params.get("url")):
            return "URL-mode elicitation to a URL that is not https"
        return _sensitive_property(params.get("requestedSchema"), 0)

    def _walk(self, value: Any, findings: list[Finding], depth: int) -> Any:
        if isinstance(value, str):
            return self._text(value, findings)
        if depth >= MAX_SCAN_DEPTH and isinstance(value, (dict, list)):
            raise _TooDeep
        if isinstance(value, dict):
            copy = None
            for key, item in value.items():
                scanned = self._walk(item, findings, depth + 1)
                if scanned is not item:
                    copy = dict(value) if copy is None else copy
                    copy[key] = scanned
            return value if copy is None else copy
        if isinstance(value, list):
            items = None
            for index, item in enumerate(value):
                scanned = self._walk(item, findings, depth + 1)
                if scanned is not item:
                    items = list(value) if items is None else items
                    items[index] = scanned
            return value if items is None else items
        return value

    def _text(self, text: str, findings: list[Finding]) -> str:
        assert self._matcher is not None
        matcher = self._matcher.suspects(text)
        if matcher is None or matcher.regex.search(text) is None:  # the common case: nothing made
            return text
        pieces: list[str] = []
        done = 0
        for detector, start, end in matcher.hits(text):
            action = self._active[detector.name]
            findings.append(Finding(detector.name, action))
            if action != "warn":
                pieces += (text[done:start], self._markers[detector.name])
                done = end
        if not pieces:
            return text
        pieces.append(text[done:])
        return "".join(pieces)


def _strictest(actions: Iterable[GuardrailAction]) -> GuardrailAction:
    return max(actions, key=_STRICTNESS.__getitem__)


@dataclass(frozen=True, slots=True)
class Redaction:
    """Where a streamed text was replaced: from `start` to `end`, positions in all the text fed to
    its stream, by `marker` (empty: more of a secret whose marker an earlier Redaction placed)."""

    start: int
    end: int
    marker: str


class TextStream:
    """One streamed text, scanned as it arrives.

    `feed` returns what is safe to emit now, holding back at most HOLDBACK characters, so a
    secret split across chunks is still caught; `finish` returns the rest. A secret longer than
    the holdback (a private key block, a long JWT) is replaced by its marker as soon as it is
    recognised and the rest of it is dropped as it arrives (a custom pattern's match that long
    is replaced up to what has arrived, and what follows is scanned afresh). After a `block`,
    `blocked` is set, `feed` has returned the text before the secret, and nothing more is
    returned: the caller ends the stream with an error event. `findings` grows as text is
    emitted, for the caller's log lines, audit entries and metrics.

    A caller that relays the text in pieces of its own (the chunks of a chat answer) uses `add`
    and `decide` instead: the text before `decided` is settled, and `decide` says where in it
    the Redactions are, so each piece can go out as it came unless one touches it.
    """

    def __init__(self, guard: Guard) -> None:
        self._guard = guard
        self._context = ""  # the end of what was settled, for the lookbehinds and a secret's label
        self._held = ""  # what was fed after `decided`
        self._inside: Detector | None = None  # a redacted secret still arriving
        self.fed = 0  # characters fed in all
        self.decided = 0  # what comes later no longer changes what becomes of the text before
        self.findings: list[Finding] = []
        self.blocked: Finding | None = None

    def feed(self, text: str) -> str:
        self.add(text)
        return self._decide(self.fed - HOLDBACK)[0]

    def finish(self) -> str:
        return self._decide(None)[0]

    def add(self, text: str) -> None:
        """Take `text` in, settling nothing yet."""
        self._held += text
        self.fed += len(text)

    def decide(self, upto: int | None) -> list[Redaction]:
        """Settle the text before position `upto` (None: all of it, the stream ended), and past it
        where a secret crosses it or the rest of a long secret is dropped; the Redactions made."""
        return self._decide(upto)[1]

    def _decide(self, upto: int | None) -> tuple[str, list[Redaction]]:
        """What the text settled now becomes, and its Redactions."""
        matcher = self._guard._matcher
        text = self._held
        redactions: list[Redaction] = []
        if self.blocked is not None or matcher is None:
            self._held, self.decided = "", self.fed
            return ("" if self.blocked is not None else text), redactions
        if self._inside is not None:
            text = self._drop_rest_of_secret(self._inside, text, upto is None, redactions)
            if self._inside is not None:
                return "", redactions
        if upto is not None and upto <= self.decided:
            self._held = text
            return "", redactions
        buffer = self._context + text
        begin = len(self._context)
        origin = self.decided - begin  # where buffer[0] is in the stream
        cut = len(buffer) if upto is None else min(upto, self.fed) - origin
        pieces: list[str] = []
        done = begin
        # A match may begin before its secret (the label of an AWS secret key), so before `begin`.
        for detector, start, end in matcher.hits(buffer, max(0, begin - _LEAD)):
            if end <= begin:
                continue
            start = max(start, begin)
            if start >= cut:
                break
            action = self._guard._active[detector.name]
            finding = Finding(detector.name, action)
            self.findings.append(finding)
            if action == "block":
                self.blocked = finding
                self._held, self.decided = "", self.fed
                return "".join([*pieces, buffer[done:start]]), redactions
            cut = max(cut, end)
            if action == "warn":
                continue
            marker = self._guard._markers[detector.name]
            pieces += (buffer[done:start], marker)
            redactions.append(Redaction(origin + start, origin + end, marker))
            done = end
            if upto is not None and _may_go_on(detector, buffer, end):  # longer than the holdback, still arriving
                self._inside = detector if detector.rest is not None else None
                cut = end  # what follows, if anything, may be more of it
                break
        pieces.append(buffer[done:cut])
        self._held = buffer[cut:]
        self._context = buffer[max(0, cut - _LOOKBEHIND - _LEAD) : cut]
        self.decided = origin + cut
        return "".join(pieces), redactions

    def _drop_rest_of_secret(self, secret: Detector, text: str, final: bool, redactions: list[Redaction]) -> str:
        """What follows the rest of a secret redacted earlier; empty while it has not ended."""
        assert secret.rest is not None
        match = secret.rest.match(text)
        if match is not None and (match.end() < len(text) or final):
            self._inside = None
            self._context = ""
            self._drop(match.end(), redactions)
            return text[match.end() :]
        # Its last characters stay held while its end may still be arriving (an END line split).
        kept = 0 if final else min(len(text), secret.rest_tail)
        if final:
            self._inside = None
        self._drop(len(text) - kept, redactions)
        self._held = text[len(text) - kept :]
        return ""

    def _drop(self, count: int, redactions: list[Redaction]) -> None:
        if count:
            redactions.append(Redaction(self.decided, self.decided + count, ""))
            self.decided += count


def _may_go_on(secret: Detector, buffer: str, end: int) -> bool:
    """Whether a secret matched up to `end` may go on past the end of `buffer`: it reaches that end,
    or all that follows may be more of it (a JWT's `.` before its signature). Only a rest that is
    a run of characters says so; one looking for an end line (a private key's, with a tail) would
    find the next key's: such a match ends at its own end line or at the end of the buffer."""
    if end == len(buffer):
        return True
    return secret.rest is not None and not secret.rest_tail and secret.rest.fullmatch(buffer, end) is not None


# -- server-to-client requests --------------------------------------------------------

_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_SECRET_WORDS = frozenset(
    {"password", "passwords", "passwd", "pwd", "passphrase", "passcode", "secret", "secrets", "token",
     "apikey", "privatekey", "ssn", "cvv", "cvc"}
)  # fmt: skip
_SECRET_PAIRS = frozenset(
    {("api", "key"), ("private", "key"), ("card", "number"), ("credit", "card"), ("security", "code"),
     ("social", "security")}
)  # fmt: skip


def _asks_for_secret(text: str) -> bool:
    """By its words, however written: apiKey, API_KEY, api-key and "API key" all say api key."""
    words = [word.lower() for word in _WORD.findall(text)]
    return any(w in _SECRET_WORDS for w in words) or any(pair in _SECRET_PAIRS for pair in itertools.pairwise(words))


def _sensitive_property(schema: Any, depth: int) -> str | None:
    if not isinstance(schema, dict):
        return None
    if depth >= MAX_SCAN_DEPTH:
        return "requested schema nested too deeply to be checked"
    properties = schema.get("properties")
    for name, spec in properties.items() if isinstance(properties, dict) else ():
        title = spec.get("title") if isinstance(spec, dict) else None
        if _asks_for_secret(name) or (isinstance(title, str) and _asks_for_secret(title)):
            return f"property {name[:64]!r} asks for a secret"
        if isinstance(spec, dict) and spec.get("format") == "password":
            return f"property {name[:64]!r} has format password"
        nested = _sensitive_property(spec, depth + 1)
        if nested is not None:
            return nested
    return _sensitive_property(schema.get("items"), depth + 1)


def _is_https(url: Any) -> bool:
    if not isinstance(url, str):
        return False
    try:
        parts = urllib.parse.urlsplit(url)
        return parts.scheme.lower() == "https" and bool(parts.hostname)
    except ValueError:
        return False


# -- every guard of a policy set ------------------------------------------------------


class Guardrails:
    """The guards of one PolicySet, compiled when it is loaded: a lookup per request."""

    def __init__(self, policies: list[GuardrailPolicy]) -> None:
        self._policies = policies
        self._guards: dict[tuple[int, ...], Guard] = {}
        named = sorted({target for policy in policies for target in policy.spec.target_refs or ()})
        self._unnamed = {traffic: self._compose(traffic, ()) for traffic in TRAFFIC}
        self._named = {(traffic, target): self._compose(traffic, (target,)) for traffic in TRAFFIC for target in named}
        self._combined: dict[tuple[str, ...], Guard | None] = {}

    def guard(self, traffic: Traffic, target: str, *also: str) -> Guard | None:
        """The guard for `traffic` to `target`; None when no GuardrailPolicy applies (relay as is).

        `also`: other names the same traffic goes through (a virtual server and the member that
        answers): a policy naming any of them applies.
        """
        if not also:
            return self._named.get((traffic, target), self._unnamed[traffic])
        key = (traffic, target, *also)
        if key not in self._combined:
            if len(self._combined) >= _COMBINED_CACHE_SIZE:
                self._combined.clear()
            self._combined[key] = self._compose(traffic, (target, *also))
        return self._combined[key]

    def _compose(self, traffic: Traffic, targets: tuple[str, ...]) -> Guard | None:
        applying = tuple(
            index
            for index, policy in enumerate(self._policies)
            if (policy.spec.applies_to is None or traffic in policy.spec.applies_to)
            and (policy.spec.target_refs is None or any(t in policy.spec.target_refs for t in targets))
        )
        if not applying:
            return None
        if applying not in self._guards:
            self._guards[applying] = Guard(tuple(self._policies[index] for index in applying))
        return self._guards[applying]
