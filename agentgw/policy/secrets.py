"""What a secret looks like, and finding them in one pass (contract 15).

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
- too_deep: no secret, a value nested deeper than guardrails.MAX_SCAN_DEPTH, which cannot
  be scanned and is therefore blocked.

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

Most of that is the engine's test of every character against the class of anchors (about 4 ns a
character), where C's memchr finds one character in 4 KiB in 40 ns and a regex led by a literal
passes 4 KiB in about 1 µs. So a whole string (Matcher.suspects) is first searched for each
detector's Clue, something every match of it holds, and only the detectors whose clue is there
are matched, by a matcher of their own. Guard.scan of the benchmark's 4 KiB text without a
secret (benchmarks/fast_backend.py, built-ins and a custom pattern) fell from 21 µs to 10 µs:
five passes of about 1.3 µs (fold, card digits, secret...key, sk-, xox) and the walk. A text
holding a clue but no secret pays both: a 13-digit number sends it to the card detector, 27 µs.
"""

from __future__ import annotations

import functools
import importlib
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("agentgw.policy.secrets")

TOO_DEEP = "too_deep"


@dataclass(frozen=True)
class Clue:
    """Something every match of a detector holds: each of `chars` (one memchr each, so a clue
    whose rare character is missing costs next to nothing), then `pattern`, led by a literal, in
    the text, or when `folded` in fold(text)."""

    pattern: re.Pattern[str]
    chars: str = ""
    folded: bool = False


_FOLD = bytes.maketrans(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"0" * 10 + b"abcdefghijklmnopqrstuvwxyz")


def fold(text: str) -> str:
    """`text` with ASCII letters lower-cased and ASCII digits made 0, one character per UTF-8 byte:
    what a card number or a case-insensitive label holds stays a substring, in one C pass."""
    return text.encode("utf-8", "surrogatepass").translate(_FOLD).decode("latin-1")


