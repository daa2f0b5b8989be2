"""Typed readers of the OpenAI chat request fields a translating provider acts on (contract 9).

A provider that passes the request through (`openai`) leaves the checking to
the provider behind it; one that translates it (`anthropic`) reads the fields
itself, and a field of the wrong type or value must be the client's 400, never
the gateway's 500 or a silently different request. Each reader returns the
value the translation may use, or raises InvalidChatRequest naming the field.
"""

from __future__ import annotations

import math
from typing import Any

from agentgw.errors import InvalidRequest

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
TOOL_CHOICES = frozenset({"none", "auto", "required"})


class InvalidChatRequest(InvalidRequest):
    """A field of the wrong type or value for the provider the request goes to: the client's fault (400),
    raised before the provider was asked."""

    def __init__(self, param: str, expected: str) -> None:
        super().__init__(f"{param} must be {expected}")
        self.openai_param = param


def optional_int(request: dict[str, Any], field: str, minimum: int) -> int | None:
    value = request.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidChatRequest(field, f"an integer of at least {minimum}")
    return value


def optional_number(request: dict[str, Any], field: str, low: float, high: float) -> float | None:
    value = request.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidChatRequest(field, f"a number from {low} to {high}")
    if not low <= value <= high:
        raise InvalidChatRequest(field, f"a number from {low} to {high}")
    return value


def stop_sequences(request: dict[str, Any]) -> list[str]:
    """`stop`: a string or a list of strings; none given is an empty list."""
    stop = request.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, list) and all(isinstance(s, str) and s for s in stop):
        return list(stop)
    raise InvalidChatRequest("stop", "a string or a list of non-empty strings")


def optional_string(request: dict[str, Any], field: str) -> str | None:
    value = request.get(field)
    if value is not None and not isinstance(value, str):
        raise InvalidChatRequest(field, "a string")
    return value


def message_role(message: dict[str, Any], index: int) -> str:
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidChatRequest(f"messages[{index}].role", "one of " + ", ".join(sorted(ROLES)))
    return role


def message_text(message: dict[str, Any], index: int) -> str:
    """The text of a message's content: a string, or a list of text parts. A translation that carries
    only text must not drop an image or a file without a word, so any other part is refused."""
    content = message.get("content")
    param = f"messages[{index}].content"
    if isinstance(content, str):
        return content
    if content is None and message.get("role") == "assistant":
        return ""  # an assistant turn that only called tools
    if not isinstance(content, list):
        raise InvalidChatRequest(param, "a string or a list of content parts")
    texts = []
    for number, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise InvalidChatRequest(f"{param}[{number}]", 'a text part ({"type": "text", "text": "..."})')
        texts.append(part["text"])
    return "".join(texts)


def check_tools(request: dict[str, Any]) -> None:
    """`tools` in OpenAI's shape: a list of function tools, each with a name."""
    tools = request.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list):
        raise InvalidChatRequest("tools", "a list of function tools")
    for index, tool in enumerate(tools):
        if not _is_function(tool):
            raise InvalidChatRequest(f"tools[{index}]", 'a function tool ({"type": "function", "function": {...}})')


def check_tool_choice(request: dict[str, Any]) -> None:
    """`tool_choice`: none, auto, required, or `{"type": "function", "function": {"name": ...}}`."""
    choice = request.get("tool_choice")
    if choice is None or (isinstance(choice, str) and choice in TOOL_CHOICES):
        return
    if not _is_function(choice):
        raise InvalidChatRequest("tool_choice", "none, auto, required or a named function")


def _is_function(value: Any) -> bool:
    if not isinstance(value, dict) or value.get("type") != "function":
        return False
    function = value.get("function")
    return isinstance(function, dict) and isinstance(function.get("name"), str) and bool(function["name"])
