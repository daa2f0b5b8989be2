"""Stub LLM providers on loopback, the chat config naming them, and the tokens and clients that call a gateway.

The `stub` and `serve` fixtures (tests/conftest.py) start the providers and the gateways.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import jwt
import openai

from tests import stub_upstream
from tests.support import Gateway, InProcessGateway, ThreadServers, bound_port

ISSUER = "https://issuer.test"
AUDIENCE = "agentgw"
SECRET = "a-test-secret-long-enough-for-hs256-and-then-some"
SECRET_ENV = "TEST_JWT_SECRET"
PROVIDER_KEY_ENV = "STUB_PROVIDER_KEY"
PROVIDER_KEY = "sk-provider-side-key"

AUTH_POLICY = f"""\
apiVersion: agentgw.dev/v1alpha1
kind: SessionAuthPolicy
metadata: {{name: auth}}
spec:
  jwtValidation: {{issuer: {ISSUER}, audience: {AUDIENCE}, secretEnv: {SECRET_ENV}, algorithms: [HS256]}}
"""
GATEWAY_ENV = {SECRET_ENV: SECRET, PROVIDER_KEY_ENV: PROVIDER_KEY}


@dataclass
class StubProvider:
    """A stub provider (tests/stub_upstream.py) on loopback: OpenAI- and Anthropic-compatible, it records
    what it gets. Its controls are HTTP requests, as they were when it ran as a process of its own."""

    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def requests(self, path: str | None = None) -> list[dict[str, Any]]:
        """What the stub received, oldest first; only requests to `path` when given."""
        recorded = httpx2.get(f"http://127.0.0.1:{self.port}/_requests", timeout=5, verify=False).json()
        return [r for r in recorded if path is None or r["path"] == path]

    def chat_requests(self) -> list[dict[str, Any]]:
        return self.requests("/v1/chat/completions")

    def open_streams(self) -> int:
        return int(httpx2.get(f"http://127.0.0.1:{self.port}/_streams", timeout=5, verify=False).json()["open"])

    def set_modes(self, *modes: str) -> None:
        url = f"http://127.0.0.1:{self.port}/_modes"
        httpx2.post(url, json={"modes": list(modes)}, timeout=5, verify=False).raise_for_status()

    def script(
        self,
        message: dict[str, Any] | None = None,
        events: list[Any] | None = None,
        chunks: list[Any] | None = None,
        completion: Any = None,
        line_end: str | None = None,
        raw_events: list[str] | None = None,
    ) -> None:
        """What the stub answers from now on (see stub_upstream.py); None leaves its own answer."""
        script = {"message": message, "events": events, "chunks": chunks, "completion": completion}
        script["line_end"] = line_end
        script["raw_events"] = raw_events
        url = f"http://127.0.0.1:{self.port}/_script"
        httpx2.post(url, json=script, timeout=5, verify=False).raise_for_status()


def start_stub_provider(servers: ThreadServers, *modes: str, port: int = 0) -> StubProvider:
    """A stub provider with those modes, served from a thread on `port` (0: one the kernel picks)."""
    return StubProvider(bound_port(servers.start(lambda: stub_upstream.server(list(modes), port), "stub-provider")))


@contextlib.contextmanager
def stub_provider(*modes: str, port: int = 0) -> Iterator[StubProvider]:
    servers = ThreadServers()
    try:
        yield start_stub_provider(servers, *modes, port=port)
    finally:
        servers.stop()


def openai_provider(name: str, stub: StubProvider, **options: Any) -> dict[str, Any]:
    return {"name": name, "type": "openai", "base_url": stub.base_url, "api_key_env": PROVIDER_KEY_ENV, **options}


def llm_config(*providers: dict[str, Any], models: dict[str, list[str]] | None = None, **extra: Any) -> dict[str, Any]:
    """A gateway config with only the chat part: these providers, these aliases."""
    llm: dict[str, Any] = {
        "providers": list(providers),
        "models": [{"name": alias, "route": route} for alias, route in (models or {}).items()],
        **extra,
    }
    return {"mcp": {"enabled": False}, "llm": llm}


def token(sub: str | None = None, **claims: Any) -> str:
    """An HS256 JWT the gateway's AUTH_POLICY accepts; a fresh unique subject unless one is given."""
    now = int(time.time())
    payload = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub or f"user-{uuid.uuid4().hex}",
        "iat": now,
        "exp": now + 600,
        **claims,
    }
    return jwt.encode(payload, SECRET, algorithm="HS256")


def client(gw: Gateway | InProcessGateway, api_key: str = "client-side-anything") -> openai.OpenAI:
    """The real OpenAI SDK pointed at the gateway; no retries, so every call is one request."""
    # verify=False: plain HTTP on loopback, so no CA bundle to load (60 ms a client otherwise).
    http = openai.DefaultHttpxClient(verify=False)
    return openai.OpenAI(base_url=f"{gw.base}/v1", api_key=api_key, max_retries=0, timeout=20, http_client=http)


def async_client(gw: InProcessGateway, api_key: str = "client-side-anything") -> openai.AsyncOpenAI:
    http = openai.DefaultAsyncHttpxClient(verify=False)
    return openai.AsyncOpenAI(base_url=f"{gw.base}/v1", api_key=api_key, max_retries=0, timeout=20, http_client=http)


def sse_data(body: bytes) -> list[Any]:
    """Every `data:` payload of an SSE body, JSON-decoded except `[DONE]`."""
    payloads: list[Any] = []
    for line in body.decode().splitlines():
        if line.startswith("data:"):
            data = line[5:].strip()
            payloads.append(data if data == "[DONE]" else json.loads(data))
    return payloads
