"""An identity provider that cannot be reached is its fault, not the client's (contract 11): a token whose key
the gateway cannot fetch is 503 with Retry-After, never 401, and nothing reaches a backend or a provider."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.auth.test_jwt import AUDIENCE, ISSUER, Jwks
from tests.stub_providers import StubProvider, stub_provider
from tests.support import (
    InProcessGateway,
    Process,
    RawResponse,
    bearer,
    in_process_gateway,
    initialize_body,
    logged,
    mcp_headers,
    mcp_target,
    poll,
    raw_request,
    recording_backend,
)

OUTAGES = ["stopped", "status-500", "not-json", "json-but-no-key-set", "silent"]


class Outage:
    """Breaks the JWKS endpoint one way; `end` serves the key set again."""

    def __init__(self, jwks: Jwks, how: str) -> None:
        self.jwks = jwks
        self.how = how
        self._silent: socket.socket | None = None

    def start(self) -> None:
        if self.how in ("stopped", "silent"):
            self.jwks.server.stop()
        if self.how == "silent":
            # Accepted by the kernel, never answered: the gateway waits for its JWKS timeout.
            self._silent = socket.socket()
            self._silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._silent.bind(("127.0.0.1", self.jwks.server.port))
            self._silent.listen(16)
        elif self.how == "status-500":
            self.jwks.file.unlink()
        elif self.how == "not-json":
            self.jwks.file.write_text("<html>502 Bad Gateway</html>")
        elif self.how == "json-but-no-key-set":
            self.jwks.file.write_text(json.dumps(["keys"]))

    def end(self, *kids: str) -> None:
        if self._silent is not None:
            self._silent.close()
        self.jwks.publish(*kids)
        if self.how in ("stopped", "silent"):
            self.jwks.server.start()


@pytest.fixture
def jwks(tmp: Path) -> Iterator[Jwks]:
    served = Jwks(tmp)
    yield served
    served.server.stop()


@pytest.fixture
def recording(tmp: Path) -> Iterator[Process]:
    process = recording_backend(tmp / "backend.log").start()
    yield process
    process.stop()


@pytest.fixture
def provider() -> Iterator[StubProvider]:
    with stub_provider() as stub:
        yield stub


@pytest.fixture
async def jwks_gw(jwks: Jwks, recording: Process, provider: StubProvider, tmp: Path) -> AsyncIterator[InProcessGateway]:
    # A long refreshInterval: only an unknown kid makes the gateway fetch the JWKS again.
    policies = f"""\
apiVersion: agentgw.dev/v1alpha1
kind: SessionAuthPolicy
metadata: {{name: auth}}
spec:
  jwtValidation: {{issuer: {ISSUER}, audience: {AUDIENCE}, jwksUri: "{jwks.uri}", algorithms: [RS256]}}
  sessionBinding: {{refreshInterval: 10m}}
"""
    config = {
        "mcp": {"targets": [mcp_target("docs", recording.port)]},
        "llm": {"providers": [{"name": "stub", "type": "openai", "base_url": provider.base_url}]},
    }
    async with in_process_gateway(tmp, config, policies=policies) as running:
        yield running


async def initialize(gw: InProcessGateway, token: str) -> RawResponse:
    return await raw_request(gw.port, "POST", "/mcp/v1", mcp_headers(gw.port, bearer(token)), initialize_body())


async def chat(gw: InProcessGateway, token: str) -> RawResponse:
    body = json.dumps({"model": "stub/x", "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = [("Host", f"127.0.0.1:{gw.port}"), ("Content-Type", "application/json"), bearer(token)]
    return await raw_request(gw.port, "POST", "/v1/chat/completions", headers, body)


def initializes_received(recording: Process) -> int:
    records = json.loads(_get(recording.port, "/_records"))
    return sum(1 for r in records if r["method"] == "POST" and '"initialize"' in r["body"])


def _get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    return data.partition(b"\r\n\r\n")[2]


def assert_identity_provider_unavailable(response: RawResponse) -> None:
    assert response.status == 503, response.body
    assert response.header("www-authenticate") is None  # a client told invalid_token would drop a good token
    retry_after = response.header("retry-after")
    assert retry_after is not None and retry_after.isdigit() and 1 <= int(retry_after) <= 10


@pytest.mark.parametrize("how", OUTAGES)
async def test_key_behind_an_unreachable_jwks_is_503_with_retry_after_never_401(
    jwks_gw: InProcessGateway,
    jwks: Jwks,
    recording: Process,
    provider: StubProvider,
    how: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert (await initialize(jwks_gw, jwks.token("k1"))).status == 200  # k1 is now cached
    jwks.keys["k2"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    Outage(jwks, how).start()

    mcp = await initialize(jwks_gw, jwks.token("k2"))
    openai = await chat(jwks_gw, jwks.token("k2"))

    assert_identity_provider_unavailable(mcp)
    assert mcp.json()["error"]["code"] == -32000
    assert_identity_provider_unavailable(openai)
    assert openai.json()["error"]["type"] == "server_error"
    assert openai.json()["error"]["code"] == "service_unavailable"
    # Nothing of the unverified caller reached the backend or the provider.
    assert initializes_received(recording) == 1
    assert provider.chat_requests() == []
    # Keys fetched before the outage still verify: one issuer's outage does not lock out every caller.
    assert (await initialize(jwks_gw, jwks.token("k1", jti="after-the-outage"))).status == 200
    assert logged(caplog, "cannot fetch the JWKS")


async def test_new_key_is_accepted_once_the_identity_provider_is_back(jwks_gw: InProcessGateway, jwks: Jwks) -> None:
    jwks.keys["k2"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    outage = Outage(jwks, "stopped")
    outage.start()
    assert_identity_provider_unavailable(await initialize(jwks_gw, jwks.token("k2")))

    outage.end("k1", "k2")

    async def k2_accepted() -> bool:
        return (await initialize(jwks_gw, jwks.token("k2"))).status == 200

    # Retry-After was honest: the gateway asks the issuer again within seconds, not at its refreshInterval.
    await poll(k2_accepted, timeout=20, interval=0.5)


async def test_unpublished_key_is_still_401_while_the_identity_provider_answers(
    jwks_gw: InProcessGateway, jwks: Jwks
) -> None:
    jwks.keys["unpublished"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    response = await initialize(jwks_gw, jwks.token("unpublished"))

    assert response.status == 401
    assert response.header("www-authenticate") is not None
