"""The policy resources policy authors write, shaped like their YAML (contract section 6)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from agentgw.typed_yaml import Duration, yaml_key

API_VERSIONS = ("agentgw.dev/v1alpha1", "kgateway.dev/v1alpha1")
DEFAULT_SESSION_TIMEOUT = Duration(30 * 60.0)
DEFAULT_REFRESH_INTERVAL = Duration(5 * 60.0)
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


@dataclass(frozen=True)
class Metadata:
    name: str
    namespace: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


# -- SessionPolicy -------------------------------------------------------------


# An HTTP header name (RFC 9110 token).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
# Headers that already mean something to the gateway, a client or a proxy: never a session header.
_RESERVED_HEADERS = frozenset(
    {
        "host", "authorization", "cookie", "set-cookie", "content-type", "content-length", "accept",
        "connection", "transfer-encoding", "upgrade", "te", "trailer", "keep-alive", "proxy-authorization",
        "mcp-protocol-version", "mcp-method", "mcp-name", "last-event-id", "traceparent", "tracestate",
        "x-request-id", "x-forwarded-for", "x-forwarded-proto", "forwarded", "origin",
    }
)  # fmt: skip


@dataclass(frozen=True)
class SessionPolicySpec:
    # The second header (beside Mcp-Session-Id) the gateway answers and accepts a session id in,
    # and the one that carries the stateless revision's pinning handle.
    session_id_header: str = field(default="X-MCP-Session-ID", metadata=yaml_key("sessionIdHeader"))
    session_timeout: Duration = field(default=DEFAULT_SESSION_TIMEOUT, metadata=yaml_key("sessionTimeout"))
    # False: each request of the stateless revision goes to any healthy backend (no handle is minted).
    sticky_session: bool = field(default=True, metadata=yaml_key("stickySession"))

    def __post_init__(self) -> None:
        if self.session_timeout <= 0:
            raise ValueError("sessionTimeout must be positive")
        if not _HEADER_NAME.fullmatch(self.session_id_header):
            raise ValueError(f"sessionIdHeader {self.session_id_header!r} is not an HTTP header name")
        if self.second_header in _RESERVED_HEADERS or self.second_header.startswith("mcp-param-"):
            raise ValueError(f"sessionIdHeader {self.session_id_header!r} already means something else")

    @cached_property
    def second_header(self) -> str:
        """The session header beside Mcp-Session-Id, lower-case as the gateway reads and writes it."""
        return self.session_id_header.lower()


# -- SessionAuthPolicy ---------------------------------------------------------


@dataclass(frozen=True)
class JwtValidation:
    issuer: str
    audience: str | list[str] | None = None
    secret_env: str | None = field(default=None, metadata=yaml_key("secretEnv"))
    public_key_file: str | None = field(default=None, metadata=yaml_key("publicKeyFile"))
    jwks_uri: str | None = field(default=None, metadata=yaml_key("jwksUri"))
    algorithms: list[str] | None = None

    def __post_init__(self) -> None:
        sources = [s for s in (self.secret_env, self.public_key_file, self.jwks_uri) if s]
        if len(sources) > 1:
            raise ValueError("jwtValidation: give one of secretEnv, publicKeyFile, jwksUri")
        algorithms = set(self.allowed_algorithms)
        unknown = algorithms - HMAC_ALGORITHMS - ASYMMETRIC_ALGORITHMS
        if unknown:
            raise ValueError(f"jwtValidation.algorithms: not allowed: {', '.join(sorted(unknown))}")
        if not algorithms:
            raise ValueError("jwtValidation.algorithms: at least one algorithm is needed")
        # One issuer never mixes HMAC and asymmetric keys: that is the algorithm-confusion attack.
        if self.secret_env and not algorithms <= HMAC_ALGORITHMS:
            raise ValueError("jwtValidation.algorithms: secretEnv takes HMAC algorithms (HS256/384/512) only")
        if not self.secret_env and algorithms & HMAC_ALGORITHMS:
            raise ValueError("jwtValidation.algorithms: HMAC algorithms need secretEnv")

    @property
    def allowed_algorithms(self) -> list[str]:
        if self.algorithms is not None:
            return self.algorithms
        return ["HS256"] if self.secret_env else ["RS256", "ES256"]

    @property
    def audiences(self) -> list[str]:
        if self.audience is None:
            return []
        return [self.audience] if isinstance(self.audience, str) else self.audience


@dataclass(frozen=True)
class SessionBinding:
    enabled: bool = True
    # How often a JWKS is fetched again; also bounds how long a verified token is cached.
    refresh_interval: Duration = field(default=DEFAULT_REFRESH_INTERVAL, metadata=yaml_key("refreshInterval"))


@dataclass(frozen=True)
class SessionAuthPolicySpec:
    jwt_validation: JwtValidation = field(metadata=yaml_key("jwtValidation"))
    auth_type: Literal["JWT"] = field(default="JWT", metadata=yaml_key("authType"))
    session_binding: SessionBinding = field(default_factory=SessionBinding, metadata=yaml_key("sessionBinding"))


# -- ToolPolicy ----------------------------------------------------------------


@dataclass(frozen=True)
class NameRule:
    """An exact name or a glob, and the scopes any one of which allows it (none listed: no scope needed)."""

    name: str
    allowed_scopes: list[str] | None = field(default=None, metadata=yaml_key("allowedScopes"))


@dataclass(frozen=True)
class PoisoningDetection:
    enabled: bool = True
    action: Literal["quarantine", "warn"] = "quarantine"


@dataclass(frozen=True)
class ToolPolicySpec:
    target_refs: list[str] | None = field(default=None, metadata=yaml_key("targetRefs"))
    default_action: Literal["allow", "deny"] = field(default="deny", metadata=yaml_key("defaultAction"))
    allowed_tools: list[NameRule] = field(default_factory=list, metadata=yaml_key("allowedTools"))
    deny_list: list[str] = field(default_factory=list, metadata=yaml_key("denyList"))
    allowed_prompts: list[NameRule] | None = field(default=None, metadata=yaml_key("allowedPrompts"))
    allowed_resources: list[NameRule] | None = field(default=None, metadata=yaml_key("allowedResources"))
    poisoning_detection: PoisoningDetection = field(
        default_factory=PoisoningDetection, metadata=yaml_key("poisoningDetection")
    )


# -- AgentPolicy and RateLimitPolicy (validated now, enforced with A2A and the LLM upstream)


@dataclass(frozen=True)
class AgentRule:
    name: str
    allowed_scopes: list[str] | None = field(default=None, metadata=yaml_key("allowedScopes"))
    allowed_methods: list[str] | None = field(default=None, metadata=yaml_key("allowedMethods"))


@dataclass(frozen=True)
class AgentPolicySpec:
    target_refs: list[str] | None = field(default=None, metadata=yaml_key("targetRefs"))
    default_action: Literal["allow", "deny"] = field(default="deny", metadata=yaml_key("defaultAction"))
    allowed_agents: list[AgentRule] = field(default_factory=list, metadata=yaml_key("allowedAgents"))
    allowed_methods: list[str] | None = field(default=None, metadata=yaml_key("allowedMethods"))
    deny_list: list[str] = field(default_factory=list, metadata=yaml_key("denyList"))


@dataclass(frozen=True)
class RateLimitTier:
    requests_per_minute: int | None = field(default=None, metadata=yaml_key("requestsPerMinute"))
    tokens_per_minute: int | None = field(default=None, metadata=yaml_key("tokensPerMinute"))

    def __post_init__(self) -> None:
        for value in (self.requests_per_minute, self.tokens_per_minute):
            if value is not None and value < 0:
                raise ValueError("limits must not be negative")


@dataclass(frozen=True)
class RateLimitPolicySpec:
    tiers: dict[str, RateLimitTier]
    applies_to: list[Literal["llm", "mcp", "a2a"]] = field(
        default_factory=lambda: ["llm"], metadata=yaml_key("appliesTo")
    )
    tier_claim: str = field(default="tier", metadata=yaml_key("tierClaim"))
    default_tier: str | None = field(default=None, metadata=yaml_key("defaultTier"))

    def __post_init__(self) -> None:
        if self.default_tier is not None and self.default_tier not in self.tiers:
            raise ValueError(f"defaultTier {self.default_tier!r} is not one of the tiers")


# -- GuardrailPolicy ------------------------------------------------------------

GuardrailAction = Literal["redact", "block", "warn", "off"]
Traffic = Literal["mcp", "a2a", "llm"]
# A pattern's name is the `detector` label of agentgw_guardrail_actions_total.
_PATTERN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# An escape pair, or the two ways a regex can refer to one of its own groups by name or number.
_REGEX_TOKEN = re.compile(r"\\.|\(\?P=|\(\?\(", re.DOTALL)


@dataclass(frozen=True)
class GuardrailPattern:
    """A policy author's own detector: matches are treated like the built-in secrets.

    The regex (Python syntax) is joined with every other detector into one regex, so it must
    stand on its own there: no named groups, no backreferences, flags only scoped (`(?i:...)`).
    """

    name: str
    regex: str
    action: GuardrailAction = "redact"

    def __post_init__(self) -> None:
        if not _PATTERN_NAME.fullmatch(self.name):
            raise ValueError(f"name {self.name!r}: 1 to 64 letters, digits, '_', '.' or '-' (it is a metric label)")
        problem = _regex_problem(self.regex)
        if problem:
            raise ValueError(f"pattern {self.name!r}: {problem}")


def _regex_problem(regex: str) -> str | None:
    try:
        compiled = re.compile(regex)
    except re.error as exc:
        return f"regex does not compile: {exc}"
    if compiled.groupindex:
        return "named groups are not supported: use (...) or (?:...)"
    for token in _REGEX_TOKEN.findall(regex):
        if token in ("(?P=", "(?(") or token[1] in "123456789":
            return "backreferences are not supported"
    try:  # the form agentgw/policy/secrets.py embeds it in
        re.compile(f"(?<=(?=(?:{regex}))[\\s\\S])")
    except re.error as exc:
        return f"regex cannot be combined with the other detectors ({exc}): scope its flags, as in (?i:...)"
    if compiled.match(""):
        return "regex matches the empty string"
    return None


@dataclass(frozen=True)
class ElicitationGuard:
    # deny: no elicitation/create reaches the client.
    action: Literal["allow", "deny"] = "allow"
    # block: an elicitation asking for a secret, or sending the user to a non-https URL, is refused.
    sensitive_fields: Literal["block", "allow"] = field(default="block", metadata=yaml_key("sensitiveFields"))


@dataclass(frozen=True)
class GuardrailPolicySpec:
    """What servers send toward clients, checked (contract 15).

    Defaults are the safe ones once a policy exists: the built-in secret detectors redact,
    sensitive elicitation fields are blocked; sampling stays allowed unless denied.
    """

    # MCP targets, virtual servers, A2A agents or LLM providers; omitted: all of them.
    target_refs: list[str] | None = field(default=None, metadata=yaml_key("targetRefs"))
    # Which traffic; omitted: all three.
    applies_to: list[Traffic] | None = field(default=None, metadata=yaml_key("appliesTo"))
    secrets: GuardrailAction = "redact"
    patterns: list[GuardrailPattern] = field(default_factory=list)
    sampling: Literal["allow", "deny"] = "allow"
    elicitation: ElicitationGuard = field(default_factory=ElicitationGuard)

    def __post_init__(self) -> None:
        # An empty list would switch the policy off without saying so.
        if self.target_refs == []:
            raise ValueError("targetRefs: name at least one target, or omit it for all")
        if self.applies_to == []:
            raise ValueError("appliesTo: give at least one of mcp, a2a, llm, or omit it for all")


# -- the resources -------------------------------------------------------------


@dataclass(frozen=True)
class SessionPolicy:
    api_version: str = field(metadata=yaml_key("apiVersion"))
    kind: str
    metadata: Metadata
    spec: SessionPolicySpec = field(default_factory=SessionPolicySpec)


@dataclass(frozen=True)
class SessionAuthPolicy:
    api_version: str = field(metadata=yaml_key("apiVersion"))
    kind: str
    metadata: Metadata
    spec: SessionAuthPolicySpec


@dataclass(frozen=True)
class ToolPolicy:
    api_version: str = field(metadata=yaml_key("apiVersion"))
    kind: str
    metadata: Metadata
    spec: ToolPolicySpec = field(default_factory=ToolPolicySpec)


@dataclass(frozen=True)
class AgentPolicy:
    api_version: str = field(metadata=yaml_key("apiVersion"))
    kind: str
    metadata: Metadata
    spec: AgentPolicySpec = field(default_factory=AgentPolicySpec)


@dataclass(frozen=True)
class RateLimitPolicy:
    api_version: str = field(metadata=yaml_key("apiVersion"))
    kind: str
    metadata: Metadata
    spec: RateLimitPolicySpec


@dataclass(frozen=True)
class GuardrailPolicy:
    api_version: str = field(metadata=yaml_key("apiVersion"))
    kind: str
    metadata: Metadata
    spec: GuardrailPolicySpec = field(default_factory=GuardrailPolicySpec)


@dataclass(frozen=True)
class PolicySet:
    """Every policy in force; replaced whole when the files change."""

    session: SessionPolicySpec = field(default_factory=SessionPolicySpec)
    auth: list[SessionAuthPolicy] = field(default_factory=list)
    tools: list[ToolPolicy] = field(default_factory=list)
    agents: list[AgentPolicy] = field(default_factory=list)
    rate_limits: list[RateLimitPolicy] = field(default_factory=list)
    guardrails: list[GuardrailPolicy] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def scopes(self) -> list[str]:
        """Every scope the policies name, for RFC 9728 `scopes_supported`."""
        named: set[str] = set()
        for tool_policy in self.tools:
            spec = tool_policy.spec
            for rule in [*spec.allowed_tools, *(spec.allowed_prompts or []), *(spec.allowed_resources or [])]:
                named.update(rule.allowed_scopes or [])
        for agent_policy in self.agents:
            for agent in agent_policy.spec.allowed_agents:
                named.update(agent.allowed_scopes or [])
        return sorted(named)
