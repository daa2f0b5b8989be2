"""PolicyEngine.decide on its own (contract 6), and the strict JSON-RPC parser it relies on (5.5)."""

from __future__ import annotations

import functools
import json
import logging
import sys
import unicodedata
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agentgw import jsonrpc
from agentgw.errors import GatewayError
from agentgw.policy.agents import AgentPolicyEngine
from agentgw.policy.engine import TOOL_NAME, Decision, PolicyEngine, normalise
from agentgw.policy.model import AgentPolicy, AgentPolicySpec, Metadata, NameRule, ToolPolicy, ToolPolicySpec

READ = frozenset({"read:documents"})
NO_SCOPES: frozenset[str] = frozenset()
DENIED = ("exec_shell", "read_credentials")
RELAXED = settings(deadline=None, max_examples=300)


def policy(name: str = "tools", **spec: Any) -> ToolPolicy:
    """A ToolPolicy as its YAML would load; `allowedTools` entries are (name, scopes) pairs or names."""
    for key in ("allowed_tools", "allowed_prompts", "allowed_resources"):
        if spec.get(key) is not None:
            spec[key] = [NameRule(r) if isinstance(r, str) else NameRule(r[0], list(r[1])) for r in spec[key]]
    return ToolPolicy("agentgw.dev/v1alpha1", "ToolPolicy", Metadata(name), ToolPolicySpec(**spec))


def docs_engine() -> PolicyEngine:
    """The shape of contract 6's example policy."""
    return PolicyEngine(
        [
            policy(
                allowed_tools=[
                    ("search_documents", ["read:documents"]),
                    ("send_email", ["write:email"]),
                    "add",
                    "exec_shell",  # allowed and denied: the deny list must win
                    ("search_*", ["read:documents", "admin"]),
                ],
                deny_list=[*DENIED, "*_secret*"],
            )
        ]
    )


def decide(engine: PolicyEngine, name: str, scopes: frozenset[str] = READ, target: str = "docs") -> Decision:
    return engine.decide(target, "tool", name, scopes)


# -- the rules ---------------------------------------------------------------------


def test_deny_list_wins_over_an_allow_rule_for_the_same_tool() -> None:
    decision = decide(docs_engine(), "exec_shell")
    assert not decision.allowed
    assert decision.reason == "deny_list"
    assert decision.policy == "tools"


def test_deny_list_wins_across_policies() -> None:
    engine = PolicyEngine(
        [policy("permissive", allowed_tools=["add"], default_action="allow"), policy("strict", deny_list=["add"])]
    )
    decision = decide(engine, "add")
    assert (decision.allowed, decision.reason, decision.policy) == (False, "deny_list", "strict")


def test_every_applying_policy_must_allow() -> None:
    engine = PolicyEngine([policy("a", allowed_tools=["add"]), policy("b", allowed_tools=["search_documents"])])
    assert decide(engine, "add").reason == "not_allowed"
    assert decide(engine, "search_documents").reason == "not_allowed"


def test_missing_scope_names_the_scopes_that_would_allow_the_call() -> None:
    decision = decide(docs_engine(), "send_email", READ)
    assert (decision.allowed, decision.reason) == (False, "missing_scope")
    assert decision.required_scopes == ("write:email",)


def test_any_one_of_the_allowed_scopes_is_enough() -> None:
    engine = docs_engine()
    assert decide(engine, "send_email", frozenset({"write:email"})).allowed
    assert decide(engine, "search_reports", frozenset({"admin"})).allowed
    assert decide(engine, "search_reports", frozenset({"read:documents", "other"})).allowed


@pytest.mark.parametrize("scopes", [{"READ:DOCUMENTS"}, {"read:documents:all"}, {"read"}, {"read:documents "}])
def test_scopes_match_exactly(scopes: set[str]) -> None:
    assert decide(docs_engine(), "search_documents", frozenset(scopes)).reason == "missing_scope"


def test_rule_without_scopes_needs_none() -> None:
    assert decide(docs_engine(), "add", NO_SCOPES).allowed


def test_tool_on_no_list_is_not_allowed_by_default() -> None:
    decision = decide(docs_engine(), "delete_everything")
    assert (decision.allowed, decision.reason) == (False, "not_allowed")


def test_default_action_allow_lets_an_unlisted_tool_run() -> None:
    engine = PolicyEngine([policy(default_action="allow", deny_list=["*_secret*"])])
    assert decide(engine, "delete_everything", NO_SCOPES).allowed
    assert decide(engine, "get_secret_key", NO_SCOPES).reason == "deny_list"


def test_default_action_allow_still_checks_the_scopes_of_a_listed_tool() -> None:
    engine = PolicyEngine([policy(default_action="allow", allowed_tools=[("send_email", ["write:email"])])])
    assert decide(engine, "send_email", NO_SCOPES).reason == "missing_scope"


