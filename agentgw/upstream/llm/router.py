"""Which provider answers a model name: `provider/model`, aliases with fallback chains, breakers."""

from __future__ import annotations

import time
from dataclasses import dataclass

from agentgw.config import CircuitBreakerConfig, LlmConfig
from agentgw.upstream.http import ConnectionPool
from agentgw.upstream.llm.provider import LLMProvider, provider_types


class CircuitBreaker:
    """Open after `failures` consecutive failures; half-open after `open_for` with up to `probes` requests."""

    def __init__(self, config: CircuitBreakerConfig) -> None:
        self._config = config
        self._failures = 0
        self._opened_at: float | None = None
        self._probes = 0

    def allow(self) -> bool:
        if self._opened_at is None:
            return True
        if time.monotonic() - self._opened_at < self._config.open_for:
            return False
        if self._probes >= self._config.probes:
            return False
        self._probes += 1
        return True

    def succeeded(self) -> None:
        self._failures, self._opened_at, self._probes = 0, None, 0

    def failed(self) -> None:
        self._failures += 1
        if self._opened_at is not None or self._failures >= self._config.failures:
            self._opened_at, self._probes = time.monotonic(), 0  # (re)opened: a failed probe waits again


@dataclass(frozen=True)
class Route:
    provider: LLMProvider
    model: str
    breaker: CircuitBreaker

    @property
    def name(self) -> str:
        return f"{self.provider.name}/{self.model}"


class UnknownModel(Exception):
    pass


class LlmRouter:
    def __init__(self, config: LlmConfig, http: ConnectionPool) -> None:
        # The config was validated at load: every type is known, every route names a provider.
        types = provider_types()
        self.providers: dict[str, LLMProvider] = {p.name: types[p.type](p, http) for p in config.providers}
        self.breakers = {name: CircuitBreaker(config.circuit_breaker) for name in self.providers}
        self.aliases = {alias.name: alias.route for alias in config.models}

    def routes(self, model: str) -> list[Route]:
        """The fallback chain for a model name or alias; UnknownModel when it names nothing."""
        chain = self.aliases.get(model, [model])
        routes = []
        for entry in chain:
            provider_name, _, provider_model = entry.partition("/")
            provider = self.providers.get(provider_name)
            if provider is None or not provider_model:
                raise UnknownModel(model)
            routes.append(Route(provider, provider_model, self.breakers[provider_name]))
        return routes

    async def model_ids(self) -> list[tuple[str, str]]:
        """(model id, owner) for every alias and every model the providers list."""
        ids = [(alias, "agentgw") for alias in self.aliases]
        for name, provider in self.providers.items():
            ids += [(f"{name}/{model}", name) for model in await provider.models()]
        return ids
