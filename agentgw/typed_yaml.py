"""YAML into typed dataclasses, with every problem reported as `file:line: message`.

Config and policies share it, so both refuse unknown keys the same way.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal

import yaml


class Duration(float):
    """Seconds, written in YAML as 500ms, 30s, 5m or 1h."""


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> Duration:
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration (500ms, 30s, 5m, 1h)")
    return Duration(float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


class ConfigError(Exception):
    """A config or policy file that fails validation; str() is `file:line: message`."""

    def __init__(self, file: str, line: int, message: str) -> None:
        super().__init__(f"{file}:{line}: {message}" if line else f"{file}: {message}")
        self.file = file
        self.line = line


def yaml_key(name: str) -> Any:
    """A dataclass field read from a YAML key spelled differently (camelCase policies)."""
    return {"yaml_key": name}


def compose_documents(text: str, file: str) -> list[yaml.Node]:
    try:
        return [node for node in yaml.compose_all(text, Loader=yaml.SafeLoader) if node is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError(file, line, f"invalid YAML: {getattr(exc, 'problem', exc)}") from None
    except RecursionError:
        raise ConfigError(file, 1, "invalid YAML: nested too deeply") from None


def build_document(node: yaml.Node, tp: Any, file: str) -> Any:
    """A whole YAML document as `tp`; every failure is a ConfigError."""
    try:
        return build(node, tp, file, "")
    except RecursionError:
        raise ConfigError(file, node.start_mark.line + 1, "nested too deeply") from None


def build(node: yaml.Node, tp: Any, file: str, where: str) -> Any:
    """Convert a YAML node to `tp`, naming file, line and key on any mismatch."""
    line = node.start_mark.line + 1
    if not node.tag.startswith(_STANDARD_TAG):
        raise ConfigError(file, line, f"{where or 'top level'}: YAML tag {node.tag!r} is not supported")
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(node, tp, file, where)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if _is_null(node):
            return None
        return build(node, _union_option(node, options), file, where)
    if origin is list:
        if not isinstance(node, yaml.SequenceNode):
            raise ConfigError(file, line, f"{where}: expected a list")
        (item,) = typing.get_args(tp)
        return [build(child, item, file, f"{where}[{i}]") for i, child in enumerate(node.value)]
    if origin is dict:
        if not isinstance(node, yaml.MappingNode):
            raise ConfigError(file, line, f"{where}: expected a mapping")
        _, value_tp = typing.get_args(tp)
        return {_scalar(k, str, file, where): build(v, value_tp, file, f"{where}.{k.value}") for k, v in node.value}
    if origin is Literal:
        value = _scalar(node, str, file, where)
        if value not in typing.get_args(tp):
            allowed = " | ".join(typing.get_args(tp))
            raise ConfigError(file, line, f"{where}: {value!r} is not one of {allowed}")
        return value
    return _scalar(node, tp, file, where)


_STANDARD_TAG = "tag:yaml.org,2002:"
_LINE = "_yaml_line"


def line_of(value: Any) -> int:
    """The line a config object was read from; 0 for defaults and env overrides."""
    line: int = getattr(value, _LINE, 0)
    return line


def _union_option(node: yaml.Node, options: list[Any]) -> Any:
    """The member of a union that fits the node's shape: a list, a mapping or a scalar."""
    for option in options:
        origin = typing.get_origin(option)
        if isinstance(node, yaml.SequenceNode) and origin is list:
            return option
        if isinstance(node, yaml.MappingNode) and (origin is dict or dataclasses.is_dataclass(option)):
            return option
        if isinstance(node, yaml.ScalarNode) and origin not in (list, dict) and not dataclasses.is_dataclass(option):
            return option
    return options[0]


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _build_dataclass(node: yaml.Node, cls: Any, file: str, where: str) -> Any:
    line = node.start_mark.line + 1
    if _is_null(node):
        return cls()
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(file, line, f"{where or 'top level'}: expected a mapping")
    fields = {f.metadata.get("yaml_key", f.name): f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key_node, value_node in node.value:
        if key_node.tag == _STANDARD_TAG + "merge":
            raise ConfigError(file, key_node.start_mark.line + 1, "merge keys (<<) are not supported")
        key = _scalar(key_node, str, file, where)
        path = f"{where}.{key}" if where else key
        field = fields.get(key)
        if key in getattr(cls, "REFUSED_KEYS", {}):
            raise ConfigError(file, key_node.start_mark.line + 1, f"{path}: {cls.REFUSED_KEYS[key]}")
        if field is None:
            raise ConfigError(file, key_node.start_mark.line + 1, f"unknown key '{path}'")
        if field.name in values:
            raise ConfigError(file, key_node.start_mark.line + 1, f"duplicate key '{path}'")
        values[field.name] = build(value_node, hints[field.name], file, path)
    try:
        built = cls(**values)
        object.__setattr__(built, _LINE, line)  # frozen, yet validation after the build can name the line
        return built
    except TypeError as exc:
        raise ConfigError(file, line, f"{where or 'top level'}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(file, line, f"{where or 'top level'}: {exc}") from None


def _scalar(node: yaml.Node, tp: Any, file: str, where: str) -> Any:
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(file, line, f"{where}: expected a single value")
    try:
        value = _construct(node)
    except (yaml.YAMLError, ValueError, TypeError) as exc:
        raise ConfigError(file, line, f"{where}: cannot read value: {exc}") from None
    try:
        return coerce(value, tp)
    except (TypeError, ValueError) as exc:
        raise ConfigError(file, line, f"{where}: {exc}") from None


def _construct(node: yaml.ScalarNode) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def coerce(value: Any, tp: Any) -> Any:
    """Convert a plain value (from YAML or an env var) to a config scalar type."""
    if tp is Duration:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return Duration(float(value))
        return parse_duration(str(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ValueError(f"{value!r} is not true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"{value!r} is not an integer")
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ValueError(f"{value!r} is not a string")
        return str(value)
    if typing.get_origin(tp) is Literal:
        if value not in typing.get_args(tp):
            raise ValueError(f"{value!r} is not one of {' | '.join(typing.get_args(tp))}")
        return value
    raise TypeError(f"unsupported config type {tp!r}")
