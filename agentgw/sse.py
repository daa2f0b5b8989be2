"""Whole response bodies as JSON-RPC messages: plain JSON, or a text/event-stream."""

from __future__ import annotations

import json
from typing import Any


def messages_in(body: bytes, event_stream: bool) -> list[Any]:
    """The JSON messages of a whole response body, JSON or an event stream."""
    if not event_stream:
        try:
            return [json.loads(body)]
        except ValueError:
            return []
    return [message for _, message in events(body) if message is not None]


def events(body: bytes) -> list[tuple[list[bytes], Any]]:
    """Each event's lines, and the JSON its data lines carry (None when they carry none)."""
    parsed = []
    for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not event.strip():
            continue
        lines = event.split(b"\n")
        data = b"\n".join(line[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:"))
        try:
            message = json.loads(data) if data else None
        except ValueError:
            message = None
        parsed.append((lines, message))
    return parsed
