"""Stub providers on loopback, gateways in front of them, and the tokens and clients that call them."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import jwt
import openai
import pytest

from tests.support import Gateway, Process, free_port, gateway

STUB = Path(__file__).resolve().parent / "stub_upstream.py"
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


class StubProvider:
    """One `stub_upstream.py` process: an OpenAI- and Anthropic-compatible provider that records what it gets."""

    def __init__(self, process: Process) -> None:
        self.process = process

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def requests(self, path: str | None = None) -> list[dict[str, Any]]:
        """What the stub received, oldest first; only requests to `path` when given."""
        recorded = httpx2.get(f"http://127.0.0.1:{self.port}/_requests", timeout=5).json()
        return [r for r in recorded if path is None or r["path"] == path]

    def chat_requests(self) -> list[dict[str, Any]]:
        return self.requests("/v1/chat/completions")

    def open_streams(self) -> int:
        return int(httpx2.get(f"http://127.0.0.1:{self.port}/_streams", timeout=5).json()["open"])

    def set_modes(self, *modes: str) -> None:
        httpx2.post(f"http://127.0.0.1:{self.port}/_modes", json={"modes": list(modes)}, timeout=5).raise_for_status()

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
        httpx2.post(f"http://127.0.0.1:{self.port}/_script", json=script, timeout=5).raise_for_status()

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture
def stub(tmp: Path) -> Iterator[Callable[..., StubProvider]]:
    """`stub("name=a", "status=500")` starts a stub provider with those modes (on `port=` if given).

    All are stopped after the test.
    """
    started: list[StubProvider] = []

    def start(*modes: str, port: int | None = None) -> StubProvider:
        port = port or free_port()
        log = tmp / f"stub-{port}.log"
        provider = StubProvider(Process([sys.executable, str(STUB), str(port), *modes], port, log=log).start())
        started.append(provider)
        return provider

    yield start
    for provider in started:
        provider.stop()


@pytest.fixture
def serve(tmp: Path) -> Iterator[Callable[..., Gateway]]:
    """`serve(config, policies=..., name=...)` starts a gateway with GATEWAY_ENV; all are stopped after the test."""
    started: list[Gateway] = []

    def start(config: dict[str, Any], policies: str | None = None, name: str = "gateway", **env: str) -> Gateway:
        gw = gateway(tmp, config, policies=policies, name=name, env={**GATEWAY_ENV, **env})
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


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


def client(gw: Gateway, api_key: str = "client-side-anything") -> openai.OpenAI:
    """The real OpenAI SDK pointed at the gateway; no retries, so every call is one request."""
    return openai.OpenAI(base_url=f"{gw.base}/v1", api_key=api_key, max_retries=0, timeout=20)


def async_client(gw: Gateway, api_key: str = "client-side-anything") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gw.base}/v1", api_key=api_key, max_retries=0, timeout=20)


def sse_data(body: bytes) -> list[Any]:
    """Every `data:` payload of an SSE body, JSON-decoded except `[DONE]`."""
    payloads: list[Any] = []
    for line in body.decode().splitlines():
        if line.startswith("data:"):
            data = line[5:].strip()
            payloads.append(data if data == "[DONE]" else json.loads(data))
    return payloads