@dataclass(frozen=True)
class Detector:
    """How one kind of secret is recognised: a built-in detector or a custom pattern."""

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
    clue: Clue | None = None  # None: any text may hold a match


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
BUILTIN_DETECTORS: tuple[Detector, ...] = (
    Detector(
        "private_key",
        frozenset("B"),
        (r"EGIN(?<=-----BEGIN)[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----[\s\S]*?(?:" + _PRIVATE_KEY_END + r"|\Z)",),
        lead=5,
        rest=re.compile(r"[\s\S]*?" + _PRIVATE_KEY_END),
        rest_tail=80,
        clue=Clue(re.compile("-----BEGIN"), "GB"),
    ),
    Detector(
        "aws_access_key_id",
        frozenset("A"),
        (r"[KS](?<=A[KS])(?<![A-Z0-9]A[KS])IA[A-Z0-9]{16}(?![A-Z0-9])",),
        clue=Clue(re.compile("A[KS]IA"), "I"),
    ),
    Detector(
        "aws_secret_access_key",
        frozenset("kK"),
        (
            r"[eE][yY](?:" + _AWS_SECRET_LABELS + r")[\\\"']{0,3}\s*(?::|=>?)\s*[\\\"']{0,3}"
            r"(?P<secret>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])",
        ),
        secret_group=True,
        # Every label says secret and ends in the key the match is entered at; in between, at most
        # a separator, "access" (an s may be \u017f, which (?i) takes for one: 2 bytes) and a separator.
        clue=Clue(re.compile(r"cret[\s\S]{0,10}key"), folded=True),
    ),
    Detector(
        "github_token",
        frozenset("g"),
        (
            r"h[pousr]_(?<=gh[pousr]_)(?<![A-Za-z0-9_]gh[pousr]_)[A-Za-z0-9]{36,}",
            r"ithub_pat_(?<=github_pat_)(?<![A-Za-z0-9_]github_pat_)[A-Za-z0-9_]{22,}",
        ),
        rest=re.compile(r"[A-Za-z0-9_]*"),
        clue=Clue(re.compile("gh[pousr]_|github_pat_"), "_"),
    ),
    Detector(
        "slack_token",
        frozenset("x"),
        (r"ox[abprs]-(?<=xox[abprs]-)(?<![A-Za-z0-9]xox[abprs]-)[A-Za-z0-9-]{10,}",),
        rest=re.compile(r"[A-Za-z0-9-]*"),
        clue=Clue(re.compile("xox[abprs]-"), "x-"),
    ),
    Detector(
        "api_key",
        frozenset("k"),
        (r"-(?<=sk-)(?<![A-Za-z0-9_-]sk-)(?=[A-Za-z_-]*[0-9])[A-Za-z0-9_-]{20,}",),
        lead=1,
        rest=re.compile(r"[A-Za-z0-9_-]*"),
        clue=Clue(re.compile("sk-"), "-"),
    ),
    Detector(
        "jwt",
        frozenset("y"),
        (r"J(?<=eyJ)(?<![A-Za-z0-9_-]eyJ)[A-Za-z0-9_-]{12,}\.eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)?",),
        lead=1,
        rest=re.compile(r"[A-Za-z0-9_.-]*"),  # a run of one class: where it ends is known when it ends
        clue=Clue(re.compile(r"\.eyJ"), "J"),
    ),
    Detector(
        "payment_card",
        frozenset("23456"),
        (
            r"[0-9](?<=[2-6][0-9])(?<![0-9]..)"
            r"(?:[0-9]{2}(?:[ -]?[0-9]{4}){2}[ -]?[0-9]{1,7}|[0-9]{2}[ -]?[0-9]{6}[ -]?[0-9]{4,5})(?![0-9])",
        ),
        valid=_luhn,
        clue=Clue(re.compile("0000[ -]?0000"), "0", folded=True),  # its first eight digits
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
        log.warning(
            "a custom pattern's first characters could not be read; it is tried at every character", exc_info=True
        )
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


def _custom_clue(regex: str) -> Clue | None:
    """The longest run of literal characters every match of `regex` holds, as its clue; None when
    it has none or matches them case-insensitively."""
    if _parser is None:
        return None
    try:
        parsed = _parser.parse(regex)
    except Exception:  # a parse tree of another shape than expected: no clue, always matched
        log.warning("a custom pattern's literal could not be read; every string is scanned for it", exc_info=True)
        return None
    if parsed.state.flags & re.IGNORECASE:
        return None
    run = longest = ""
    for op, av in parsed.data:  # top-level items are matched one after the other, each once
        run = run + chr(av) if op is _sre.LITERAL else ""
        longest = max(longest, run, key=len)
    return Clue(re.compile(re.escape(longest)), "".join(dict.fromkeys(longest))) if longest else None


# -- one regex for a set of detectors -------------------------------------------------

# Above this many branches, entering each at its own character costs more than it saves.
_MAX_DISPATCHED_BRANCHES = 256
# Matchers kept per matcher for the sets of its detectors whose clues a text held.
_MAX_SUSPECT_SETS = 64


class Matcher:
    """Every detector of a guard in one regex, each branch entered at its anchor characters."""

    def __init__(self, detectors: tuple[Detector, ...]) -> None:
        self.detectors = detectors
        clued: dict[Clue, int] = {}  # equal clues (two custom patterns around one literal): looked for once
        for index, detector in enumerate(detectors):
            if detector.clue is not None:
                clued[detector.clue] = clued.get(detector.clue, 0) | 1 << index
        # Unpacked once: a clue missing from the text costs ~100 ns of Python, as much as its memchr.
        self._clues = [(bits, clue.chars, clue.pattern.search, clue.folded) for clue, bits in clued.items()]
        self._unclued = sum(1 << index for index, detector in enumerate(detectors) if detector.clue is None)
        self._folded = any(folded for *_, folded in self._clues)
        self._suspects: dict[int, Matcher] = {}
        self._instances: list[tuple[str, Detector, str | None]] = []
        self.regex = re.compile(self._pattern(detectors))
        groups = self.regex.groupindex
        # By the group that closes last in each branch (Match.lastindex): its detector, and the
        # group whose span is the secret (None: the match, and `lead` characters before it).
        self._branches: dict[int, tuple[Detector, int | None]] = {}
        for marker, detector, secret in self._instances:
            span = groups[marker] if detector.custom else groups[secret] if secret else None
            self._branches[groups[marker]] = (detector, span)

    def _pattern(self, detectors: tuple[Detector, ...]) -> str:
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

    def _branch(self, detector: Detector, branch: str) -> str:
        tag = len(self._instances)
        marker = f"m{tag}"
        secret = f"s{tag}" if detector.secret_group else None
        self._instances.append((marker, detector, secret))
        if detector.custom:
            # Entered one character late (the anchor was consumed): the lookbehind steps back and
            # the lookahead matches the whole pattern from there, in the marker group.
            return rf"(?<=(?=(?P<{marker}>{branch}))[\s\S])"
        return branch.replace("(?P<secret>", f"(?P<{secret}>") + f"(?P<{marker}>)"  # the marker closes last

    def suspects(self, text: str) -> Matcher | None:
        """The matcher for the detectors whose clue the whole of `text` holds, finding what this one
        finds in it (the others match nowhere in it); None: there is nothing to find.

        Only for the whole text: a piece of it may hold a match whose lookbehind or label is
        outside it (a stream's window, a `pos`)."""
        folded_text = fold(text) if self._folded else text
        held = self._unclued
        for bits, chars, search, folded in self._clues:
            subject = folded_text if folded else text
            for char in chars:
                if char not in subject:
                    break
            else:
                if search(subject) is not None:
                    held |= bits
        if not held:
            return None
        if held == (1 << len(self.detectors)) - 1:
            return self
        if held not in self._suspects:
            if len(self._suspects) >= _MAX_SUSPECT_SETS:
                self._suspects.clear()
            chosen = tuple(detector for index, detector in enumerate(self.detectors) if held >> index & 1)
            self._suspects[held] = Matcher(chosen)
        return self._suspects[held]

    def hits(self, text: str, pos: int = 0) -> Iterator[tuple[Detector, int, int]]:
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
def matcher_for(builtins: bool, custom: tuple[tuple[str, str], ...]) -> Matcher:
    """The matcher for the built-in detectors (when `builtins`) and these (name, regex) custom
    patterns; cached, so guards with the same detectors share one across targets and reloads."""
    detectors = [*(BUILTIN_DETECTORS if builtins else ())]
    detectors += [
        Detector(name, _entry_pieces(regex), (regex,), custom=True, clue=_custom_clue(regex)) for name, regex in custom
    ]
    return Matcher(tuple(detectors))
