"""Guardrails on what servers send toward clients (contract 15).

Secrets in results, errors, notifications, agent messages and model answers are redacted,
blocked or reported; server-to-client sampling and elicitation requests are put under policy.

Built-in detectors; a name is the `<detector>` of `[REDACTED:<detector>]` and the `detector`
label of agentgw_guardrail_actions_total (a custom pattern's is its `name`):
- aws_access_key_id: AKIA or ASIA and 16 upper-case letters or digits.
- aws_secret_access_key: 40 base64 characters after an aws_secret_access_key-style label
  (`aws_secret_access_key = `, `"SecretAccessKey": "`, `AWS_SECRET_KEY=`); the label stays.
- github_token: ghp_, gho_, ghs_, ghu_, ghr_ and github_pat_ tokens.
- slack_token: xoxb-, xoxp-, xoxa-, xoxr-, xoxs- tokens.
- api_key: OpenAI/Anthropic-style keys, `sk-` and 20 or more key characters holding a digit
  (sk-ant-..., sk-proj-...), never inside a word (task-list, risk-free).
- private_key: from -----BEGIN ... PRIVATE KEY----- through its END line, or to the end of
  the text when no END line follows.
- jwt: an eyJ... header and an eyJ... payload, with or without a signature.
- payment_card: 13 to 19 digits starting with 2 to 6, plain or grouped by spaces or dashes,
  that pass the Luhn check.
- too_deep: no secret, a value nested deeper than MAX_SCAN_DEPTH, which cannot be scanned
  and is therefore blocked.

What it costs: every detector in force for a target is joined into one regex, compiled once per
distinct set of detectors (shared across targets and policy reloads), so a string is scanned
in one pass. Each detector is entered at a few characters of its own (the B of -----BEGIN,
the y of eyJ, the k of sk-, the 2 to 6 a card number starts with; a custom pattern at the
characters its parsed form can start with) and checks what precedes them by lookbehind. The
regex is one alternative per such character, so CPython's engine skips every other character
in a C loop and tries only that character's branches. On the 2-core development VM a 4 KiB
text without a secret costs 15 to 35 µs (prose, JSON-like text full of digits), where a plain
alternation of the same detectors costs 100 µs. A custom pattern that can start with any
character (`.`, a negated class) makes every character a candidate: about 200 µs. Custom
patterns are backtracking regexes: their cost on hostile input is their author's to bound.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import re
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from agentgw.policy.model import GuardrailAction, GuardrailPolicy, Traffic

Action = Literal["redact", "block", "warn"]
TRAFFIC: tuple[Traffic, ...] = ("mcp", "a2a", "llm")
# How much of a text stream is held back so a secret split across chunks is still caught.
HOLDBACK = 256
# Deeper than any answer a real server sends; deeper values are blocked, not walked.
MAX_SCAN_DEPTH = 256
TOO_DEEP = "too_deep"
_STRICTNESS: dict[GuardrailAction, int] = {"off": 0, "warn": 1, "redact": 2, "block": 3}
# Lookbehinds reach this far back; a stream keeps that much of what it emitted as their context.
_CONTEXT = 32
_COMBINED_CACHE_SIZE = 4096


@dataclass(frozen=True)
class _Detector:
    name: str
    # The characters a match is entered at (for a custom pattern, ranges and categories such as
    # \d too, written as class pieces); None: any character.
    anchors: frozenset[str] | None
    # Built-in: each way a match goes on after its anchor character; custom: the pattern itself.
    branches: tuple[str, ...]
    custom: bool = False
    lead: int = 0  # characters of the secret before the anchor
    secret_group: bool = False  # only the group named `secret` is the secret (a label before it stays)
    valid: Callable[[str], bool] | None = None
    # Streaming: how a secret that reached the end of what has arrived goes on, and how much
    # to keep while looking for its end. None: it cannot outgrow the holdback.
    rest: re.Pattern[str] | None = None
    rest_tail: int = 0


def _luhn(number: str) -> bool:
    digits = [int(char) for char in number if char.isdigit()]
    total = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


_LABEL_SEPARATOR = "[_ .-]"
# Lookbehinds must have a fixed width: one per spelling of the label, ending at its "key".
_AWS_SECRET_LABELS = "|".join(
    f"(?<=(?i:{first}{separator}{second}{other_separator}key))"
    for first, second in (("secret", "access"), ("aws", "secret"))
    for separator in (_LABEL_SEPARATOR, "")
    for other_separator in (_LABEL_SEPARATOR, "")
)
_PRIVATE_KEY_END = r"-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"

# Each branch starts with a literal or a small class: the regex engine tries a branch only when
# the character after the anchor fits it. The lookbehinds then check the anchor and what precedes.
BUILTIN_DETECTORS: tuple[_Detector, ...] = (
    _Detector(
        "private_key",
        frozenset("B"),
        (r"EGIN(?<=-----BEGIN)[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----[\s\S]*?(?:" + _PRIVATE_KEY_END + r"|\Z)",),
        lead=5,
        rest=re.compile(r"[\s\S]*?" + _PRIVATE_KEY_END),
        rest_tail=80,
    ),
    _Detector("aws_access_key_id", frozenset("A"), (r"[KS](?<=A[KS])(?<![A-Z0-9]A[KS])IA[A-Z0-9]{16}(?![A-Z0-9])",)),
    _Detector(
        "aws_secret_access_key",
        frozenset("kK"),
        (
            r"[eE][yY](?:" + _AWS_SECRET_LABELS + r")[\\\"']{0,3}\s*(?::|=>?)\s*[\\\"']{0,3}"
            r"(?P<secret>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])",
        ),
        secret_group=True,
    ),
    _Detector(
        "github_token",
        frozenset("g"),
        (
            r"h[pousr]_(?<=gh[pousr]_)(?<![A-Za-z0-9_]gh[pousr]_)[A-Za-z0-9]{36,}",
            r"ithub_pat_(?<=github_pat_)(?<![A-Za-z0-9_]github_pat_)[A-Za-z0-9_]{22,}",
        ),
        rest=re.compile(r"[A-Za-z0-9_]*"),
    ),
    _Detector(
        "slack_token",
        frozenset("x"),
        (r"ox[abprs]-(?<=xox[abprs]-)(?<![A-Za-z0-9]xox[abprs]-)[A-Za-z0-9-]{10,}",),
        rest=re.compile(r"[A-Za-z0-9-]*"),
    ),
    _Detector(
        "api_key",
        frozenset("k"),
        (r"-(?<=sk-)(?<![A-Za-z0-9_-]sk-)(?=[A-Za-z_-]*[0-9])[A-Za-z0-9_-]{20,}",),
        lead=1,
        rest=re.compile(r"[A-Za-z0-9_-]*"),
    ),
    _Detector(
        "jwt",
        frozenset("y"),
        (r"J(?<=eyJ)(?<![A-Za-z0-9_-]eyJ)[A-Za-z0-9_-]{12,}\.eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)?",),
        lead=1,
        rest=re.compile(r"[A-Za-z0-9_.-]*"),  # a run of one class: where it ends is known when it ends
    ),
    _Detector(
        "payment_card",
        frozenset("23456"),
        (
            r"[0-9](?<=[2-6][0-9])(?<![0-9]..)"
            r"(?:[0-9]{2}(?:[ -]?[0-9]{4}){2}[ -]?[0-9]{1,7}|[0-9]{2}[ -]?[0-9]{6}[ -]?[0-9]{4,5})(?![0-9])",
        ),
        valid=_luhn,
    ),
)
BUILTIN_NAMES = tuple(detector.name for detector in BUILTIN_DETECTORS)
RESERVED_DETECTOR_NAMES = frozenset({*BUILTIN_NAMES, TOO_DEEP})


# -- where a custom pattern can start -------------------------------------------------

try:  # CPython's own regex parser: private, but the only reader of a pattern's structure
    _parser: Any = importlib.import_module("re._parser")
    _sre: Any = importlib.import_module("re._constants")
except ImportError:  # another interpreter: custom patterns are entered at every character
    _parser = _sre = None

_CATEGORY_CLASSES = {
    "CATEGORY_DIGIT": r"\d",
    "CATEGORY_NOT_DIGIT": r"\D",
    "CATEGORY_SPACE": r"\s",
    "CATEGORY_NOT_SPACE": r"\S",
    "CATEGORY_WORD": r"\w",
    "CATEGORY_NOT_WORD": r"\W",
}
# Beside its two ASCII cases, what an ASCII letter matches case-insensitively (Unicode folding).
_UNICODE_FOLDS = {"i": "\u0130\u0131", "k": "\u212a", "s": "\u017f"}
# A range this small is listed character by character, so the scan can dispatch on each.
_SMALL_RANGE = 64


def _entry_pieces(regex: str) -> frozenset[str] | None:
    r"""Every character a match of `regex` can begin with: single characters, and class pieces
    (a range, \d) where listing them would not pay; None when that cannot be told."""
    if _parser is None:
        return None
    try:
        parsed = _parser.parse(regex)
        pieces, can_be_empty = _first_pieces(parsed.data, bool(parsed.state.flags & re.IGNORECASE))
    except Exception:  # a parse tree of another shape than expected: widen, never narrow
        return None
    return None if pieces is None or can_be_empty else frozenset(pieces)


def _first_pieces(items: Any, ignore_case: bool) -> tuple[set[str] | None, bool]:
    """(what `items` can start with, whether `items` can match the empty string)."""
    found: set[str] = set()
    for op, av in items:
        if op in (_sre.AT, _sre.ASSERT, _sre.ASSERT_NOT):
            continue  # zero-width: the next item holds the first character
        if op is _sre.LITERAL:
            pieces, empty = _literal(av, ignore_case), False
        elif op is _sre.IN:
            pieces, empty = _charset(av, ignore_case), False
        elif op is _sre.SUBPATTERN:
            _, added, removed, sub = av
            case = (ignore_case or bool(added & re.IGNORECASE)) and not removed & re.IGNORECASE
            pieces, empty = _first_pieces(sub.data, case)
        elif op is _sre.ATOMIC_GROUP:
            pieces, empty = _first_pieces(av.data, ignore_case)
        elif op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT):
            low, _, sub = av
            pieces, empty = _first_pieces(sub.data, ignore_case)
            empty = empty or low == 0
        elif op is _sre.BRANCH:
            branches = [_first_pieces(branch.data, ignore_case) for branch in av[1]]
            pieces = None if any(p is None for p, _ in branches) else set().union(*(p or () for p, _ in branches))
            empty = any(e for _, e in branches)
        else:  # any character, a negated literal, a group reference
            return None, False
        if pieces is None:
            return None, False
        found |= pieces
        if not empty:
            return found, False
    return found, True


def _literal(code: int, ignore_case: bool) -> set[str] | None:
    char = chr(code)
    if not ignore_case or char.lower() == char.upper():
        return {char}
    if not char.isascii():
        return None
    lower = char.lower()
    return set(lower + char.upper() + _UNICODE_FOLDS.get(lower, ""))


def _charset(items: Any, ignore_case: bool) -> set[str] | None:
    found: set[str] = set()
    for op, av in items:
        if op is _sre.LITERAL or (op is _sre.RANGE and av[1] - av[0] < _SMALL_RANGE):
            codes = [av] if op is _sre.LITERAL else range(av[0], av[1] + 1)
            for code in codes:
                chars = _literal(code, ignore_case)
                if chars is None:
                    return None
                found |= chars
        elif op is _sre.RANGE and not ignore_case:
            found.add(f"{_class_char(av[0])}-{_class_char(av[1])}")
        elif op is _sre.CATEGORY:
            found.add(_CATEGORY_CLASSES[av.name])
        else:  # a negated class, a wide case-insensitive range
            return None
    return found


def _class_char(code: int) -> str:
    return f"\\U{code:08x}"


# -- one regex for a set of detectors -------------------------------------------------

# Above this many branches, entering each at its own character costs more than it saves.
_MAX_DISPATCHED_BRANCHES = 256


class _Matcher:
    """Every detector of a guard in one regex, each branch entered at its anchor characters."""

    def __init__(self, detectors: tuple[_Detector, ...]) -> None:
        self._instances: list[tuple[str, _Detector, str | None]] = []
        self.regex = re.compile(self._pattern(detectors))
        groups = self.regex.groupindex
        # By the group that closes last in each branch (Match.lastindex): its detector, and the
        # group whose span is the secret (None: the match, and `lead` characters before it).
        self._branches: dict[int, tuple[_Detector, int | None]] = {}
        for marker, detector, secret in self._instances:
            span = groups[marker] if detector.custom else groups[secret] if secret else None
            self._branches[groups[marker]] = (detector, span)

    def _pattern(self, detectors: tuple[_Detector, ...]) -> str:
        """With only single anchor characters: one alternative per character, starting with it, so
        the engine skips to the next anchor in C and tries only that character's branches.
        Otherwise one class of every anchor, then every branch."""
        anchored = all(detector.anchors is not None for detector in detectors)
        pieces = frozenset().union(*(detector.anchors or () for detector in detectors))
        branches = sum(len(detector.anchors or ()) * len(detector.branches) for detector in detectors)
        if anchored and all(len(piece) == 1 for piece in pieces) and branches <= _MAX_DISPATCHED_BRANCHES:
            return "|".join(
                _class_char(ord(char))
                + "(?:"
                + "|".join(self._branch(d, b) for d in detectors if char in (d.anchors or ()) for b in d.branches)
                + ")"
                for char in sorted(pieces)
            )
        entry = "[" + "".join(_class_char(ord(p)) if len(p) == 1 else p for p in sorted(pieces)) + "]"
        every = "|".join(self._branch(detector, branch) for detector in detectors for branch in detector.branches)
        return (entry if anchored else r"[\s\S]") + f"(?:{every})"

    def _branch(self, detector: _Detector, branch: str) -> str:
        tag = len(self._instances)
        marker = f"m{tag}"
        secret = f"s{tag}" if detector.secret_group else None
        self._instances.append((marker, detector, secret))
        if detector.custom:
            # Entered one character late (the anchor was consumed): the lookbehind steps back and
            # the lookahead matches the whole pattern from there, in the marker group.
            return rf"(?<=(?=(?P<{marker}>{branch}))[\s\S])"
        return branch.replace("(?P<secret>", f"(?P<{secret}>") + f"(?P<{marker}>)"  # the marker closes last

    def hits(self, text: str, pos: int = 0) -> Iterator[tuple[_Detector, int, int]]:
        """(detector, start, end) of each secret from `pos` on, in order, never overlapping."""
        floor = pos
        search = self.regex.search
        while (match := search(text, pos)) is not None:
            detector, group = self._branches[match.lastindex or 0]
            if group is None:
                start, end = match.start() - detector.lead, match.end()
            else:
                start, end = match.span(group)
            pos = match.start() + 1
            if end <= start or (detector.valid is not None and not detector.valid(text[start:end])):
                continue
            yield detector, max(start, floor), end
            floor = pos = max(end, pos)


@functools.lru_cache(maxsize=64)
def _matcher(builtins: bool, custom: tuple[tuple[str, str], ...]) -> _Matcher:
    detectors = [*(BUILTIN_DETECTORS if builtins else ())]
    detectors += [_Detector(name, _entry_pieces(regex), (regex,), custom=True) for name, regex in custom]
    return _Matcher(tuple(detectors))


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
        self._matcher = _matcher(secrets != "off", custom) if secrets != "off" or custom else None

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
        if self._matcher.regex.search(text) is None:  # the common case: one pass, nothing made
            return text
        pieces: list[str] = []
        done = 0
        for detector, start, end in self._matcher.hits(text):
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
    """

    def __init__(self, guard: Guard) -> None:
        self._guard = guard
        self._context = ""  # the end of what was emitted, for the lookbehinds
        self._held = ""
        self._inside: _Detector | None = None  # a redacted secret still arriving
        self.findings: list[Finding] = []
        self.blocked: Finding | None = None

    def feed(self, text: str) -> str:
        return self._advance(self._held + text, final=False)

    def finish(self) -> str:
        return self._advance(self._held, final=True)

    def _advance(self, text: str, final: bool) -> str:
        matcher = self._guard._matcher
        if self.blocked is not None or matcher is None:
            self._held = ""
            return "" if self.blocked is not None else text
        if self._inside is not None:
            text = self._drop_rest_of_secret(self._inside, text, final)
            if self._inside is not None:
                return ""
        if not final and len(text) <= HOLDBACK:
            self._held = text
            return ""
        buffer = self._context + text
        begin = len(self._context)
        cut = len(buffer) if final else len(buffer) - HOLDBACK
        pieces: list[str] = []
        done = begin
        for detector, start, end in matcher.hits(buffer, begin):
            if start >= cut:
                break
            action = self._guard._active[detector.name]
            finding = Finding(detector.name, action)
            self.findings.append(finding)
            if action == "block":
                self.blocked = finding
                self._held = ""
                return "".join([*pieces, buffer[done:start]])
            cut = max(cut, end)
            if action == "warn":
                continue
            pieces += (buffer[done:start], self._guard._markers[detector.name])
            done = end
            if end == len(buffer) and not final:  # longer than the holdback and still arriving
                self._inside = detector if detector.rest is not None else None
                break
        pieces.append(buffer[done:cut])
        self._held = buffer[cut:]
        self._context = buffer[max(0, cut - _CONTEXT) : cut]
        return "".join(pieces)

    def _drop_rest_of_secret(self, secret: _Detector, text: str, final: bool) -> str:
        """What follows the rest of a secret redacted earlier; empty while it has not ended."""
        assert secret.rest is not None
        match = secret.rest.match(text)
        if match is not None and (match.end() < len(text) or final):
            self._inside = None
            self._context = ""
            return text[match.end() :]
        self._held = "" if final else text[len(text) - secret.rest_tail :] if secret.rest_tail else ""
        if final:
            self._inside = None
        return ""


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
