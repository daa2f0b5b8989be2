"""Strict JSON-RPC 2.0 parsing shared by every inbound protocol.

The gateway decides on what it parsed and forwards its own serialisation of it
(`serialise`), so a parser difference between gateway and backend (duplicate
keys, lone surrogates, huge numbers) can never carry anything past a check.
"""

from __future__ import annotations

import json
import math
from typing import Any

from agentgw.errors import InvalidRequest, ParseError

MAX_DEPTH = 64
# Integers longer than this are refused: no JSON-RPC field or sane tool argument
# needs more, and a backend parsing them as float would see another value.
MAX_INT_DIGITS = 20

Message = dict[str, Any]


class _DuplicateKey(Exception):
    pass


class _BadNumber(Exception):
    pass


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateKey
    return obj


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _BadNumber
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumber
    return value


def _constant(text: str) -> Any:
    raise _BadNumber  # NaN, Infinity, -Infinity are not JSON


_decoder = json.JSONDecoder(object_pairs_hook=_object, parse_int=_int, parse_float=_float, parse_constant=_constant)


def parse(body: bytes) -> Message | list[Any]:
    """Decode a request body: strict UTF-8, no duplicate keys, bounded depth and numbers."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("Parse error: body is not UTF-8") from None
    if text.startswith("\ufeff"):
        raise ParseError("Parse error: byte order mark not allowed")
    try:
        value = _decoder.decode(text)
    except _DuplicateKey:
        raise InvalidRequest("Invalid request: duplicate object key") from None
    except RecursionError:
        raise InvalidRequest(f"Invalid request: nesting deeper than {MAX_DEPTH}") from None
    except (_BadNumber, ValueError):
        raise ParseError("Parse error: not valid JSON") from None
    # A document with no more brackets than the limit cannot nest past it: skip the walk.
    if text.count("{") + text.count("[") > MAX_DEPTH and _too_deep(value, 0):
        raise InvalidRequest(f"Invalid request: nesting deeper than {MAX_DEPTH}")
    if not isinstance(value, (dict, list)):
        raise InvalidRequest("Invalid request: not a JSON-RPC message")
    return value


def _too_deep(value: Any, depth: int) -> bool:
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            return True
        return any(_too_deep(v, depth + 1) for v in value.values() if isinstance(v, (dict, list)))
    if isinstance(value, list):
        if depth >= MAX_DEPTH:
            return True
        return any(_too_deep(v, depth + 1) for v in value if isinstance(v, (dict, list)))
    return False


def _valid_id(value: Any) -> bool:
    return (isinstance(value, str) or isinstance(value, int)) and not isinstance(value, bool)


def check_message(message: Any) -> Message:
    """Check one JSON-RPC 2.0 request, notification or response; return it typed."""
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        raise InvalidRequest("Invalid request: not a JSON-RPC 2.0 message")
    if "method" in message:
        if not isinstance(message["method"], str) or "result" in message or "error" in message:
            raise InvalidRequest("Invalid request: bad method")
        if "id" in message and not _valid_id(message["id"]):
            raise InvalidRequest("Invalid request: id must be a string or an integer")
        if "params" in message and not isinstance(message["params"], dict):
            raise InvalidRequest("Invalid request: params must be an object")
        _check_named_params(message)
        return message
    # A response: the client answering a server-to-client request (sampling, elicitation).
    if not _valid_id(message.get("id")) or ("result" in message) == ("error" in message):
        raise InvalidRequest("Invalid request: not a request, notification or response")
    if "error" in message and not isinstance(message["error"], dict):
        raise InvalidRequest("Invalid request: error must be an object")
    return message


_NAME_PARAM = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


def _check_named_params(message: Message) -> None:
    key = _NAME_PARAM.get(message["method"])
    if key is not None and not isinstance(message.get("params", {}).get(key), str):
        raise InvalidRequest(f"Invalid request: params.{key} must be a string")


def named_target(message: Message) -> str | None:
    """The tool name, prompt name or resource uri a message names, if any."""
    key = _NAME_PARAM.get(message.get("method", ""))
    return None if key is None else message["params"][key]


# Made once: json.dumps with options builds an encoder on every call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def serialise(value: Message | list[Any]) -> bytes:
    """The gateway's own serialisation; lone surrogates cannot be encoded and are refused."""
    try:
        return _ENCODER.encode(value).encode("utf-8")
    except UnicodeEncodeError:
        raise ParseError("Parse error: string holds a lone surrogate") from None
