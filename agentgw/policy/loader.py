"""Load policy YAML files and folders into one PolicySet, or refuse them whole."""

from __future__ import annotations

from pathlib import Path

import yaml

from agentgw.policy.model import API_VERSIONS, PolicySet, SessionPolicy
from agentgw.typed_yaml import ConfigError, build, compose_documents

_KINDS = {"SessionPolicy": SessionPolicy}
# Shapes from the contract that this version does not enforce yet: refusing them
# is safer than loading a ToolPolicy the operator believes is protecting them.
_NOT_YET_ENFORCED = ("SessionAuthPolicy", "ToolPolicy", "AgentPolicy", "RateLimitPolicy")


def policy_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()))
        elif path.exists():
            files.append(path)
        else:
            raise ConfigError(entry, 0, "policy path does not exist")
    return files


def load_policies(paths: list[str]) -> PolicySet:
    """Every problem raises ConfigError with `file:line: message`."""
    sessions: list[tuple[str, SessionPolicy]] = []
    files = policy_files(paths)
    for path in files:
        file = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(file, 0, f"cannot read: {exc}") from None
        for document in compose_documents(text, file):
            kind = _kind_of(document, file)
            if kind == "SessionPolicy":
                sessions.append((f"{file}:{document.start_mark.line + 1}", build(document, SessionPolicy, file, "")))
    if len(sessions) > 1:
        where = ", ".join(source for source, _ in sessions)
        raise ConfigError(sessions[1][0].rsplit(":", 1)[0], 0, f"more than one SessionPolicy ({where})")
    session = sessions[0][1].spec if sessions else PolicySet().session
    return PolicySet(session=session, sources=[str(f) for f in files])


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
    if kind.value in _NOT_YET_ENFORCED:
        raise ConfigError(file, kind.start_mark.line + 1, f"kind {kind.value} is not supported by this version yet")
    if kind.value not in _KINDS:
        raise ConfigError(file, kind.start_mark.line + 1, f"unknown kind {kind.value!r}")
    return str(kind.value)
