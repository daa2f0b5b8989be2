"""GuardrailPolicy on its own (contract 15): detectors, actions, streaming, elicitation, loading.

Every secret here is assembled at run time from harmless parts, so no file of the repository
holds anything a secret scanner would take for a credential.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentgw.observability.metrics import Metrics
from agentgw.policy.guardrails import HOLDBACK, MAX_SCAN_DEPTH, Finding, Guard, Guardrails
from agentgw.policy.live import LivePolicies
from agentgw.policy.loader import load_policies
from agentgw.policy.model import (
    ElicitationGuard,
    GuardrailPattern,
    GuardrailPolicy,
    GuardrailPolicySpec,
    Metadata,
    Traffic,
)
from agentgw.policy.secrets import BUILTIN_NAMES
from agentgw.typed_yaml import ConfigError
from agentgw.upstream.http import ConnectionPool


def policy(name: str = "guardrails", **spec: Any) -> GuardrailPolicy:
    """A GuardrailPolicy as its YAML would load; `patterns` entries are (name, regex, action) tuples."""
    spec["patterns"] = [GuardrailPattern(*pattern) for pattern in spec.get("patterns", [])]
    return GuardrailPolicy("agentgw.dev/v1alpha1", "GuardrailPolicy", Metadata(name), GuardrailPolicySpec(**spec))


def guard_of(*policies: GuardrailPolicy, traffic: Traffic = "mcp", target: str = "docs") -> Guard:
    guard = Guardrails(list(policies)).guard(traffic, target)
    assert guard is not None
    return guard


def b64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


ALNUM = "A1b2C3d4E5f6G7h8J9k0"
# What each built-in detector must catch; each value is exactly the text that must disappear.
SECRETS = {
    "aws_access_key_id": "AKIA" + "IOSFODNN7" + "EXAMPLE",
    "github_token": "ghp" + "_" + ALNUM + ALNUM[:16],
    "slack_token": "xox" + "b-" + "1234567890" + "-" + "0987654321" + "-" + ALNUM,
    "api_key": "sk" + "-proj-" + ALNUM + ALNUM,
    "private_key": "-----BEGIN " + "RSA PRIVATE KEY-----\n" + "MIIE" + ALNUM * 3 + "\n-----END RSA PRIVATE KEY-----",
    "jwt": b64url({"alg": "HS256", "typ": "JWT"}) + "." + b64url({"sub": "alice", "exp": 1}) + ".c2lnbmF0dXJl" + ALNUM,
    "payment_card": "4111 " + "1111 " * 2 + "1111",
}
AWS_SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"
MORE_SECRETS = {
    "github_token": ["gho" + "_" + ALNUM * 2, "github" + "_pat_" + ALNUM * 4 + "_" + ALNUM],
    "slack_token": ["xox" + "p-" + "1234-5678-" + ALNUM, "xox" + "s-" + ALNUM, "xox" + "a-2-" + ALNUM],
    "api_key": ["sk" + "-" + ALNUM * 2 + ALNUM[:8], "sk" + "-ant-api03-" + ALNUM * 4],
    "payment_card": ["5555" + "5555" * 2 + "4444", "3782-822463-" + "10005", "6011" + "1111" * 2 + "1117"],
    "private_key": ["-----BEGIN " + "OPENSSH PRIVATE KEY-----\n" + ALNUM + "\n-----END OPENSSH PRIVATE KEY-----"],
}
# Text that looks a little like a secret and must come through untouched.
NEAR_MISSES = [
    "4111 1111 1111 1112",  # fails the Luhn check
    "4111111111111112",
    "a token of thanks, the tokenizer and max_tokens",
    "a task-list, risk-free and desk-booking-system-for-the-2024-offsite",
    "use scikit-learn; sk-learn is its old name",
    "AKIA12345 is too short and AKIAIOSFODNN7EXAMPLEX is too long",
    "ghp_short and github_pat_",
    "xoxb- alone",
    "eyJhbGciOi without a payload",
    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
    "order 2024-05-01T10:00:00Z, id 123e4567-e89b-12d3-a456-426614174000, call +1 555 123 4567",
    "timestamp 1700000000000 and 17000000000000000000",
    "aws_secret_access_key = tooShort",
    AWS_SECRET_KEY + " without a label",
]


def marker(detector: str) -> str:
    return f"[REDACTED:{detector}]"


def result_with(secret: str) -> dict[str, Any]:
    """A tools/call result holding `secret` in every place a server puts text (6 places)."""
    return {
        "content": [
            {"type": "text", "text": f"before {secret} after"},
            {"type": "resource", "resource": {"uri": "file:///notes.txt", "mimeType": "text/plain", "text": secret}},
            {"type": "resource_link", "uri": "file:///x", "name": "x", "description": f"see {secret}"},
        ],
        "structuredContent": {"outer": {"inner": [secret, {"deep": f"({secret})"}], "count": 3}},
        "_meta": {"note": secret},
        "isError": False,
    }


def strings_of(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings_of(item)]
    if isinstance(value, list):
        return [s for item in value for s in strings_of(item)]
    return []


# -- the detectors ----------------------------------------------------------------


ALL_SECRETS = [(name, secret) for name, secret in SECRETS.items()] + [
    (name, secret) for name, secrets in MORE_SECRETS.items() for secret in secrets
]


@pytest.mark.parametrize(("detector", "secret"), ALL_SECRETS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ALL_SECRETS)])
def test_every_detector_is_caught_wherever_the_secret_sits(detector: str, secret: str) -> None:
    value = result_with(secret)
    scan = guard_of(policy()).scan(value)

    assert secret not in json.dumps(scan.value)
    assert scan.findings == [Finding(detector, "redact")] * 6
    assert scan.blocked is None
    assert scan.value["content"][0]["text"] == f"before {marker(detector)} after"
    assert scan.value["structuredContent"]["outer"]["inner"] == [marker(detector), {"deep": f"({marker(detector)})"}]
    assert scan.value["_meta"] == {"note": marker(detector)}
    # Everything else is as it was, keys included.
    assert scan.value["content"][1]["resource"]["uri"] == "file:///notes.txt"
    assert scan.value["structuredContent"]["outer"]["count"] == 3
    assert scan.value["isError"] is False
    assert value == result_with(secret), "the scanned value itself is never changed"


def test_a_secret_in_a_json_rpc_error_is_caught_in_message_and_data() -> None:
    error = {"code": -32000, "message": f"failed with {SECRETS['jwt']}", "data": {"trace": [SECRETS["api_key"]]}}
    scan = guard_of(policy()).scan(error)
    assert scan.value == {
        "code": -32000,
        "message": f"failed with {marker('jwt')}",
        "data": {"trace": [marker("api_key")]},
    }


def test_keys_are_never_scanned() -> None:
    value = {SECRETS["aws_access_key_id"]: "value"}
    scan = guard_of(policy()).scan(value)
    assert scan.value is value and scan.findings == []


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_near_misses_come_through_untouched(text: str) -> None:
    value = result_with(text)
    scan = guard_of(policy(patterns=[("employee-id", "EMP-[0-9]{6}", "redact")])).scan(value)
    assert scan.findings == []
    assert scan.value is value


def test_an_unmatched_value_is_returned_as_the_same_object() -> None:
    value = {"content": [{"type": "text", "text": "nothing to see " * 300}], "structuredContent": {"a": [1, "b"]}}
    guard = guard_of(policy(patterns=[("employee-id", "EMP-[0-9]{6}", "block")]))
    assert guard.scan(value).value is value
    text = "plain text"
    assert guard.scan(text).value is text


def test_only_the_parts_holding_a_secret_are_copied() -> None:
    untouched = {"a": ["x", "y"]}
    value = {"clean": untouched, "dirty": [SECRETS["jwt"]]}
    scanned = guard_of(policy()).scan(value).value
    assert scanned is not value and scanned["clean"] is untouched


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        pytest.param("aws_secret_access_key = {key}", "aws_secret_access_key = ", id="ini"),
        pytest.param("AWS_SECRET_ACCESS_KEY={key}", "AWS_SECRET_ACCESS_KEY=", id="env"),
        pytest.param('{{"SecretAccessKey": "{key}"}}', '{"SecretAccessKey": "', id="json"),
        pytest.param("aws_secret_key: {key}", "aws_secret_key: ", id="yaml"),
        pytest.param('"aws-secret-access-key" => "{key}"', '"aws-secret-access-key" => "', id="ruby"),
    ],
)
def test_the_aws_secret_key_is_redacted_and_its_label_stays(text: str, kept: str) -> None:
    scan = guard_of(policy()).scan(text.format(key=AWS_SECRET_KEY))
    assert scan.value.startswith(kept + marker("aws_secret_access_key"))
    assert AWS_SECRET_KEY not in scan.value
    assert scan.findings == [Finding("aws_secret_access_key", "redact")]


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        ("4111111111111111", True),
        ("4111 1111 1111 1111", True),
        ("4111-1111-1111-1111", True),
        ("378282246310005", True),
        ("3782 822463 10005", True),
        ("5105105105105100", True),
        ("4222222222222", True),  # 13 digits
        ("4111111111111110", False),
        ("4111 1111 1111 1121", False),
        ("378282246310006", False),
    ],
)
def test_a_card_number_is_redacted_only_when_it_passes_the_luhn_check(number: str, valid: bool) -> None:
    scan = guard_of(policy()).scan(f"card {number}.")
    assert scan.value == (f"card {marker('payment_card')}." if valid else f"card {number}.")


# -- actions ------------------------------------------------------------------------


def test_block_reports_the_first_blocking_finding() -> None:
    guard = guard_of(policy(secrets="block"))
    scan = guard.scan(result_with(SECRETS["github_token"]))
    assert scan.blocked == Finding("github_token", "block")
    assert all(finding.action == "block" for finding in scan.findings)
    assert SECRETS["github_token"] not in json.dumps(scan.value), "a blocked value is not relayable either"


def test_warn_relays_the_value_unchanged_and_reports_the_finding() -> None:
    value = result_with(SECRETS["slack_token"])
    scan = guard_of(policy(secrets="warn")).scan(value)
    assert scan.value is value
    assert scan.findings == [Finding("slack_token", "warn")] * 6
    assert scan.blocked is None


def test_off_leaves_the_built_in_detectors_out_but_keeps_the_patterns() -> None:
    guard = guard_of(policy(secrets="off", patterns=[("employee-id", "EMP-[0-9]{6}", "redact")]))
    scan = guard.scan(f"{SECRETS['jwt']} EMP-123456")
    assert scan.value == f"{SECRETS['jwt']} {marker('employee-id')}"
    assert guard.actions["jwt"] == "off"


def test_a_policy_with_every_detector_off_still_guards_sampling() -> None:
    guard = guard_of(policy(secrets="off", sampling="deny"))
    value = {"text": SECRETS["jwt"]}
    assert guard.scan(value).value is value
    assert guard.sampling == "deny"


def test_too_deep_a_value_is_blocked_not_walked() -> None:
    value: Any = SECRETS["jwt"]
    for _ in range(MAX_SCAN_DEPTH + 1):
        value = [value]
    scan = guard_of(policy(secrets="warn")).scan(value)
    assert scan.blocked == Finding("too_deep", "block")


# -- combining policies ---------------------------------------------------------------


def test_several_policies_combine_to_the_strictest() -> None:
    relaxed = policy(
        "relaxed",
        secrets="warn",
        patterns=[("employee-id", "EMP-[0-9]{6}", "warn"), ("project", "PRJ-[A-Z]{3}", "redact")],
        elicitation=ElicitationGuard(sensitive_fields="allow"),
    )
    strict = policy("strict", target_refs=["docs"], secrets="block", patterns=[("employee-id", "E-[0-9]{4}", "block")])
    elicit = policy("no-elicitation", sampling="deny", elicitation=ElicitationGuard(action="deny"))
    guard = guard_of(relaxed, strict, elicit)

    assert guard.policies == ("relaxed", "strict", "no-elicitation")
    assert {name: guard.actions[name] for name in BUILTIN_NAMES} == dict.fromkeys(BUILTIN_NAMES, "block")
    assert guard.actions["employee-id"] == "block" and guard.actions["project"] == "redact"
    assert (guard.sampling, guard.elicitation, guard.sensitive_fields) == ("deny", "deny", "block")
    # Both regexes of the same name, with its strictest action.
    scan = guard.scan("EMP-123456 and E-1234 and PRJ-ABC")
    assert scan.value == f"{marker('employee-id')} and {marker('employee-id')} and {marker('project')}"
    assert scan.blocked == Finding("employee-id", "block")


def test_sensitive_fields_block_wins() -> None:
    allow = policy("a", elicitation=ElicitationGuard(sensitive_fields="allow"))
    block = policy("b", elicitation=ElicitationGuard(sensitive_fields="block"))
    assert guard_of(allow, block).sensitive_fields == "block"
    assert guard_of(allow).sensitive_fields == "allow"


def applying(guardrails: Guardrails, traffic: Traffic, *targets: str) -> tuple[str, ...]:
    """The names of the policies that apply; none when no guard does."""
    guard = guardrails.guard(traffic, *targets)
    return () if guard is None else guard.policies


def test_target_refs_and_applies_to_select_the_policies() -> None:
    guardrails = Guardrails(
        [
            policy("docs-only", target_refs=["docs"]),
            policy("llm-only", applies_to=["llm"], secrets="block"),
        ]
    )
    assert applying(guardrails, "mcp", "search") == ()
    assert applying(guardrails, "a2a", "docs") == ("docs-only",)
    assert applying(guardrails, "llm", "openai") == ("llm-only",)
    assert applying(guardrails, "llm", "docs") == ("docs-only", "llm-only")
    # A virtual server and the member answering for it: a policy naming either applies.
    assert applying(guardrails, "mcp", "all-in-one", "docs") == ("docs-only",)
    assert applying(guardrails, "mcp", "all-in-one", "search") == ()


# -- clues: what a whole string is searched for before the detectors' regex -------------------

PROSE = "The close ran late; the team re-ran it by hand on the 4th, 1.8% off the forecast."


@pytest.mark.parametrize(("detector", "secret"), ALL_SECRETS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ALL_SECRETS)])
def test_a_secret_is_found_when_its_clue_is_in_the_text_just_once(detector: str, secret: str) -> None:
    assert guard_of(policy()).scan(f"{PROSE} {secret}\n{PROSE}").value == f"{PROSE} {marker(detector)}\n{PROSE}"


@pytest.mark.parametrize(
    ("label", "kept"),
    [
        ("\u017fecret_access_key: ", "\u017fecret_access_key: "),  # a long s, which (?i) takes for an s
        ("secret-acce\u017f\u017f-key= ", "secret-acce\u017f\u017f-key= "),  # the longest label there is
        ("AWS_SECRET_KEY=", "AWS_SECRET_KEY="),
    ],
)
def test_an_aws_secret_key_is_found_whatever_the_case_of_its_label(label: str, kept: str) -> None:
    scan = guard_of(policy()).scan(f"{PROSE} {label}{AWS_SECRET_KEY}")
    assert scan.value == f"{PROSE} {kept}{marker('aws_secret_access_key')}"


def test_clues_of_some_detectors_do_not_hide_the_secrets_of_others() -> None:
    near_misses = "sk- xox ghp_ .eyJ AKIA -----BEGIN 4111 1111 key"  # every clue, no secret
    text = f"{near_misses} {SECRETS['jwt']} {SECRETS['payment_card']}"
    expected = f"{near_misses} {marker('jwt')} {marker('payment_card')}"
    assert guard_of(policy()).scan(text).value == expected


@pytest.mark.parametrize(
    ("regex", "text"),
    [
        ("EMP-[0-9]{6}", "EMP-123456"),  # a literal first
        ("[0-9]{6}-EMP", "123456-EMP"),  # a literal last
        ("(?:ab|cd)ZZ[0-9]{2}", "cdZZ42"),  # a literal in the middle
        ("[A-Z]{3}-[0-9]{6}", "XYZ-123456"),  # no literal: always matched
        ("(?i:emp)-[0-9]{6}", "Emp-123456"),  # no literal matched as written
    ],
)
def test_a_custom_pattern_is_found_with_or_without_a_literal_in_it(regex: str, text: str) -> None:
    guard = guard_of(policy(patterns=[("p", regex, "redact")]))
    slack = SECRETS["slack_token"]
    assert guard.scan(f"{PROSE} {text} {slack}").value == f"{PROSE} [REDACTED:p] {marker('slack_token')}"
    assert guard.scan(f"{PROSE} {text[1:]}").value == f"{PROSE} {text[1:]}"


def test_guards_are_compiled_once_and_shared() -> None:
    guardrails = Guardrails([policy("everywhere"), policy("docs", target_refs=["docs"], secrets="block")])
    assert guardrails.guard("mcp", "x") is guardrails.guard("a2a", "y")
    assert guardrails.guard("mcp", "docs") is guardrails.guard("mcp", "docs")
    assert guard_of(policy("a"), target="x")._matcher is guard_of(policy("b", secrets="block"))._matcher


# -- custom patterns --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("regex", "text", "expected"),
    [
        ("EMP-[0-9]{6}", "ids EMP-123456, EMP-12345", "ids [REDACTED:p], EMP-12345"),
        ("(?i:confidential)", "CONFIDENTIAL and Confidential", "[REDACTED:p] and [REDACTED:p]"),
        (r"\d{3}-\d{2}-\d{4}", "ssn 078-05-1120.", "ssn [REDACTED:p]."),
        (r"\bX[a-z]+", "aXbc Xyz", "aXbc [REDACTED:p]"),
        (r"(?:ab|cd)+e", "xxcdabe", "xx[REDACTED:p]"),
        (r"[^ ]EMP", "a-EMP b", "a[REDACTED:p] b"),  # can start with any character
        ("internal\nonly", "internal\nonly", "[REDACTED:p]"),
    ],
)
def test_a_custom_pattern_redacts_what_it_matches(regex: str, text: str, expected: str) -> None:
    guard = guard_of(policy(secrets="off", patterns=[("p", regex, "redact")]))
    assert guard.scan(text).value == expected


@pytest.mark.parametrize("text", ["\u212aelvin", "\u017fecret", "\u0130ce", "\u0131ce", "KELVIN"])
def test_a_case_insensitive_pattern_matches_what_unicode_folds_to_its_letters(text: str) -> None:
    # K (Kelvin sign), long s and the Turkish dotted and dotless i match k, s and i under (?i).
    patterns = [("p", "(?i:kelvin|secret|ice)", "redact")]
    assert guard_of(policy(secrets="off", patterns=patterns)).scan(text).value == "[REDACTED:p]"


CUSTOM_REGEXES = [
    "EMP-[0-9]{2}",
    "(?i:conf)",
    r"\d{2}-\d",
    r"\bX[a-z]+",
    "(?:ab|cd)+e",
    "[^ ]{2}x",
    "a?b",
    "[a-c]x|[0-2]",
    r"(?<=x)y+",
]


@settings(deadline=None, max_examples=300)
@given(
    regex=st.sampled_from(CUSTOM_REGEXES),
    text=st.text(alphabet="EMP-0123456789abcdxyXCONFconf \n", max_size=60),
)
def test_a_custom_pattern_matches_exactly_what_python_matches(regex: str, text: str) -> None:
    guard = guard_of(policy(secrets="off", patterns=[("p", regex, "redact")]))
    assert guard.scan(text).value == re.sub(regex, "[REDACTED:p]", text)


@settings(deadline=None, max_examples=200)
@given(
    regex=st.sampled_from(CUSTOM_REGEXES),
    text=st.text(alphabet="EMP-0123456789abcdxyXCONFconf \n", max_size=60),
    secret=st.sampled_from(list(SECRETS)),
)
def test_custom_patterns_leave_the_built_in_detectors_working(regex: str, text: str, secret: str) -> None:
    guard = guard_of(policy(patterns=[("p", regex, "warn")]))
    scanned = guard.scan(f"{text} {SECRETS[secret]} {text}").value
    assert SECRETS[secret] not in scanned and marker(secret) in scanned


# -- streaming ----------------------------------------------------------------------------

PROSE = "The answer, in plain words and with no secret at all, goes on for a while. " * 5


def stream_out(guard: Guard, chunks: list[str]) -> tuple[str, int]:
    """What the client receives, and the most text ever held back."""
    stream = guard.text_stream()
    out, fed, emitted, held = [], 0, 0, 0
    for chunk in chunks:
        piece = stream.feed(chunk)
        out.append(piece)
        fed += len(chunk)
        emitted += len(piece)
        held = max(held, fed - emitted)
    out.append(stream.finish())
    return "".join(out), held


def split(text: str, *cuts: int) -> list[str]:
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("detector", list(SECRETS))
def test_a_secret_split_across_two_chunks_is_caught_at_every_split_point(detector: str) -> None:
    guard = guard_of(policy())
    secret = SECRETS[detector]
    text = PROSE + secret + " and the end."
    expected = PROSE + marker(detector) + " and the end."
    for cut in range(len(PROSE) - 2, len(PROSE) + len(secret) + 2):
        out, _ = stream_out(guard, split(text, cut))
        assert out == expected, cut


@pytest.mark.parametrize("detector", list(SECRETS))
def test_a_secret_split_across_three_chunks_is_caught_at_every_pair_of_split_points(detector: str) -> None:
    guard = guard_of(policy())
    secret = SECRETS[detector]
    text = PROSE + secret + " and the end."
    expected = PROSE + marker(detector) + " and the end."
    span = range(len(PROSE) - 1, len(PROSE) + len(secret) + 1)
    for first, second in itertools.combinations(span, 2):
        out, _ = stream_out(guard, split(text, first, second))
        assert out == expected, (first, second)


@pytest.mark.parametrize("size", [1, 3, 7, 64, 255, 256, 257, 1000])
def test_plain_text_is_held_back_no_more_than_the_holdback(size: int) -> None:
    text = PROSE * 4
    out, held = stream_out(guard_of(policy()), [text[i : i + size] for i in range(0, len(text), size)])
    assert out == text
    assert held <= HOLDBACK


LONG_SECRETS = {
    "private_key": "-----BEGIN " + "PRIVATE KEY-----\n" + (ALNUM * 3 + "\n") * 40 + "-----END PRIVATE KEY-----",
    "jwt": b64url({"alg": "RS256"}) + "." + b64url({"claims": ALNUM * 30}) + "." + ALNUM * 10,
}


@pytest.mark.parametrize("size", [1, 5, 100])
@pytest.mark.parametrize("detector", list(LONG_SECRETS))
def test_a_secret_longer_than_the_holdback_is_caught_in_small_chunks(detector: str, size: int) -> None:
    secret = LONG_SECRETS[detector]
    assert len(secret) > 2 * HOLDBACK
    text = PROSE + secret + "\n" + PROSE
    stream = guard_of(policy()).text_stream()
    out = "".join(stream.feed(text[i : i + size]) for i in range(0, len(text), size))
    rest = stream.finish()
    assert out + rest == PROSE + marker(detector) + "\n" + PROSE
    assert len(rest) <= HOLDBACK


def test_a_private_key_without_an_end_is_redacted_to_the_end_of_the_stream() -> None:
    secret = "-----BEGIN " + "EC PRIVATE KEY-----\n" + ALNUM * 30
    guard = guard_of(policy())
    out, _ = stream_out(guard, [PROSE, secret[:20], secret[20:]])
    assert out == PROSE + marker("private_key") == guard.scan(PROSE + secret).value


def test_a_blocked_stream_returns_the_text_before_the_secret_then_nothing() -> None:
    stream = guard_of(policy(secrets="block")).text_stream()
    out = [stream.feed(chunk) for chunk in split(PROSE + SECRETS["api_key"] + PROSE, len(PROSE) + 5)]
    assert stream.blocked == Finding("api_key", "block")
    assert "".join(out) == PROSE
    assert stream.feed("more") == "" and stream.finish() == ""


def test_a_warned_stream_is_relayed_unchanged() -> None:
    guard = guard_of(policy(secrets="warn"))
    text = PROSE + SECRETS["jwt"] + PROSE
    stream = guard.text_stream()
    out = "".join(stream.feed(chunk) for chunk in split(text, 10, len(PROSE) + 10)) + stream.finish()
    assert out == text
    assert stream.findings == [Finding("jwt", "warn")]


def test_a_stream_records_its_findings() -> None:
    stream = guard_of(policy()).text_stream()
    stream.feed(SECRETS["jwt"] + PROSE + SECRETS["payment_card"])
    stream.finish()
    assert stream.findings == [Finding("jwt", "redact"), Finding("payment_card", "redact")]


def test_a_split_word_is_not_taken_for_a_key() -> None:
    # "risk-" split so that "sk-..." starts a chunk: what came before still counts.
    text = PROSE + "risk-" + "assessment-document-version-2024-final"
    out, _ = stream_out(guard_of(policy()), split(text, len(PROSE) + 2))
    assert out == text


# -- elicitation -----------------------------------------------------------------------


def form(name: str = "field", **spec: Any) -> dict[str, Any]:
    return {
        "message": "Please fill in",
        "requestedSchema": {"type": "object", "properties": {name: {"type": "string", **spec}}},
    }


SENSITIVE_NAMES = [
    "password", "newPassword", "user_passwd", "passphrase", "passcode", "client_secret", "secrets",
    "token", "apiToken", "access-token", "api_key", "apiKey", "API_KEY", "apikey", "privateKey",
    "private_key", "ssn", "userSSN", "cardNumber", "card_number", "credit_card", "cvv", "CVV2", "cvc",
    "securityCode", "socialSecurityNumber",
]  # fmt: skip
SENSITIVE_TITLES = ["Password", "Your GitHub token", "API key", "Private key (PEM)", "SSN", "Card number", "CVV"]
HARMLESS = ["username", "email", "tokenizer", "max_tokens", "keyboard_layout", "secretary", "passport_country"]


@pytest.mark.parametrize("name", SENSITIVE_NAMES)
def test_an_elicitation_asking_for_a_secret_by_name_is_refused(name: str) -> None:
    assert guard_of(policy()).elicitation_refusal(form(name)) is not None


@pytest.mark.parametrize("title", SENSITIVE_TITLES)
def test_an_elicitation_asking_for_a_secret_by_title_is_refused(title: str) -> None:
    assert guard_of(policy()).elicitation_refusal(form("field1", title=title)) is not None


def test_an_elicitation_with_format_password_is_refused() -> None:
    assert guard_of(policy()).elicitation_refusal(form("field1", format="password")) is not None


@pytest.mark.parametrize("name", HARMLESS)
def test_an_elicitation_asking_for_nothing_secret_is_relayed(name: str) -> None:
    described = form(name, title="Name", description="not your password, just a name")
    assert guard_of(policy()).elicitation_refusal(described) is None


def test_a_nested_property_is_checked_too() -> None:
    schema = {"type": "object", "properties": {"login": {"type": "object", "properties": {"password": {}}}}}
    assert guard_of(policy()).elicitation_refusal({"requestedSchema": schema}) is not None


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("https://auth.example.com/consent", False),
        ("HTTPS://auth.example.com/consent", False),
        ("http://auth.example.com/consent", True),
        ("javascript:alert(1)", True),
        ("https://", True),
        (None, True),
    ],
)
def test_a_url_elicitation_must_be_https(url: str | None, refused: bool) -> None:
    params = {"mode": "url", "message": "Sign in", "elicitationId": "e1", "url": url}
    assert (guard_of(policy()).elicitation_refusal(params) is not None) is refused


def test_sensitive_fields_allow_relays_them() -> None:
    guard = guard_of(policy(elicitation=ElicitationGuard(sensitive_fields="allow")))
    assert guard.elicitation_refusal(form("password")) is None
    assert guard.elicitation_refusal({"mode": "url", "url": "http://x.test"}) is None


def test_elicitation_deny_refuses_every_elicitation() -> None:
    guard = guard_of(policy(elicitation=ElicitationGuard(action="deny", sensitive_fields="allow")))
    assert guard.elicitation_refusal(form("username")) is not None


# -- loading ------------------------------------------------------------------------------

HEAD = "apiVersion: agentgw.dev/v1alpha1\nkind: GuardrailPolicy\nmetadata: {name: guardrails}\nspec:\n"


def write(folder: Path, text: str) -> Path:
    path = folder / "guardrails.yaml"
    path.write_text(text)
    return path


def test_the_contract_example_loads(tmp: Path) -> None:
    text = HEAD + (
        "  targetRefs: [docs]\n  appliesTo: [mcp, a2a, llm]\n  secrets: redact\n  patterns:\n"
        '    - {name: employee-id, regex: "EMP-[0-9]{6}", action: redact}\n'
        "  sampling: deny\n  elicitation: {action: allow, sensitiveFields: block}\n"
    )
    spec = load_policies([str(write(tmp, text))]).guardrails[0].spec
    assert spec.target_refs == ["docs"] and spec.patterns[0].name == "employee-id"
    assert (spec.sampling, spec.elicitation.sensitive_fields) == ("deny", "block")


def test_defaults_are_the_safe_ones(tmp: Path) -> None:
    spec = load_policies([str(write(tmp, HEAD + "  targetRefs: [docs]\n"))]).guardrails[0].spec
    assert (spec.secrets, spec.sampling) == ("redact", "allow")
    assert (spec.elicitation.action, spec.elicitation.sensitive_fields) == ("allow", "block")
    assert spec.applies_to is None


@pytest.mark.parametrize(
    ("body", "line", "words"),
    [
        pytest.param(
            '  patterns:\n    - {name: ok, regex: "x"}\n    - {name: bad, regex: "EMP-[0-9"}\n',
            7,
            "'bad'",
            id="bad-regex",
        ),
        pytest.param("  secrets: redact\n  secretz: block\n", 6, "secretz", id="unknown-key"),
        pytest.param("  patterns:\n    - {name: p, regex: x, mode: fast}\n", 6, "mode", id="unknown-pattern-key"),
        pytest.param("  secrets: scrub\n", 5, "scrub", id="bad-action"),
        pytest.param("  patterns:\n    - {name: p, regex: x, action: mask}\n", 6, "mask", id="bad-pattern-action"),
        pytest.param("  patterns:\n    - {name: p, regex: x}\n    - {name: p, regex: y}\n", 7, "'p'", id="duplicate"),
        pytest.param("  patterns:\n    - {name: jwt, regex: x}\n", 6, "'jwt'", id="built-in-name"),
        pytest.param("  patterns:\n    - {name: too_deep, regex: x}\n", 6, "too_deep", id="reserved-name"),
        pytest.param('  patterns:\n    - {name: "my pattern", regex: x}\n', 6, "my pattern", id="bad-name"),
        pytest.param('  patterns:\n    - {name: p, regex: "(?P<id>x)"}\n', 6, "named groups", id="named-group"),
        pytest.param('  patterns:\n    - {name: p, regex: "(x)\\\\1"}\n', 6, "backreference", id="backreference"),
        pytest.param('  patterns:\n    - {name: p, regex: "x(?i)y"}\n', 6, "'p'", id="global-flag"),
        pytest.param('  patterns:\n    - {name: p, regex: "(?i)x"}\n', 6, "(?i:", id="leading-global-flag"),
        pytest.param('  patterns:\n    - {name: p, regex: "x*"}\n', 6, "empty", id="matches-empty"),
        pytest.param("  targetRefs: []\n", 5, "targetRefs", id="empty-target-refs"),
        pytest.param("  appliesTo: [mcp, ftp]\n", 5, "ftp", id="bad-traffic"),
        pytest.param("  sampling: maybe\n", 5, "maybe", id="bad-sampling"),
        pytest.param("  elicitation: {sensitiveFields: hide}\n", 5, "hide", id="bad-sensitive-fields"),
    ],
)
def test_a_broken_guardrail_policy_is_refused_with_file_and_line(tmp: Path, body: str, line: int, words: str) -> None:
    path = write(tmp, HEAD + body)
    with pytest.raises(ConfigError) as refused:
        load_policies([str(path)])
    assert (refused.value.file, refused.value.line) == (str(path), line)
    assert words in str(refused.value)


async def test_a_guardrail_change_is_picked_up_by_reload_and_a_broken_one_refused(tmp: Path) -> None:
    path = write(tmp, HEAD + "  secrets: warn\n")
    live = LivePolicies([str(path)], load_policies([str(path)]), {}, ConnectionPool(1.0))

    def jwt_action() -> str:
        guard = live.guardrails.guard("mcp", "docs")
        return "none" if guard is None else guard.actions["jwt"]

    assert jwt_action() == "warn"
    path.write_text(HEAD + "  secrets: block\n")
    assert live.reload()
    assert jwt_action() == "block"
    path.write_text(HEAD + '  patterns:\n    - {name: p, regex: "("}\n')
    assert not live.reload()
    assert jwt_action() == "block"


# -- metrics ------------------------------------------------------------------------------


def test_guardrail_actions_are_counted_by_detector_and_action() -> None:
    metrics = Metrics()
    metrics.guardrail_action("jwt", "redact")
    metrics.guardrail_action("jwt", "redact")
    metrics.guardrail_action("employee-id", "block")
    exposition = metrics.exposition().decode()
    assert 'agentgw_guardrail_actions_total{action="redact",detector="jwt"} 2.0' in exposition
    assert 'agentgw_guardrail_actions_total{action="block",detector="employee-id"} 1.0' in exposition
