"""The one reader of event streams in the gateway: the WHATWG SSE parsing rules, fed bytes as they come.

Backends, agents and providers all send `text/event-stream`; reading each with
a rule of its own is how a backend slips a message past one reader that
another one sees (a bare CR ends a line for a browser, not for a reader that
splits on LF). So every stream the gateway reads goes through `SseDecoder`:
lines end at CRLF, LF or a lone CR, a leading BOM is dropped, `:` lines are
comments, `data` lines join with LF, and an event is dispatched only at a blank
line (an unfinished one at the end of the stream is discarded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

EVENT_STREAM = "text/event-stream"
_BOM = "\ufeff"


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type value, lower-cased, without parameters."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def is_event_stream(content_type: str | None) -> bool:
    return media_type(content_type) == EVENT_STREAM


@dataclass(slots=True)
class Event:
    data: str
    event: str = "message"
    id: str | None = None  # the `id` field, when this event carried one
    retry: int | None = None

    def json(self) -> Any:
        """The data as JSON; ValueError when it is not."""
        return json.loads(self.data)

    def encode(self, data: str | None = None) -> bytes:
        """This event in the gateway's own serialisation (with `data` in place of its own, if given)."""
        lines = []
        if self.event != "message":
            lines.append(f"event: {self.event}")
        if self.id is not None:
            lines.append(f"id: {self.id}")
        if self.retry is not None:
            lines.append(f"retry: {self.retry}")
        lines += [f"data: {line}" for line in (self.data if data is None else data).split("\n")]
        return ("\n".join(lines) + "\n\n").encode()


class SseDecoder:
    """Feed it the bytes of a stream in any pieces; it returns the events each piece completes."""

    def __init__(self) -> None:
        self._pending = ""
        self._bytes = b""  # an incomplete UTF-8 sequence at the end of the last piece
        self._started = False
        self._after_cr = False  # the last piece ended in CR: an LF opening the next one belongs to it
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self.last_event_id = ""

    def feed(self, chunk: bytes) -> list[Event]:
        text = self._decode(chunk)
        if not text:
            return []
        if not self._started:
            self._started = True
            text = text.removeprefix(_BOM)
        if self._after_cr and text.startswith("\n"):
            text = text[1:]
        self._after_cr = text.endswith("\r")
        text = self._pending + text
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        *lines, self._pending = text.split("\n")
        events: list[Event] = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _decode(self, chunk: bytes) -> str:
        data = self._bytes + chunk
        try:
            self._bytes = b""
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.reason == "unexpected end of data":
                self._bytes = data[exc.start :]
                return data[: exc.start].decode("utf-8", "replace")
            return data.decode("utf-8", "replace")  # the standard's decoder replaces bad sequences

    def _line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = self.last_event_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self._retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        data, event, event_id, retry = self._data, self._event, self._id, self._retry
        self._data, self._event, self._id, self._retry = [], "", None, None
        if not data:
            return None
        return Event("\n".join(data), event or "message", event_id, retry)


def decode_all(body: bytes) -> list[Event]:
    """Every complete event of a whole event-stream body."""
    return SseDecoder().feed(body)
