"""A streamed chat answer held to the GuardrailPolicy of its provider (contract 15): the provider's
chunks are held back until the text they carry is settled, so that a secret split across chunks is
still caught, and then go out as they came unless a secret touches them.

What it costs: a chunk untouched by a secret goes out as the provider sent it (a RawChunk byte for
byte), never re-serialised; its text is added to its stream, the held text is scanned once per
HOLDBACK - LOOKAHEAD characters or so rather than once per chunk, and the common chunk (_Repeat)
is checked in a few dict comparisons. About 2 us of CPU a chunk, where re-serialising every chunk
and rescanning the last 256 characters cost 7. The chunks released together go out in one write
(openai_chat._send_event), where an unguarded stream writes each: on benchmarks/guardrails.py's
chat stream (256 chunks of a few characters; 2-core VM, 2026-11-30) the guarded gateway used 3 to
4 us less CPU a chunk than the unguarded one and served 1.35x its requests/s, against 0.6x before.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from agentgw.errors import GuardrailBlocked
from agentgw.observability.guardrail_actions import GuardrailActions, Where
from agentgw.policy.guardrails import HOLDBACK, Finding, Guard, Redaction, TextStream
from agentgw.upstream.llm.provider import RawChunk, StreamChunk

# The text a choice's delta streams piece by piece (beside its tool calls' arguments): each is
# scanned as one stream. Its other strings (role, a tool's name) come whole and are scanned as they come.
STREAMED_TEXT = ("content", "refusal", "reasoning_content", "reasoning")
# A chunk goes out once this much of its stream's text after it has been scanned (or the stream
# ended): a secret up to this long (the part that tells it is one, for the long ones) is caught
# wherever the chunks split it. Below HOLDBACK so that, holding back no more than HOLDBACK
# characters, chunks of up to HOLDBACK - LOOKAHEAD + 1 characters still go out whole; a longer
# one is split where its text is settled.
LOOKAHEAD = 192
# Chunks of empty text hold no character back, but a provider sending nothing else must not make
# the held chunks grow without bound: past this many, the first goes out, split.
MAX_HELD_CHUNKS = HOLDBACK

# Where a piece of streamed text sits in a choice: the field of its delta, or the position of its
# tool call in the delta's tool_calls.
Slot = str | int


def blocked(where: Where, finding: Finding) -> GuardrailBlocked:
    return GuardrailBlocked(f"The answer of provider {where.target!r} holds what a guardrail blocks", finding.detector)


class _Text:
    """One text a choice streams, through a TextStream of its own, and how much of it went out."""

    __slots__ = ("carry", "redactions", "sent", "stream")

    def __init__(self, stream: TextStream) -> None:
        self.stream = stream
        self.sent = 0  # its text before this position went out
        # Its text from `sent` to its next held piece: what a chunk split to go out did not take.
        self.carry = ""
        self.redactions: list[Redaction] = []  # those that reach past `sent`

    def untouched(self, start: int, piece: str) -> bool:
        """Whether its `piece` starting at `start` can go out as it came: next in line, settled, and
        no redaction in it."""
        end = start + len(piece)
        if self.sent != start or end > self.stream.decided:
            return False
        return not self.redactions or not any(r.start < end and r.end > start for r in self.redactions)

    def release(self, piece: str, upto: int) -> str:
        """What goes out of the carry and then `piece`: its text up to position `upto` (settled),
        redacted; the rest is carried."""
        region = self.carry + piece
        text, self.carry = region[: upto - self.sent], region[upto - self.sent :]
        if self.redactions:
            text = _redacted(text, self.sent, self.redactions)
            self.redactions = [r for r in self.redactions if r.end > upto]
        self.sent = upto
        return text


@dataclass(slots=True)
class _Held:
    """A chunk held back until the text it carries is settled."""

    chunk: StreamChunk  # as the provider sent it
    value: Any
    # What to write its text into when it cannot go out as it came: its fields but the streamed
    # text, screened, when screening changed them; None: unchanged.
    screened: Any
    # Each text it carries: its stream, where in it the piece starts, the piece, and where it sits
    # (the choice's position, the slot).
    pieces: list[tuple[_Text, int, str, int, Slot]]
    # The streams its finish_reason ends, and where what they still hold goes: the choice's
    # position and the stream's key (a field, a tool call index).
    finished: list[tuple[_Text, int, str | int]]


class _Repeat:
    """The fields of a chunk of the common shape (one choice, streamed text only in its delta, no
    finish), scanned clean: a chunk with the same ones brings nothing new to scan but its text.
    Compared at the C level, as little dicts: most chunks of a stream are of this kind."""

    __slots__ = ("choice", "envelope", "index")

    def __init__(self, value: dict[str, Any], choice: dict[str, Any]) -> None:
        self.envelope = {**value, "choices": None}
        self.choice = {**choice, "delta": None}
        self.index = choice["index"] if isinstance(choice.get("index"), int) else 0

    @classmethod
    def of(cls, value: Any) -> _Repeat | None:
        """The fields of `value`, when it is of the common shape."""
        choices = value.get("choices") if isinstance(value, dict) else None
        if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
            return None
        choice = choices[0]
        if choice.get("finish_reason") is not None or _text_only(choice.get("delta")) is None:
            return None
        return cls(value, choice)

    def delta_of(self, value: Any) -> dict[str, str] | None:
        """The delta of `value` when its other fields are these; None when they are not."""
        choices = value.get("choices") if isinstance(value, dict) else None
        if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
            return None
        choice = choices[0]
        if {**value, "choices": None} != self.envelope or {**choice, "delta": None} != self.choice:
            return None
        return _text_only(choice.get("delta"))


def _text_only(delta: Any) -> dict[str, str] | None:
    """`delta` when it holds streamed text only."""
    if not isinstance(delta, dict):
        return None
    for field, piece in delta.items():
        if field not in STREAMED_TEXT or not isinstance(piece, str):
            return None
    return delta


class ScreenedChunks:
    """A streamed answer through a guard (contract 15).

    Each text a choice streams (STREAMED_TEXT, each tool call's arguments) runs through a
    TextStream of its own, and each chunk is held back until the text it carries is settled:
    LOOKAHEAD characters of its stream after it scanned, or its choice finished, or the stream
    ended. Then it goes out as the provider sent it, unless a secret touches it: only such a
    chunk is rewritten, carrying its text redacted (the marker in the chunk where the secret
    starts). Never more than HOLDBACK characters of a stream are held back: a chunk that would
    hold more is split, its settled text going out now and the rest with a later chunk of the
    stream. The chunk's other strings are scanned as they come; every other field stays as the
    provider sent it. A rewritten chunk left with nothing to say is not sent: OpenAI clients read
    any number of chunks. A guard that only warns changes nothing: the chunks go out as they come,
    and the streams only find.
    """

    def __init__(self, guard: Guard, actions: GuardrailActions, where: Where) -> None:
        self._guard = guard
        self._actions = actions
        self._where = where
        self._only_finds = all(action in ("warn", "off") for action in guard.actions.values())
        # By choice index, then by field name or tool call index.
        self._texts: dict[tuple[int, str | int], _Text] = {}
        self._held: deque[_Held] = deque()
        self._last: dict[str, Any] | None = None  # the last chunk of OpenAI's shape, for a closing chunk's fields
        # A stream's chunks repeat their other strings (id, model, role): the last skeleton scanned
        # clean is not scanned again.
        self._clean_skeleton: dict[str, Any] | None = None
        self._repeat: _Repeat | None = None  # the fields of the last chunk of the common shape, scanned clean
        self._settled_any = False  # whether a stream settled more since the last chunk came in

    def chunk(self, chunk: StreamChunk) -> list[StreamChunk]:
        """What to send now, in order, for the provider's `chunk`: held chunks whose text is now
        settled, this one among them when its is. Each is the provider's own (a RawChunk goes out
        byte for byte) or, touched by a secret, rewritten. GuardrailBlocked when it holds what a
        policy blocks: what is held goes nowhere."""
        self._settled_any = False
        held = self._take(chunk)
        if self._only_finds:
            return [chunk]
        self._held.append(held)
        if not self._settled_any and 1 < len(self._held) <= MAX_HELD_CHUNKS:
            return []  # what was held waits for its text to be settled, and this one behind it
        return self._release(held)

    def closing(self) -> list[StreamChunk]:
        """What to send when the provider's stream ended: the chunks still held, and a last chunk
        with what the streams of choices it never finished still hold."""
        for text in self._texts.values():
            self._settle(text, None)
        if self._only_finds:
            return []
        sent: list[StreamChunk] = []
        while self._held:
            self._send(self._held.popleft(), sent)
        choices: list[dict[str, Any]] = []
        for (index, key), text in sorted(self._texts.items(), key=lambda item: item[0][0]):
            rest = text.release("", text.stream.fed)
            if rest:
                if not choices or choices[-1]["index"] != index:
                    choices.append({"index": index, "delta": {}, "finish_reason": None})
                _append(choices[-1], key, rest)
        self._texts.clear()
        if choices and self._last is not None:
            envelope = {k: v for k, v in self._last.items() if k not in ("choices", "usage")}
            sent.append({**envelope, "choices": choices})
        return sent

    # -- a chunk coming in ----------------------------------------------------------------

    def _take(self, chunk: StreamChunk) -> _Held:
        """`chunk` scanned and its text added to its streams, settled where they hold too much."""
        value = chunk.value if isinstance(chunk, RawChunk) else chunk
        repeat = self._repeat
        delta = repeat.delta_of(value) if repeat is not None else None
        if repeat is None or delta is None:
            return self._take_any(chunk, value)
        # The common chunk: nothing new but the text of its one choice.
        self._last = value
        held = _Held(chunk, value, None, [], [])
        for field, piece in delta.items():
            self._add(held, (repeat.index, field), piece, 0, field)
        return held

    def _take_any(self, chunk: StreamChunk, value: Any) -> _Held:
        choices = value.get("choices") if isinstance(value, dict) else None
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            screened = self._whole(value)  # no chunk of OpenAI's shape: no text to follow across chunks
            return _Held(chunk, value, None if screened is value else screened, [], [])
        self._last = value
        held = _Held(chunk, value, self._screened_skeleton(value), [], [])
        for position, choice in enumerate(choices):
            index = choice["index"] if isinstance(choice.get("index"), int) else position
            for key, piece, slot in _texts(choice):
                self._add(held, (index, key), piece, position, slot)
            if choice.get("finish_reason") is not None:
                for ended in [ended for ended in self._texts if ended[0] == index]:
                    text = self._texts.pop(ended)
                    self._settle(text, None)
                    held.finished.append((text, position, ended[1]))
        if held.screened is None and not held.finished:
            self._repeat = _Repeat.of(value) or self._repeat
        return held

    def _add(self, held: _Held, key: tuple[int, str | int], piece: str, position: int, slot: Slot) -> None:
        """Add `piece` to the stream `key` and to `held`, settling the stream when it holds too much."""
        text = self._texts.get(key)
        if text is None:
            text = self._texts[key] = _Text(self._guard.text_stream())
        stream = text.stream
        held.pieces.append((text, stream.fed, piece, position, slot))
        stream.add(piece)
        if stream.fed - (stream.decided if self._only_finds else text.sent) > HOLDBACK:
            self._settle(text, stream.fed - LOOKAHEAD)

    def _screened_skeleton(self, value: dict[str, Any]) -> Any:
        """`value` without its streamed text, screened; None when screening changes nothing."""
        skeleton = _skeleton(value)
        if skeleton == self._clean_skeleton:
            return None
        screened = self._whole(skeleton)
        self._clean_skeleton = skeleton if screened is skeleton else None
        return None if screened is skeleton else screened

    def _whole(self, value: Any) -> Any:
        scan = self._guard.scan(value)
        self._report(scan.findings)
        if scan.blocked is not None:
            raise blocked(self._where, scan.blocked)
        return scan.value

    def _settle(self, text: _Text, upto: int | None) -> None:
        """Settle `text`'s stream up to `upto` (None: to its end), its findings reported."""
        stream = text.stream
        known = len(stream.findings)
        redactions = stream.decide(upto)
        self._report(stream.findings[known:])
        if stream.blocked is not None:
            raise blocked(self._where, stream.blocked)
        text.redactions += redactions
        self._settled_any = True

    def _report(self, findings: list[Finding]) -> None:
        if findings:
            self._actions.found(findings, self._where)

    # -- chunks going out -----------------------------------------------------------------

    def _release(self, latest: _Held) -> list[StreamChunk]:
        """The held chunks that can go out now, in order: the settled ones, then as many more as a
        stream `latest` grew needs to hold no more than HOLDBACK, split."""
        sent: list[StreamChunk] = []
        while self._held and _settled(self._held[0]):
            self._send(self._held.popleft(), sent)
        for text, _, _, _, _ in latest.pieces:
            # A chunk longer than HOLDBACK - LOOKAHEAD, or chunks behind another stream's.
            while self._held and text.stream.fed - text.sent > HOLDBACK:
                self._send(self._held.popleft(), sent)
        while len(self._held) > MAX_HELD_CHUNKS:
            self._send(self._held.popleft(), sent)
        return sent

    def _send(self, held: _Held, sent: list[StreamChunk]) -> None:
        """Add `held` to `sent`: as the provider sent it when nothing touches it, else rewritten with
        the text of it that is settled (left out when it says nothing then)."""
        pieces = held.pieces
        if held.screened is None and _untouched(held):
            for text, start, piece, _, _ in pieces:
                text.sent = start + len(piece)
            sent.append(held.chunk)
            return
        value = held.screened if held.screened is not None else _skeleton(held.value)
        if not pieces and not held.finished:
            sent.append(value)
            return
        choices = value["choices"]
        for text, start, piece, position, slot in pieces:
            _put(choices[position], slot, text.release(piece, min(start + len(piece), text.stream.decided)))
        for text, position, key in held.finished:
            rest = text.release("", text.stream.fed)
            if rest:
                _append(choices[position], key, rest)
        if value.get("usage") is not None or not all(_silent(choice) for choice in choices):
            sent.append(value)