@pytest.mark.parametrize("name", ["get_secret_key", "my_secret", "top_secrets_list", "GET_SECRET_KEY"])
def test_glob_deny_blocks_every_matching_tool(name: str) -> None:
    assert decide(docs_engine(), name).reason == "deny_list"


@pytest.mark.parametrize("name", ["secretary", "secret_key", "secretkey"])
def test_glob_deny_leaves_other_names_alone(name: str) -> None:
    assert decide(docs_engine(), name, frozenset({"admin"})).reason != "deny_list"


def test_glob_allow_rule_covers_matching_names() -> None:
    assert decide(docs_engine(), "search_reports").allowed
    assert decide(docs_engine(), "searchreports").reason == "not_allowed"


def test_deny_list_entries_are_normalised_too() -> None:
    engine = PolicyEngine([policy(allowed_tools=["exec_shell"], deny_list=["Exec_Shell", "\uff52\uff4d"])])
    assert decide(engine, "exec_shell").reason == "deny_list"
    assert decide(engine, "RM", NO_SCOPES).reason == "deny_list"


EVASIONS = {
    "mixed-case": "Exec_Shell",
    "upper-case": "EXEC_SHELL",
    "leading-space": " exec_shell",
    "trailing-space": "exec_shell ",
    "trailing-newline": "exec_shell\n",
    "full-width": "\uff45\uff58\uff45\uff43_\uff53\uff48\uff45\uff4c\uff4c",
    "zero-width-space": "exec\u200b_shell",
    "zero-width-joiner": "exec_\u200dshell",
    "long-s": "exec_\u017fhell",
    "cyrillic-e": "ex\u0435c_shell",
    "nul": "exec_shell\u0000",
    "tag-characters": "exec_shell\U000e0001\U000e0069\U000e0064",
    "soft-hyphen": "exec\u00ad_shell",
    "bidi-override": "\u202eexec_shell",
    "math-bold": "\U0001d41e\U0001d431\U0001d41e\U0001d41c_shell",
    "lone-surrogate": "exec_shell\ud800",
}


@pytest.mark.parametrize("name", list(EVASIONS.values()), ids=list(EVASIONS))
@pytest.mark.parametrize("default_action", ["deny", "allow"])
def test_evasions_of_a_denied_name_are_refused(name: str, default_action: str) -> None:
    engine = PolicyEngine([policy(default_action=default_action, allowed_tools=["exec_shell"], deny_list=[*DENIED])])
    decision = decide(engine, name)
    assert not decision.allowed
    assert decision.reason in ("deny_list", "not_allowed")


@pytest.mark.parametrize("name", ["", "a" * 129, "two words", "a/b", "a:b", "caf\u00e9", "add\n", "add\t"])
def test_a_name_breaking_mcps_rule_is_not_allowed_even_under_default_allow(name: str) -> None:
    engine = PolicyEngine([policy(default_action="allow")])
    assert decide(engine, name).reason == "not_allowed"


@pytest.mark.parametrize("name", ["a" * 128, "A-Za-z0-9_.-", "tool.v2", "x"])
def test_every_name_mcps_rule_allows_can_be_allowed(name: str) -> None:
    assert decide(PolicyEngine([policy(default_action="allow")]), name).allowed


def test_target_refs_limit_a_policy_to_its_targets() -> None:
    engine = PolicyEngine([policy(target_refs=["docs"], deny_list=["add"])])
    assert engine.governs("docs") and not engine.governs("other")
    assert decide(engine, "add", target="docs").reason == "deny_list"
    assert decide(engine, "add", target="other").allowed


def test_a_target_no_policy_governs_is_unrestricted() -> None:
    engine = PolicyEngine([])
    assert not engine.governs("docs")
    assert decide(engine, "exec_shell", NO_SCOPES).allowed


def test_prompts_and_resources_are_unrestricted_unless_a_list_is_given() -> None:
    engine = docs_engine()
    assert engine.decide("docs", "prompt", "greeting", NO_SCOPES).allowed
    assert engine.decide("docs", "resource", "docs://readme", NO_SCOPES).allowed


def test_prompts_and_resources_follow_their_lists() -> None:
    engine = PolicyEngine(
        [
            policy(
                allowed_prompts=[("greeting", ["read:documents"])],
                allowed_resources=["docs://public/*"],
            )
        ]
    )
    assert engine.decide("docs", "prompt", "greeting", READ).allowed
    assert engine.decide("docs", "prompt", "greeting", NO_SCOPES).reason == "missing_scope"
    assert engine.decide("docs", "prompt", "other", READ).reason == "not_allowed"
    assert engine.decide("docs", "resource", "docs://public/readme", NO_SCOPES).allowed
    assert engine.decide("docs", "resource", "docs://private/keys", READ).reason == "not_allowed"
    # The tool list gave no tools and the default is deny: prompts' lists do not open tools.
    assert engine.decide("docs", "tool", "greeting", READ).reason == "not_allowed"


