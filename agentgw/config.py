"""Typed config shaped like agentgw.yaml (contract section 3), validated once at load."""

from __future__ import annotations

import dataclasses
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from agentgw.typed_yaml import ConfigError, Duration, build_document, coerce, compose_documents, line_of, yaml_key

DEFAULT_CONFIG_FILE = "agentgw.yaml"


_SIXTY_SECONDS = Duration(60.0)
_THIRTY_SECONDS = Duration(30.0)
_TEN_SECONDS = Duration(10.0)
_TWO_SECONDS = Duration(2.0)
_TWO_HUNDRED_MS = Duration(0.2)


@dataclass(frozen=True)
class ServerConfig:
    listen: str = "127.0.0.1:8080"
    metrics_listen: str = "127.0.0.1:9090"
    workers: int = 1
    max_body_bytes: int = 4 * 1024 * 1024
    allowed_hosts: list[str] = field(default_factory=list)
    allowed_origins: list[str] = field(default_factory=list)
    # Slow clients (contract 11): the whole request head, then the whole body, within these.
    header_timeout: Duration = _TEN_SECONDS
    body_timeout: Duration = _THIRTY_SECONDS
    max_connections: int = 4096


StoreType = Literal["memory", "redis", "redis-sentinel", "redis-cluster"]


@dataclass(frozen=True)
class SessionStoreConfig:
    """Where sessions live (contracts 3 and 17): in memory, or in Redis: one server (`url`), a
    Sentinel-watched master (`sentinels`, `service_name`) or a cluster (`nodes`, any reachable subset)."""

    type: StoreType = "memory"
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "agentgw:"
    # The memory store drops its least recently used sessions beyond this many.
    max_sessions: int = 100_000
    sentinels: list[str] = field(default_factory=list)  # HOST:PORT each
    service_name: str = "mymaster"
    nodes: list[str] = field(default_factory=list)  # HOST:PORT each
    username: str | None = None  # every Redis type (ACL)
    password_env: str | None = None
    tls: bool = False

    def addresses(self) -> list[tuple[str, int]]:
        """The sentinels or the cluster nodes, as (host, port)."""
        listed = self.sentinels if self.type == "redis-sentinel" else self.nodes
        return [split_host_port(address, "session_store") for address in listed]


@dataclass(frozen=True)
class BackendConfig:
    """An HTTP backend at `url`, or (MCP targets only) a stdio MCP server started by `command`,
    one child per session (contract 13); `${NAME}` in an `env` value is read from the gateway's
    environment."""

    url: str = ""
    command: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None


@dataclass(frozen=True)
class UpstreamAuthConfig:
    """What the gateway presents to an MCP target's or A2A agent's backends (contract 14). Secrets
    are named, never written here: each comes from an environment variable (`*Env`) or a file
    (`*File`, re-read when it changes)."""

    # Inline secrets are refused by name, the value never echoed.
    REFUSED_KEYS: ClassVar[dict[str, str]] = {
        "token": "inline secrets are refused: use tokenEnv or tokenFile",
        "value": "inline secrets are refused: use valueEnv or valueFile",
        "clientSecret": "inline secrets are refused: use clientSecretEnv or clientSecretFile",
        "client_secret": "inline secrets are refused: use clientSecretEnv or clientSecretFile",
        "secret": "inline secrets are refused: name an environment variable (*Env) or a file (*File)",
        "password": "inline secrets are refused: name an environment variable (*Env) or a file (*File)",
    }

    type: Literal["bearer", "header", "oauth2_client_credentials", "token_exchange"]
    token_env: str | None = field(default=None, metadata=yaml_key("tokenEnv"))
    token_file: str | None = field(default=None, metadata=yaml_key("tokenFile"))
    name: str | None = None  # the header, for type header
    value_env: str | None = field(default=None, metadata=yaml_key("valueEnv"))
    value_file: str | None = field(default=None, metadata=yaml_key("valueFile"))
    token_url: str | None = field(default=None, metadata=yaml_key("tokenUrl"))
    client_id: str | None = field(default=None, metadata=yaml_key("clientId"))
    client_secret_env: str | None = field(default=None, metadata=yaml_key("clientSecretEnv"))
    client_secret_file: str | None = field(default=None, metadata=yaml_key("clientSecretFile"))
    scopes: list[str] = field(default_factory=list)
    resource: str | None = None  # RFC 8707
    audience: str | None = None  # RFC 8693, token_exchange only

    def secret_sources(self) -> dict[str, tuple[str | None, str | None]]:
        """Each secret this type needs, by its key stem: (environment variable, file)."""
        if self.type == "bearer":
            return {"token": (self.token_env, self.token_file)}
        if self.type == "header":
            return {"value": (self.value_env, self.value_file)}
        return {"clientSecret": (self.client_secret_env, self.client_secret_file)}