def _settled(held: _Held) -> bool:
    for text, start, piece, _, _ in held.pieces:
        if start + len(piece) > text.stream.decided:
            return False
    return True


def _untouched(held: _Held) -> bool:
    """Whether the text `held` carries goes out as it came (_Text.untouched), none left to add."""
    for text, start, piece, _, _ in held.pieces:
        if not text.untouched(start, piece):
            return False
    for text, _, _ in held.finished:
        if text.carry:
            return False
    return True


def _redacted(text: str, at: int, redactions: list[Redaction]) -> str:
    """`text`, found at position `at` of its stream, with the redactions that reach into it: the
    marker where the secret starts, the secret gone."""
    pieces: list[str] = []
    done = 0
    for redaction in redactions:
        start, end = redaction.start - at, redaction.end - at
        if end <= 0 or start >= len(text):
            continue
        pieces.append(text[done : max(start, 0)])
        if start >= 0:
            pieces.append(redaction.marker)
        done = min(end, len(text))
    pieces.append(text[done:])
    return "".join(pieces)


def _skeleton(value: dict[str, Any]) -> dict[str, Any]:
    return {**value, "choices": [_without_text(choice) for choice in value["choices"]]}


def _without_text(choice: dict[str, Any]) -> dict[str, Any]:
    """A copy of a choice, down to its delta and tool calls, without the text they stream."""
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return dict(choice)
    copy = {k: v for k, v in delta.items() if not (k in STREAMED_TEXT and isinstance(v, str))}
    if isinstance(delta.get("tool_calls"), list):
        copy["tool_calls"] = [_without_arguments(call) for call in delta["tool_calls"]]
    return {**choice, "delta": copy}


