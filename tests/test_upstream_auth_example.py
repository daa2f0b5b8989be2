"""examples/upstream_auth.yaml as an operator copies it: it loads with the secrets it names, each
`auth` type presents what the README's "Credentials the gateway presents upstream" says, and that
section's walkthrough matches the example and the flags of examples/token_endpoint.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from agentgw.config import Settings, UpstreamAuthConfig, check_upstream_secrets, load_settings
from agentgw.typed_yaml import ConfigError
from agentgw.upstream.credentials import ClientCredentials, TokenExchange, credentials_for
from agentgw.upstream.http import ConnectionPool
from tests.support import ROOT

EXAMPLE = ROOT / "examples" / "upstream_auth.yaml"
TOKEN_ENDPOINT = ROOT / "examples" / "token_endpoint.py"
README = ROOT / "README.md"
SECTION_HEADING = "## Credentials the gateway presents upstream"
LOCAL_TOKEN_URL = "http://127.0.0.1:9400/oauth2/token"
GITHUB_MCP_URL = "https://api.githubcopilot.com/mcp/"
GITHUB_TOKEN = "github-token-of-the-test"
CLIENT_SECRET = "client-secret-of-the-test"
CRM_KEY = "crm-key-of-the-test"
ENV = {"GITHUB_TOKEN": GITHUB_TOKEN, "AGENTGW_CLIENT_SECRET": CLIENT_SECRET}
HELP_TIMEOUT = 60.0


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The example loaded as `serve` loads it, from a working directory holding its secret file."""
    # The example's valueFile is relative: read from the working directory, as the walkthrough runs it.
    monkeypatch.chdir(tmp_path)
    key_file = tmp_path / "secrets" / "crm-key"
    key_file.parent.mkdir()
    key_file.write_text(f"  {CRM_KEY}\n")
    loaded = load_settings(EXAMPLE, env=ENV)
    check_upstream_secrets(loaded, ENV)
    return loaded


def auth_of(settings: Settings, name: str) -> UpstreamAuthConfig:
    upstream = settings.target(name) or next(a for a in settings.a2a.agents if a.name == name)
    assert upstream.auth is not None, f"{name} has no auth block"
    return upstream.auth


def readme_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION_HEADING)
    end = text.find("\n## ", start + len(SECTION_HEADING))
    return text[start : end if end != -1 else len(text)]


def token_endpoint_command() -> str:
    """The walkthrough's command line for examples/token_endpoint.py, continuation lines joined."""
    command = r"^\S*python3? examples/token_endpoint\.py((?:[^\n]*\\\n)*[^\n]*)"
    found = re.search(command, readme_section(), re.MULTILINE)
    assert found is not None, "the walkthrough no longer runs examples/token_endpoint.py"
    return found.group(1).replace("\\\n", " ")


def test_the_example_holds_one_target_of_each_auth_type_and_an_agent(settings: Settings) -> None:
    targets = {t.name: t.auth.type if t.auth else None for t in settings.mcp.targets}
    agents = {a.name: a.auth.type if a.auth else None for a in settings.a2a.agents}

    assert targets == {
        "github": "bearer",
        "crm": "header",
        "billing": "oauth2_client_credentials",
        "hr": "token_exchange",
    }
    assert agents == {"planner": "oauth2_client_credentials"}


async def test_the_bearer_target_presents_the_token_of_its_variable(settings: Settings) -> None:
    github = settings.target("github")
    assert github is not None and [b.url for b in github.backends] == [GITHUB_MCP_URL]
    credentials = credentials_for(github.auth, ConnectionPool(connect_timeout=1.0), "github", ENV)

    assert credentials is not None and not credentials.for_each_caller
    assert await credentials.headers(None) == {"authorization": f"Bearer {GITHUB_TOKEN}"}


async def test_the_header_target_presents_its_files_contents_trimmed(settings: Settings) -> None:
    auth = auth_of(settings, "crm")
    assert auth.value_file is not None and not Path(auth.value_file).is_absolute()
    credentials = credentials_for(auth, ConnectionPool(connect_timeout=1.0), "crm", ENV)

    assert credentials is not None
    assert await credentials.headers(None) == {"x-api-key": CRM_KEY}


@pytest.mark.parametrize("name", ["billing", "hr", "planner"])
def test_the_fetched_tokens_come_from_the_local_token_endpoint(settings: Settings, name: str) -> None:
    auth = auth_of(settings, name)

    assert (auth.token_url, auth.client_id, auth.client_secret_env) == (
        LOCAL_TOKEN_URL,
        "agentgw",
        "AGENTGW_CLIENT_SECRET",
    )
    assert auth.resource is not None and auth.resource.startswith("https://")