@dataclass(frozen=True)
class McpTargetConfig:
    name: str
    backends: list[BackendConfig]
    balance: Literal["least_sessions", "round_robin"] = "least_sessions"
    failover: Literal["end_session", "reinitialize"] = "end_session"
    timeout: Duration = _SIXTY_SECONDS
    health_check_interval: Duration = _TWO_SECONDS
    # Tools beyond this many in a backend's listing are left out (contract 11).
    max_tools: int = 1000
    # Live child processes per `command` backend; beyond it initialize answers 503 (contract 13).
    max_processes: int = 32
    auth: UpstreamAuthConfig | None = None


@dataclass(frozen=True)
class VirtualMemberConfig:
    """One target of a virtual server (contract 12): what of it is exposed, under which names."""

    target: str
    prefix: str | None = None  # None: "<target>__"
    tools: list[str] | None = None  # globs; None: every tool the target lists
    prompts: list[str] | None = None

    @property
    def name_prefix(self) -> str:
        return f"{self.target}__" if self.prefix is None else self.prefix


@dataclass(frozen=True)
class VirtualServerConfig:
    """Several targets served as one MCP endpoint at /mcp/v1/<name> (contract 12)."""

    name: str
    members: list[VirtualMemberConfig]


@dataclass(frozen=True)
class McpConfig:
    enabled: bool = True
    tool_validation: bool = True
    targets: list[McpTargetConfig] = field(default_factory=list)
    virtual_servers: list[VirtualServerConfig] = field(default_factory=list)


@dataclass(frozen=True)
class A2AAgentConfig:
    name: str
    backends: list[BackendConfig]
    auth: UpstreamAuthConfig | None = None


@dataclass(frozen=True)
class A2AConfig:
    agents: list[A2AAgentConfig] = field(default_factory=list)
    # Hosts a push-notification webhook may name although they resolve to non-public addresses.
    push_webhook_hosts: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LlmProviderConfig:
    name: str
    type: str
    base_url: str | None = None
    api_key_env: str | None = None
    timeout: Duration = _SIXTY_SECONDS


@dataclass(frozen=True)
class LlmModelAliasConfig:
    name: str
    route: list[str]


@dataclass(frozen=True)
class CircuitBreakerConfig:
    failures: int = 5  # consecutive failures that open the breaker
    open_for: Duration = _THIRTY_SECONDS  # then half-open
    probes: int = 3  # requests let through while half-open


@dataclass(frozen=True)
class RetryConfig:
    attempts: int = 2  # tries of one provider before the next route (when one is left)
    backoff: Duration = _TWO_HUNDRED_MS  # before the first retry; doubled for each further one
    deadline: Duration = _THIRTY_SECONDS  # no retry starts later than this after the request came in


@dataclass(frozen=True)
class LlmConfig:
    providers: list[LlmProviderConfig] = field(default_factory=list)
    models: list[LlmModelAliasConfig] = field(default_factory=list)
    circuit_breaker: CircuitBreakerConfig = field(default_factory=CircuitBreakerConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)


@dataclass(frozen=True)
class Settings:
    server: ServerConfig = field(default_factory=ServerConfig)
    session_store: SessionStoreConfig = field(default_factory=SessionStoreConfig)
    policies: list[str] = field(default_factory=lambda: ["policies/"])
    mcp: McpConfig = field(default_factory=McpConfig)
    a2a: A2AConfig = field(default_factory=A2AConfig)
    llm: LlmConfig = field(default_factory=LlmConfig)
    source: str = field(default="built-in defaults", metadata={"yaml_key": "__source__"})

    def target(self, name: str) -> McpTargetConfig | None:
        return next((t for t in self.mcp.targets if t.name == name), None)

    def virtual_server(self, name: str) -> VirtualServerConfig | None:
        return next((v for v in self.mcp.virtual_servers if v.name == name), None)


# env var -> (section, key, parser)
ENV_OVERRIDES: dict[str, tuple[str, str, Any]] = {
    "AGENTGW_LISTEN": ("server", "listen", str),
    "AGENTGW_METRICS_LISTEN": ("server", "metrics_listen", str),
    "AGENTGW_WORKERS": ("server", "workers", int),
    "AGENTGW_MAX_BODY_BYTES": ("server", "max_body_bytes", int),
    "SESSION_STORE_TYPE": ("session_store", "type", StoreType),
    "REDIS_URL": ("session_store", "url", str),
    "REDIS_SENTINELS": ("session_store", "sentinels", list[str]),
    "REDIS_SERVICE_NAME": ("session_store", "service_name", str),
    "REDIS_CLUSTER_NODES": ("session_store", "nodes", list[str]),
    "AGENTGW_KEY_PREFIX": ("session_store", "key_prefix", str),
    "MCP_ENABLED": ("mcp", "enabled", bool),
    "TOOL_VALIDATION_ENABLED": ("mcp", "tool_validation", bool),
}