def test_the_same_question_gets_the_same_answer() -> None:
    engine = docs_engine()
    assert decide(engine, "send_email", READ) == decide(engine, "send_email", READ)
    assert decide(engine, "send_email", frozenset({"write:email"})).allowed


# -- properties of decide ------------------------------------------------------------

ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=140)
SCOPES = st.frozensets(st.sampled_from(["read:documents", "write:email", "admin", "READ:DOCUMENTS", ""]))
KINDS = st.sampled_from(["tool", "prompt", "resource"])


@RELAXED
@given(name=ANY_TEXT, kind=KINDS, scopes=SCOPES)
def test_decide_answers_every_name_with_a_decision(name: str, kind: Any, scopes: frozenset[str]) -> None:
    decision = docs_engine().decide("docs", kind, name, scopes)
    assert isinstance(decision, Decision)
    if decision.allowed and kind == "tool":
        assert TOOL_NAME.fullmatch(name)
    if not decision.allowed:
        assert decision.reason in ("deny_list", "missing_scope", "not_allowed")


@functools.cache
def spellings() -> dict[str, list[str]]:
    """For each piece of text, the single characters whose NFKC+casefold is that piece."""
    letters = set("".join(DENIED))
    found: dict[str, list[str]] = {}
    for codepoint in range(sys.maxunicode + 1):
        char = chr(codepoint)
        if unicodedata.category(char) in ("Cs", "Cn"):
            continue
        folded = normalise(char)
        if folded and set(folded) <= letters:
            found.setdefault(folded, []).append(char)
    return found


@st.composite
def spelled_like(draw: st.DrawFn, target: str) -> str:
    """A name built piece by piece from characters that fold into `target`."""
    out, rest = [], target
    while rest:
        pieces = sorted(piece for piece in spellings() if rest.startswith(piece))
        piece = draw(st.sampled_from(pieces))
        out.append(draw(st.sampled_from(spellings()[piece])))
        rest = rest[len(piece) :]
    return "".join(out)


@RELAXED
@given(data=st.data(), denied=st.sampled_from(DENIED), kind=KINDS, default_action=st.sampled_from(["allow", "deny"]))
def test_no_spelling_of_a_denied_name_is_allowed(
    data: st.DataObject, denied: str, kind: Any, default_action: str
) -> None:
    name = data.draw(spelled_like(denied))
    assume(unicodedata.normalize("NFKC", name).casefold() == denied)
    # Every list allows everything: only the deny list stands between the name and the backend.
    everything = [denied, "*"]
    engine = PolicyEngine(
        [
            policy(
                default_action=default_action,
                allowed_tools=everything,
                allowed_prompts=everything,
                allowed_resources=everything,
                deny_list=[*DENIED],
            )
        ]
    )
    assert not engine.decide("docs", kind, name, frozenset()).allowed


@RELAXED
@given(prefix=ANY_TEXT, suffix=ANY_TEXT, secret=st.data())
def test_no_spelling_of_a_name_matching_a_denied_glob_is_allowed(prefix: str, suffix: str, secret: Any) -> None:
    name = prefix + secret.draw(st.sampled_from(["_secret", "_SECRET", "_\uff53ecret", "_\u017fecret"])) + suffix
    assume(fnmatch_folded(name, "*_secret*"))
    engine = PolicyEngine([policy(default_action="allow", allowed_tools=["*"], deny_list=["*_secret*"])])
    assert not engine.decide("docs", "tool", name, frozenset()).allowed


def fnmatch_folded(name: str, pattern: str) -> bool:
    from fnmatch import fnmatchcase

    return fnmatchcase(normalise(name), pattern)


# -- properties of the JSON-RPC parser -------------------------------------------------

RPC_KEYS = st.sampled_from(["jsonrpc", "id", "method", "params", "name", "uri", "arguments", "result", "error"])
RPC_STRINGS = st.sampled_from(["2.0", "tools/call", "prompts/get", "resources/read", "initialize", "exec_shell"])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | RPC_STRINGS
    | ANY_TEXT
)
JSONISH = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(RPC_KEYS | ANY_TEXT, children, max_size=5),
    max_leaves=30,
)
MESSAGES = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0") | JSONISH, "method": RPC_STRINGS | JSONISH},
    optional={"id": JSONISH, "params": st.dictionaries(RPC_KEYS, JSONISH | RPC_STRINGS, max_size=4) | JSONISH},
)


def read_like_the_gateway(body: bytes) -> None:
    """What the gateway does with a body before any decision: parse, check, name, re-serialise."""
    payload = jsonrpc.parse(body)
    messages = payload if isinstance(payload, list) else [payload]
    for message in messages:
        jsonrpc.named_target(jsonrpc.check_message(message))
    jsonrpc.serialise(payload)


