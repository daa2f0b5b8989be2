"""Load policy YAML files and folders into one PolicySet, or refuse them whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from agentgw.policy.model import (
    API_VERSIONS,
    AgentPolicy,
    GuardrailPolicy,
    PolicySet,
    RateLimitPolicy,
    SessionAuthPolicy,
    SessionPolicy,
    ToolPolicy,
)
from agentgw.policy.secrets import RESERVED_DETECTOR_NAMES
from agentgw.typed_yaml import ConfigError, build_document, compose_documents, line_of

_KINDS: dict[str, Any] = {
    "SessionPolicy": SessionPolicy,
    "SessionAuthPolicy": SessionAuthPolicy,
    "ToolPolicy": ToolPolicy,
    "AgentPolicy": AgentPolicy,
    "RateLimitPolicy": RateLimitPolicy,
    "GuardrailPolicy": GuardrailPolicy,
}


def policy_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if _is_policy_file(p, path)))
        elif path.exists():
            files.append(path)
        else:
            raise ConfigError(entry, 0, "policy path does not exist")
    return files


def _is_policy_file(path: Path, root: Path) -> bool:
    """YAML files, skipping hidden ones and hidden folders: a Kubernetes ConfigMap mount keeps
    every file a second time under `..<timestamp>/`, and editors keep swap files there too."""
    hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
    return not hidden and path.suffix in (".yaml", ".yml") and path.is_file()


def load_policies(paths: list[str]) -> PolicySet:
    """Every problem raises ConfigError with `file:line: message`."""
    loaded: dict[str, list[tuple[str, Any]]] = {kind: [] for kind in _KINDS}
    files = policy_files(paths)
    for path in files:
        for where, kind, policy in _load_file(path):
            loaded[kind].append((where, policy))
    sessions = loaded["SessionPolicy"]
    if len(sessions) > 1:
        file, line = sessions[1][0].rsplit(":", 1)
        raise ConfigError(file, int(line), f"a second SessionPolicy (the first is at {sessions[0][0]})")
    issuers: dict[str, str] = {}
    for where, auth in loaded["SessionAuthPolicy"]:
        issuer = auth.spec.jwt_validation.issuer
        if issuer in issuers:
            file, line = where.rsplit(":", 1)
            raise ConfigError(file, int(line), f"issuer {issuer!r} is already configured at {issuers[issuer]}")
        issuers[issuer] = where
    return PolicySet(
        session=sessions[0][1].spec if sessions else PolicySet().session,
        auth=[policy for _, policy in loaded["SessionAuthPolicy"]],
        tools=[policy for _, policy in loaded["ToolPolicy"]],
        agents=[policy for _, policy in loaded["AgentPolicy"]],
        rate_limits=[policy for _, policy in loaded["RateLimitPolicy"]],
        guardrails=[policy for _, policy in loaded["GuardrailPolicy"]],
        sources=[str(f) for f in files],
    )


def _load_file(path: Path) -> list[tuple[str, str, Any]]:
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, 0, f"cannot read: {exc}") from None
    policies = []
    for document in compose_documents(text, file):
        kind = _kind_of(document, file)
        where = f"{file}:{document.start_mark.line + 1}"
        policy = build_document(document, _KINDS[kind], file)
        if isinstance(policy, GuardrailPolicy):
            _check_pattern_names(policy, file)
        policies.append((where, kind, policy))
    return policies


def _check_pattern_names(policy: GuardrailPolicy, file: str) -> None:
    """A pattern's name is its detector name in markers and metrics: it must say which one matched."""
    seen: dict[str, int] = {}
    for index, pattern in enumerate(policy.spec.patterns):
        where = f"spec.patterns[{index}].name"
        if pattern.name in RESERVED_DETECTOR_NAMES:
            raise ConfigError(file, line_of(pattern), f"{where}: {pattern.name!r} is a built-in detector's name")
        if pattern.name in seen:
            message = f"{where}: {pattern.name!r} is already the name of spec.patterns[{seen[pattern.name]}]"
            raise ConfigError(file, line_of(pattern), message)
        seen[pattern.name] = index


def _kind_of(document: yaml.Node, file: str) -> str:
    line = document.start_mark.line + 1
    if not isinstance(document, yaml.MappingNode):
        raise ConfigError(file, line, "a policy document must be a mapping")
    fields = {key.value: value for key, value in document.value if isinstance(key, yaml.ScalarNode)}
    api_version = fields.get("apiVersion")
    kind = fields.get("kind")
    if not isinstance(api_version, yaml.ScalarNode) or api_version.value not in API_VERSIONS:
        raise ConfigError(file, line, f"apiVersion must be one of {', '.join(API_VERSIONS)}")
    if not isinstance(kind, yaml.ScalarNode):
        raise ConfigError(file, line, "kind is missing")
    if kind.value not in _KINDS:
        raise ConfigError(file, kind.start_mark.line + 1, f"unknown kind {kind.value!r}")
    return str(kind.value)
