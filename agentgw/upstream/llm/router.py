"""Which provider answers a model name: `provider/model`, aliases with fallback chains, breakers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from agentgw.config import CircuitBreakerConfig, LlmConfig, RetryConfig
from agentgw.errors import ModelNotFound
from agentgw.upstream.http import ConnectionPool
from agentgw.upstream.llm.provider import LLMProvider, provider_types


class CircuitBreaker:
    """Open after `failures` consecutive failures; half-open after `open_for` with up to `probes` requests.

    While a provider is unproven (nothing has succeeded since start, or since the
    breaker last opened) it takes at most as many concurrent requests as failures
    would open the breaker; the rest wait for their outcome. So a burst sent at a
    dead provider costs it no more requests than a sequence would, and a provider
    that has answered is never held back by requests in flight.
    """

    def __init__(self, config: CircuitBreakerConfig) -> None:
        self._config = config
        self._failures = 0
        self._opened_at: float | None = None
        self._probes = 0
        self._proven = False
        self._in_flight = 0
        self._outcome = asyncio.Event()

    async def admit(self, wait: float) -> bool:
        """True when a request may go to the provider (then report it with `done`); waits up to `wait` seconds."""
        deadline = time.monotonic() + wait
        while True:
            if self._opened_at is not None:
                return self._admit_half_open()
            if self._proven or self._failures + self._in_flight < self._config.failures:
                self._in_flight += 1
                return True
            outcome = self._outcome
            try:
                await asyncio.wait_for(outcome.wait(), deadline - time.monotonic())
            except TimeoutError:
                return False

    def _admit_half_open(self) -> bool:
        assert self._opened_at is not None
        if time.monotonic() - self._opened_at < self._config.open_for or self._probes >= self._config.probes:
            return False
        self._probes += 1
        self._in_flight += 1
        return True

    def done(self, ok: bool | None) -> None:
        """The outcome of an admitted request: the provider answered (`ok`), failed, or neither (None:
        the request ended before the provider could say, a cancelled one say)."""
        self._in_flight -= 1
        if ok:
            self._failures, self._opened_at, self._probes, self._proven = 0, None, 0, True
        elif ok is not None:
            self.failed_later()
        self._outcome.set()
        self._outcome = asyncio.Event()

    def failed_later(self) -> None:
        """A failure after the request was reported done (a stream that broke off)."""
        self._failures += 1
        if self._opened_at is not None or self._failures >= self._config.failures:
            # (re)opened: a failed probe waits again, and the provider has to prove itself anew
            self._opened_at, self._probes, self._proven = time.monotonic(), 0, False


@dataclass(frozen=True)
class Route:
    provider: LLMProvider
    model: str
    breaker: CircuitBreaker

    @property
    def name(self) -> str:
        return f"{self.provider.name}/{self.model}"


class LlmRouter:
    def __init__(self, config: LlmConfig, http: ConnectionPool) -> None:
        # The config was validated at load: every type is known, every route names a provider.
        types = provider_types()
        self.providers: dict[str, LLMProvider] = {p.name: types[p.type](p, http) for p in config.providers}
        self.breakers = {name: CircuitBreaker(config.circuit_breaker) for name in self.providers}
        self.aliases = {alias.name: alias.route for alias in config.models}
        self.retry: RetryConfig = config.retry

    def routes(self, model: str) -> list[Route]:
        """The fallback chain for a model name or alias; ModelNotFound when it names nothing."""
        chain = self.aliases.get(model, [model])
        routes = []
        for entry in chain:
            provider_name, _, provider_model = entry.partition("/")
            provider = self.providers.get(provider_name)
            if provider is None or not provider_model:
                raise ModelNotFound(f"The model {model!r} does not exist")
            routes.append(Route(provider, provider_model, self.breakers[provider_name]))
        return routes

    async def model_ids(self) -> list[tuple[str, str]]:
        """(model id, owner) for every alias and every model the providers list."""
        ids = [(alias, "agentgw") for alias in self.aliases]
        for name, provider in self.providers.items():
            ids += [(f"{name}/{model}", name) for model in await provider.models()]
        return ids