def config_path(cli_path: str | None, env: Mapping[str, str]) -> Path | None:
    """`--config`, else AGENTGW_CONFIG, else ./agentgw.yaml if present, else built-in defaults."""
    if cli_path:
        return Path(cli_path)
    if env.get("AGENTGW_CONFIG"):
        return Path(env["AGENTGW_CONFIG"])
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.exists() else None


def load_settings(path: Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Load, apply env overrides, validate. Raises ConfigError naming file, line and key."""
    env = os.environ if env is None else env
    settings = _read(path) if path is not None else Settings()
    settings = _apply_env(settings, env)
    _validate(settings)
    return settings


def _read(path: Path) -> Settings:
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, 0, f"cannot read config: {exc}") from None
    documents = compose_documents(text, file)
    if not documents:
        return Settings(source=file)
    if len(documents) > 1:
        raise ConfigError(file, documents[1].start_mark.line + 1, "expected one YAML document")
    settings: Settings = build_document(documents[0], Settings, file)
    return dataclasses.replace(settings, source=file)


def _apply_env(settings: Settings, env: Mapping[str, str]) -> Settings:
    sections: dict[str, dict[str, Any]] = {}
    for var, (section, key, tp) in ENV_OVERRIDES.items():
        if var not in env:
            continue
        try:
            value = (
                [item.strip() for item in env[var].split(",") if item.strip()]
                if tp == list[str]
                else coerce(env[var], tp)
            )
            sections.setdefault(section, {})[key] = value
        except ValueError as exc:
            raise ConfigError("environment", 0, f"{var}: {exc}") from None
    if "REDIS_URL" in env and "SESSION_STORE_TYPE" not in env:
        sections.setdefault("session_store", {})["type"] = "redis"
    if "AGENTGW_POLICIES" in env:
        settings = dataclasses.replace(settings, policies=[p for p in env["AGENTGW_POLICIES"].split(":") if p])
    for section, changes in sections.items():
        settings = dataclasses.replace(
            settings, **{section: dataclasses.replace(getattr(settings, section), **changes)}
        )
    return settings


_TARGET_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _validate(settings: Settings) -> None:
    file = settings.source
    for listen in (settings.server.listen, settings.server.metrics_listen):
        if listen:
            split_host_port(listen, file)
    if settings.server.workers < 1:
        raise ConfigError(file, 0, "server.workers: must be at least 1")
    if settings.server.workers > 1 and settings.session_store.type == "memory":
        raise ConfigError(file, 0, "server.workers: more than 1 worker needs session_store.type redis")
    _validate_session_store(file, settings.session_store)
    if settings.server.max_body_bytes < 1024:
        raise ConfigError(file, 0, "server.max_body_bytes: must be at least 1024")
    if settings.server.max_connections < 1:
        raise ConfigError(file, 0, "server.max_connections: must be at least 1")
    for target in settings.mcp.targets:
        if target.max_tools < 1:
            raise ConfigError(file, line_of(target), f"mcp.targets.{target.name}.max_tools: must be at least 1")
    _validate_llm(settings)
    _validate_upstreams(file, "mcp.targets", settings.mcp.targets, reserved={"ws"})
    _validate_virtual_servers(file, settings.mcp)
    _validate_upstreams(file, "a2a.agents", settings.a2a.agents, reserved=set())
    for target in settings.mcp.targets:
        _validate_upstream_auth(file, "mcp.targets", target)
    for agent in settings.a2a.agents:
        _validate_upstream_auth(file, "a2a.agents", agent)
    _validate_commands(settings)


def _validate_commands(settings: Settings) -> None:
    """`command` backends run inside the gateway process: one process, so one worker."""
    for target in settings.mcp.targets:
        for backend in target.backends:
            if backend.command is None:
                continue
            key = f"mcp.targets.{target.name}.backends"
            if not backend.command:
                raise ConfigError(settings.source, line_of(backend), f"{key}: command is empty")
            if settings.server.workers > 1:
                message = (
                    f"{key}: command backends run inside the gateway process, which server.workers > 1 "
                    "multiplies; serve them with `agentgw bridge` and name its URL instead"
                )
                raise ConfigError(settings.source, line_of(backend), message)
        if target.max_processes < 1:
            raise ConfigError(
                settings.source, line_of(target), f"mcp.targets.{target.name}.max_processes: must be at least 1"
            )


def _validate_session_store(file: str, store: SessionStoreConfig) -> None:
    line = line_of(store)
    if store.type == "redis-sentinel" and not store.sentinels:
        raise ConfigError(file, line, "session_store.sentinels: at least one sentinel is needed")
    if store.type == "redis-cluster" and not store.nodes:
        raise ConfigError(file, line, "session_store.nodes: at least one cluster node is needed")
    store.addresses()
    if "{" in store.key_prefix or "}" in store.key_prefix:
        # A hash tag in the prefix would put every key in one cluster slot.
        raise ConfigError(file, line, "session_store.key_prefix: braces are reserved for hash tags")


_GLOB = re.compile(r"[*?\[]")


def _validate_virtual_servers(file: str, mcp: McpConfig) -> None:
    """Virtual servers share one namespace with targets, name known targets once each, and expose
    no name twice where that can be known at start (names without glob characters)."""
    names = {t.name for t in mcp.targets}
    for server in mcp.virtual_servers:
        key = f"mcp.virtual_servers.{server.name}"
        if not _TARGET_NAME.match(server.name) or server.name == "ws" or server.name in names:
            raise ConfigError(file, line_of(server), f"mcp.virtual_servers: invalid or taken name {server.name!r}")
        names.add(server.name)
        if not server.members:
            raise ConfigError(file, line_of(server), f"{key}.members: at least one member is needed")
        targets = [m.target for m in server.members]
        for member in server.members:
            if not any(t.name == member.target for t in mcp.targets):
                raise ConfigError(file, line_of(member), f"{key}.members: unknown target {member.target!r}")
            if targets.count(member.target) > 1:
                raise ConfigError(file, line_of(member), f"{key}.members: target {member.target!r} named twice")
        for kind in ("tools", "prompts"):
            _check_exposed_names(file, f"{key}.members", server.members, kind)


def _check_exposed_names(file: str, key: str, members: list[VirtualMemberConfig], kind: str) -> None:
    exposed: dict[str, str] = {}
    for member in members:
        for name in getattr(member, kind) or []:
            if _GLOB.search(name):
                continue
            full = member.name_prefix + name
            if full in exposed:
                message = f"{key}: {kind[:-1]} name {full!r} exposed by both {exposed[full]!r} and {member.target!r}"
                raise ConfigError(file, line_of(member), message)
            exposed[full] = member.target


def _validate_upstreams(
    file: str, key: str, upstreams: list[McpTargetConfig] | list[A2AAgentConfig], reserved: set[str]
) -> None:
    """MCP targets and A2A agents alike: URL-safe unique names, at least one http(s) backend each."""
    names: set[str] = set()
    for upstream in upstreams:
        if not _TARGET_NAME.match(upstream.name) or upstream.name in reserved:
            raise ConfigError(file, line_of(upstream), f"{key}: invalid name {upstream.name!r}")
        if upstream.name in names:
            raise ConfigError(file, line_of(upstream), f"{key}: duplicate name {upstream.name!r}")
        names.add(upstream.name)
        if not upstream.backends:
            raise ConfigError(
                file, line_of(upstream), f"{key}.{upstream.name}.backends: at least one backend is needed"
            )
        for backend in upstream.backends:
            if backend.command is not None and key == "mcp.targets":
                if backend.url:
                    message = f"{key}.{upstream.name}.backends: a backend has a url or a command, not both"
                    raise ConfigError(file, line_of(backend), message)
                continue
            if not backend.url.startswith(("http://", "https://")):
                message = f"{key}.{upstream.name}.backends: {backend.url!r} is not an http(s) URL"
                raise ConfigError(file, line_of(backend), message)


_AUTH_NEEDS: dict[str, tuple[str, ...]] = {
    "bearer": (),
    "header": ("name",),
    "oauth2_client_credentials": ("token_url", "client_id"),
    "token_exchange": ("token_url", "client_id"),
}
_OAUTH_KEYS = ("token_url", "client_id", "client_secret_env", "client_secret_file", "scopes", "resource")
# The keys each type reads: any other key set is a mistake, refused rather than silently unused.
_AUTH_KEYS_OF_TYPE: dict[str, tuple[str, ...]] = {
    "bearer": ("token_env", "token_file"),
    "header": ("name", "value_env", "value_file"),
    "oauth2_client_credentials": _OAUTH_KEYS,
    "token_exchange": (*_OAUTH_KEYS, "audience"),
}
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Headers the gateway writes itself, or that frame the request: an `auth` header may not replace them.
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "content-type",
        "accept",
        "te",
        "upgrade",
        "mcp-session-id",
        "mcp-protocol-version",
        "mcp-method",
        "mcp-name",
        "last-event-id",
    }
)


def _validate_upstream_auth(file: str, section: str, upstream: McpTargetConfig | A2AAgentConfig) -> None:
    """An `auth` block complete for its type, with nothing in it its type does not read."""
    auth = upstream.auth
    if auth is None:
        return
    key, line = f"{section}.{upstream.name}.auth", line_of(auth)
    for field_ in dataclasses.fields(auth):
        if field_.name not in ("type", *_AUTH_KEYS_OF_TYPE[auth.type]) and getattr(auth, field_.name) not in (None, []):
            yaml_name = field_.metadata.get("yaml_key", field_.name)
            raise ConfigError(file, line, f"{key}.{yaml_name}: not a key of type {auth.type}")
    for needed in _AUTH_NEEDS[auth.type]:
        if not getattr(auth, needed):
            yaml_name = next(f.metadata.get("yaml_key", f.name) for f in dataclasses.fields(auth) if f.name == needed)
            raise ConfigError(file, line, f"{key}.{yaml_name}: required for type {auth.type}")
    if auth.name is not None and (not _HEADER_NAME.match(auth.name) or auth.name.lower() in _RESERVED_HEADERS):
        raise ConfigError(file, line, f"{key}.name: {auth.name!r} is not a header the gateway may set")
    if auth.token_url is not None:
        parts = urllib.parse.urlsplit(auth.token_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
            raise ConfigError(file, line, f"{key}.tokenUrl: not an http(s) URL with a host and no credentials")
    for stem, (variable, secret_file) in auth.secret_sources().items():
        if (variable is None) == (secret_file is None) or variable == "" or secret_file == "":
            raise ConfigError(file, line, f"{key}.{stem}Env or {key}.{stem}File: exactly one is required")


def check_upstream_secrets(settings: Settings, env: Mapping[str, str]) -> None:
    """Each secret an `auth` block names is there now: a missing one stops `serve` at start (contract
    14) rather than failing its first call. Commands that only read the config do not need them."""
    upstreams = [("mcp.targets", t) for t in settings.mcp.targets] + [("a2a.agents", a) for a in settings.a2a.agents]
    for section, upstream in upstreams:
        if upstream.auth is None:
            continue
        key, line = f"{section}.{upstream.name}.auth", line_of(upstream.auth)
        for stem, (variable, secret_file) in upstream.auth.secret_sources().items():
            if variable is not None and not env.get(variable, "").strip():
                raise ConfigError(settings.source, line, f"{key}.{stem}Env: environment variable {variable} is not set")
            if secret_file is not None:
                _check_secret_file(settings.source, line, f"{key}.{stem}File", secret_file)


def _check_secret_file(source: str, line: int, key: str, secret_file: str) -> None:
    try:
        if not Path(secret_file).read_text(encoding="utf-8").strip():
            raise ConfigError(source, line, f"{key}: {secret_file} is empty")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, line, f"{key}: cannot read {secret_file} ({exc.__class__.__name__})") from None


def _validate_llm(settings: Settings) -> None:
    from agentgw.upstream.llm.provider import provider_types

    file, llm = settings.source, settings.llm
    types = provider_types()
    for provider in llm.providers:
        if provider.type not in types:
            known = ", ".join(sorted(types))
            message = f"llm.providers.{provider.name}.type: unknown provider type {provider.type!r} ({known})"
            raise ConfigError(file, line_of(provider), message)
    names = {p.name for p in llm.providers}
    for alias in llm.models:
        for entry in alias.route:
            if entry.partition("/")[0] not in names or not entry.partition("/")[2]:
                message = f"llm.models.{alias.name}.route: {entry!r} names no configured provider/model"
                raise ConfigError(file, line_of(alias), message)
    counts = {
        "llm.retry.attempts": (llm.retry, llm.retry.attempts),
        "llm.circuit_breaker.failures": (llm.circuit_breaker, llm.circuit_breaker.failures),
        "llm.circuit_breaker.probes": (llm.circuit_breaker, llm.circuit_breaker.probes),
    }
    for key, (section, value) in counts.items():
        if value < 1:
            raise ConfigError(file, line_of(section), f"{key}: must be at least 1")


def split_host_port(listen: str, file: str = "config") -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(file, 0, f"listen address {listen!r} is not HOST:PORT")
    return host.strip("[]"), int(port)
