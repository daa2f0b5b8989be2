"""The policy resources policy authors write, shaped like their YAML."""

from __future__ import annotations

from dataclasses import dataclass, field

from agentgw.typed_yaml import Duration, yaml_key

API_VERSIONS = ("agentgw.dev/v1alpha1", "kgateway.dev/v1alpha1")
DEFAULT_SESSION_TIMEOUT = Duration(30 * 60.0)


@dataclass(frozen=True)
class Metadata:
    name: str
    namespace: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionPolicySpec:
    session_id_header: str = field(default="X-MCP-Session-ID", metadata=yaml_key("sessionIdHeader"))
    session_timeout: Duration = field(default=DEFAULT_SESSION_TIMEOUT, metadata=yaml_key("sessionTimeout"))
    sticky_session: bool = field(default=True, metadata=yaml_key("stickySession"))

    def __post_init__(self) -> None:
        if self.session_timeout <= 0:
            raise ValueError("sessionTimeout must be positive")


@dataclass(frozen=True)
class SessionPolicy:
    api_version: str = field(metadata=yaml_key("apiVersion"))
    kind: str
    metadata: Metadata
    spec: SessionPolicySpec = field(default_factory=SessionPolicySpec)


@dataclass(frozen=True)
class PolicySet:
    """Every policy in force; replaced whole when the files change."""

    session: SessionPolicySpec = field(default_factory=SessionPolicySpec)
    sources: list[str] = field(default_factory=list)