def _without_arguments(call: Any) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    return {**call, "function": {k: v for k, v in function.items() if k != "arguments"}}


def _texts(choice: dict[str, Any]) -> Iterator[tuple[str | int, str, Slot]]:
    """Each text `choice` streams, in its order: its key (a field name, a tool call index), the
    piece this chunk carries, and its slot."""
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return
    for field, value in delta.items():
        if field in STREAMED_TEXT and isinstance(value, str):
            yield field, value, field
    calls = delta.get("tool_calls")
    for position, call in enumerate(calls if isinstance(calls, list) else ()):
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            index = call["index"] if isinstance(call.get("index"), int) else position
            yield index, function["arguments"], position


def _put(choice: dict[str, Any], slot: Slot, text: str) -> None:
    """Write text into a choice's copy without text (_without_text), at `slot`."""
    if isinstance(slot, str):
        choice["delta"][slot] = text
    else:
        choice["delta"]["tool_calls"][slot]["function"]["arguments"] = text


def _append(choice: dict[str, Any], key: str | int, text: str) -> None:
    """Add released text to a choice's delta: to a field, or to the arguments of tool call `key`."""
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        delta = choice["delta"] = {}
    if isinstance(key, str):
        delta[key] = (delta.get(key) or "") + text
        return
    calls = delta.get("tool_calls")
    if not isinstance(calls, list):
        calls = delta["tool_calls"] = []
    calls.append({"index": key, "function": {"arguments": text}})


def _silent(choice: dict[str, Any]) -> bool:
    """A choice that says nothing: no finish, no logprobs, and a delta of empty streamed text only."""
    delta = choice.get("delta")
    if choice.get("finish_reason") is not None or choice.get("logprobs") is not None or not isinstance(delta, dict):
        return False
    return all(key in STREAMED_TEXT and value == "" for key, value in delta.items())