def test_client_credentials_serve_every_caller_and_token_exchange_each_caller_alone(settings: Settings) -> None:
    http = ConnectionPool(connect_timeout=1.0)
    billing = credentials_for(auth_of(settings, "billing"), http, "billing", ENV)
    planner = credentials_for(auth_of(settings, "planner"), http, "planner", ENV)
    hr_auth = auth_of(settings, "hr")
    hr = credentials_for(hr_auth, http, "hr", ENV)

    assert isinstance(billing, ClientCredentials) and not billing.for_each_caller
    assert isinstance(planner, ClientCredentials) and not planner.for_each_caller
    assert isinstance(hr, TokenExchange) and hr.for_each_caller
    assert auth_of(settings, "billing").scopes == ["billing:read"]
    assert (hr_auth.audience, hr_auth.scopes) == ("hr-mcp", ["hr:read"])


@pytest.mark.parametrize(
    ("missing", "key"),
    [
        ("GITHUB_TOKEN", "mcp.targets.github.auth.tokenEnv"),
        ("AGENTGW_CLIENT_SECRET", "mcp.targets.billing.auth.clientSecretEnv"),
        ("secrets/crm-key", "mcp.targets.crm.auth.valueFile"),
    ],
)
def test_serve_stops_naming_the_key_of_a_missing_secret(settings: Settings, missing: str, key: str) -> None:
    env = {name: value for name, value in ENV.items() if name != missing}
    if missing not in ENV:
        Path(missing).unlink()

    with pytest.raises(ConfigError) as refused:
        check_upstream_secrets(settings, env)

    assert refused.value.line > 0
    assert key in str(refused.value)


def test_the_readme_sections_config_loads(tmp_path: Path) -> None:
    blocks = re.findall(r"^```yaml\n(.*?)^```$", readme_section(), re.DOTALL | re.MULTILINE)
    assert blocks, "the section shows an auth config"
    for number, block in enumerate(blocks):
        config = tmp_path / f"block-{number}.yaml"
        config.write_text(block, encoding="utf-8")
        loaded = load_settings(config, env={})
        assert any(t.auth is not None for t in loaded.mcp.targets)


def test_the_walkthrough_names_only_flags_the_token_endpoint_accepts() -> None:
    named = set(re.findall(r"--[a-z][a-z-]*", token_endpoint_command()))
    shown = subprocess.run(
        [sys.executable, str(TOKEN_ENDPOINT), "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HELP_TIMEOUT,
        check=True,
    )
    # The usage lines, not the whole help: the description repeats the docstring's own flag list.
    usage = shown.stdout.split("\n\n", 1)[0]
    accepted = set(re.findall(r"--[a-z][a-z-]*", usage))

    assert {"--port", "--client", "--subject-issuer", "--subject-secret-env"} <= named
    assert named <= accepted


def test_the_walkthrough_runs_the_token_endpoint_where_the_example_looks_for_it() -> None:
    port = re.search(r"--port (\d+)", token_endpoint_command())

    assert port is not None
    assert LOCAL_TOKEN_URL.startswith(f"http://127.0.0.1:{port.group(1)}/")
    assert LOCAL_TOKEN_URL in EXAMPLE.read_text(encoding="utf-8")
    assert "--config examples/upstream_auth.yaml" in readme_section()


def test_the_walkthrough_provides_every_secret_the_example_names(settings: Settings) -> None:
    section = readme_section()
    auths = [t.auth for t in settings.mcp.targets if t.auth is not None]
    auths += [a.auth for a in settings.a2a.agents if a.auth is not None]
    sources = [source for auth in auths for source in auth.secret_sources().values()]
    variables = {variable for variable, _ in sources if variable is not None}
    files = {file for _, file in sources if file is not None}

    assert variables == set(ENV)
    for variable in variables:
        assert re.search(rf"^export {variable}=", section, re.MULTILINE), f"the walkthrough does not set {variable}"
    for file in files:
        assert f"> {file}" in section, f"the walkthrough does not write {file}"
    # The callers' tokens: the shipped SessionAuthPolicy's key, and the token endpoint's subject key.
    assert re.search(r"^export AGENTGW_JWT_SECRET=", section, re.MULTILINE)
    assert "--subject-secret-env AGENTGW_JWT_SECRET" in token_endpoint_command()


def test_the_readme_shows_the_line_serve_names_for_a_missing_variable(settings: Settings) -> None:
    shown = re.search(r"examples/upstream_auth\.yaml:(\d+): mcp\.targets\.github\.auth\.tokenEnv", readme_section())
    assert shown is not None, "the section no longer shows the missing-variable line"

    with pytest.raises(ConfigError) as refused:
        check_upstream_secrets(settings, {"AGENTGW_CLIENT_SECRET": CLIENT_SECRET})

    assert refused.value.line == int(shown.group(1))
