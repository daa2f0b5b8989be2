"""A streamed chat answer held to the GuardrailPolicy of its provider (contract 15): each text a
choice streams is held back up to 256 characters, so that a secret split across chunks is still
caught."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from agentgw.errors import GuardrailBlocked
from agentgw.observability.guardrail_actions import GuardrailActions, Where
from agentgw.policy.guardrails import Finding, Guard, TextStream

# The text a choice's delta streams piece by piece (beside its tool calls' arguments): each is
# scanned as one stream. Its other strings (role, a tool's name) come whole and are scanned as they come.
STREAMED_TEXT = ("content", "refusal", "reasoning_content", "reasoning")


def blocked(where: Where, finding: Finding) -> GuardrailBlocked:
    return GuardrailBlocked(f"The answer of provider {where.target!r} holds what a guardrail blocks", finding.detector)


class ScreenedChunks:
    """A streamed answer through a guard (contract 15).

    Each text a choice streams (STREAMED_TEXT, each tool call's arguments) runs through a
    TextStream of its own, so a secret split across chunks is still caught: a chunk carries
    the text its streams release, and the chunk that finishes a choice what they still hold.
    The chunk's other strings are scanned as they come. Every other field stays as the
    provider sent it. A chunk left with nothing to say (held-back text only) is not sent:
    OpenAI clients read any number of chunks. A guard that only warns changes nothing: the
    chunks go out as they came, and the streams only find.
    """

    def __init__(self, guard: Guard, actions: GuardrailActions, where: Where) -> None:
        self._guard = guard
        self._actions = actions
        self._where = where
        self._only_finds = all(action in ("warn", "off") for action in guard.actions.values())
        # By choice index, then by field name or tool call index.
        self._streams: dict[tuple[int, str | int], TextStream] = {}
        self._envelope: dict[str, Any] = {}  # the last chunk's own fields, for a closing chunk
        # A stream's chunks repeat their other strings (id, model, role): the last skeleton scanned
        # clean is not scanned again.
        self._clean_skeleton: dict[str, Any] | None = None

    def chunk(self, value: Any) -> Any:
        """The chunk to send in place of `value` (`value` itself when nothing changed), or None: send
        nothing now. GuardrailBlocked when it holds what a policy blocks."""
        choices = value.get("choices") if isinstance(value, dict) else None
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            return self._whole(value)  # no chunk of OpenAI's shape: no text to follow across chunks
        self._envelope = {k: v for k, v in value.items() if k not in ("choices", "usage")}
        skeleton = {**value, "choices": [_without_text(choice) for choice in choices]}
        if skeleton == self._clean_skeleton:
            screened = skeleton
        else:
            screened = self._whole(skeleton)
            # Kept apart: the released text is written into the skeleton that is sent.
            clean = screened is skeleton
            self._clean_skeleton = {**value, "choices": [_without_text(c) for c in choices]} if clean else None
        changed = screened is not skeleton
        silent = value.get("usage") is None
        for position, (choice, sent) in enumerate(zip(choices, screened["choices"], strict=True)):
            index = choice["index"] if isinstance(choice.get("index"), int) else position
            for key, piece, holder, field in _texts(choice, sent):
                released = holder[field] = self._feed((index, key), piece)
                changed = changed or released != piece
            if choice.get("finish_reason") is not None:
                changed = self._flush(index, sent) or changed
            silent = silent and _silent(sent)
        if self._only_finds or not changed:
            return value
        return None if silent and screened["choices"] else screened

    def closing(self) -> dict[str, Any] | None:
        """A last chunk with what the streams still hold, for a provider that ended without finishing
        every choice; None when they hold nothing."""
        choices: list[dict[str, Any]] = []
        for index in sorted({index for index, _ in self._streams}):
            choice: dict[str, Any] = {"index": index, "delta": {}, "finish_reason": None}
            if self._flush(index, choice):
                choices.append(choice)
        return {**self._envelope, "choices": choices} if choices and not self._only_finds else None

    def _whole(self, value: Any) -> Any:
        scan = self._guard.scan(value)
        self._report(scan.findings)
        if scan.blocked is not None:
            raise blocked(self._where, scan.blocked)
        return scan.value

    def _feed(self, key: tuple[int, str | int], piece: str) -> str:
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = self._guard.text_stream()
        known = len(stream.findings)
        released = stream.feed(piece)
        return self._checked(stream, known, released)

    def _flush(self, index: int, choice: dict[str, Any]) -> bool:
        """Put what the streams of choice `index` hold into `choice`, ending them. Whether they held any."""
        held = False
        for key in [key for key in self._streams if key[0] == index]:
            stream = self._streams.pop(key)
            known = len(stream.findings)
            rest = self._checked(stream, known, stream.finish())
            if rest:
                held = True
                _append(choice, key[1], rest)
        return held

    def _checked(self, stream: TextStream, known: int, text: str) -> str:
        """`text`, released by `stream` after it had `known` findings; the new ones are reported."""
        self._report(stream.findings[known:])
        if stream.blocked is not None:
            raise blocked(self._where, stream.blocked)
        return text

    def _report(self, findings: list[Finding]) -> None:
        if findings:
            self._actions.found(findings, self._where)


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


def _texts(choice: dict[str, Any], sent: dict[str, Any]) -> Iterator[tuple[str | int, str, dict[str, Any], str]]:
    """Each text `choice` streams, in its order: its key (a field name, a tool call index), the
    piece this chunk carries, and where in `sent` (the choice's copy that is sent) it goes."""
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return
    for field, value in delta.items():
        if field in STREAMED_TEXT and isinstance(value, str):
            yield field, value, sent["delta"], field
    calls = delta.get("tool_calls")
    for position, call in enumerate(calls if isinstance(calls, list) else ()):
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            index = call["index"] if isinstance(call.get("index"), int) else position
            yield index, function["arguments"], sent["delta"]["tool_calls"][position]["function"], "arguments"


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