def only_gateway_errors(body: bytes) -> None:
    try:
        read_like_the_gateway(body)
    except GatewayError:
        pass  # ParseError / InvalidRequest: a 400 with a JSON-RPC code, never a 500


@RELAXED
@given(body=st.binary(max_size=512))
def test_parser_raises_only_gateway_errors_for_arbitrary_bytes(body: bytes) -> None:
    only_gateway_errors(body)


@RELAXED
@given(value=JSONISH | MESSAGES | st.lists(MESSAGES, max_size=3), ensure_ascii=st.booleans())
def test_parser_raises_only_gateway_errors_for_json_like_values(value: Any, ensure_ascii: bool) -> None:
    try:
        text = json.dumps(value, ensure_ascii=ensure_ascii)
    except (ValueError, TypeError):
        return
    only_gateway_errors(text.encode("utf-8", "surrogatepass"))


@RELAXED
@given(depth=st.integers(min_value=0, max_value=5000), opener=st.sampled_from(["[", '{"a":']))
def test_parser_refuses_deep_nesting_with_a_gateway_error(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    body = (
        '{"jsonrpc":"2.0","id":1,"method":"x","params":{"v":' + opener * depth + "1" + closer * depth + "}}"
    ).encode()
    only_gateway_errors(body)


@pytest.mark.parametrize(
    "body, code",
    [
        (b"\xef\xbb\xbf{}", -32700),
        ('{"a":"\ud800"}'.encode("utf-8", "surrogatepass"), -32700),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"v":NaN}}', -32700),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"v":1e999}}', -32700),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"v":' + b"9" * 5000 + b"}}", -32700),
        (b'{"jsonrpc":"2.0","id":1,"id":2,"method":"x"}', -32600),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":1}}', -32600),
        (b'{"jsonrpc":"2.0","id":1.5,"method":"x"}', -32600),
        (b'{"jsonrpc":"2.0","id":true,"method":"x"}', -32600),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}', -32600),
        (b"[" * 65 + b"]" * 65, -32600),
    ],
    ids=["bom", "lone-surrogate-bytes", "nan", "overflow", "huge-int", "duplicate-key", "name-not-string",
         "float-id", "bool-id", "params-array", "too-deep"],
)  # fmt: skip
def test_bad_input_gets_its_jsonrpc_code(body: bytes, code: int) -> None:
    with pytest.raises(GatewayError) as raised:
        read_like_the_gateway(body)
    assert raised.value.jsonrpc_code == code


def test_a_lone_surrogate_escape_cannot_be_forwarded() -> None:
    with pytest.raises(GatewayError) as raised:
        read_like_the_gateway(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a\\ud800"}}')
    assert raised.value.jsonrpc_code == -32700


# -- evaluation errors: logged with the policy's name, then denied ---------------------------------


def failures_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "agentgw.policy" and r.levelno >= logging.ERROR]


def test_a_rule_that_cannot_be_evaluated_denies_and_is_logged_with_its_policy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A policy built in code, not loaded from YAML, can hold what the loader would refuse.
    spec = ToolPolicySpec(allowed_tools=[NameRule("search_*", allowed_scopes=5)])  # type: ignore[arg-type]
    broken = ToolPolicy("agentgw.dev/v1alpha1", "ToolPolicy", Metadata("broken-scopes"), spec)
    engine = PolicyEngine([policy("open", default_action="allow"), broken])

    with caplog.at_level(logging.ERROR, logger="agentgw.policy"):
        decision = decide(engine, "search_documents")
        allowed = decide(engine, "add")  # names the broken rule does not match are decided as before

    assert (decision.allowed, decision.reason, decision.policy) == (False, "not_allowed", "broken-scopes")
    assert decision.rule == "evaluation failed"
    assert allowed.allowed is False and allowed.reason == "not_allowed"  # broken's defaultAction is deny
    [record] = failures_logged(caplog)
    assert "broken-scopes" in record.getMessage() and "search_documents" in record.getMessage()
    assert record.exc_info is not None


def test_an_agent_policy_that_cannot_be_evaluated_denies_and_is_logged_with_its_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spec = AgentPolicySpec(default_action="allow", deny_list=[5])  # type: ignore[list-item]
    engine = AgentPolicyEngine([AgentPolicy("agentgw.dev/v1alpha1", "AgentPolicy", Metadata("agents"), spec)])

    with caplog.at_level(logging.ERROR, logger="agentgw.policy"):
        decision = engine.decide("helper", "message/send", READ)

    assert (decision.allowed, decision.reason, decision.policy) == (False, "not_allowed", "agents")
    [record] = failures_logged(caplog)
    assert "agents" in record.getMessage() and "helper" in record.getMessage()
