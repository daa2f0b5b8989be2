"""Prometheus metrics (contract 10), served at `/metrics` on the metrics port.

Label values come from bounded sets only: routes are fixed names, statuses
are HTTP codes, targets, backends and providers come from the config, and
tool and model names are capped (`_unknown`, `_other`), so no client can
grow the number of series. Subjects and session ids are never labels.

With several worker processes (`server.workers` > 1) counters go through
prometheus-client's multiprocess mode, so any worker answering a scrape
reports the sum of all of them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNKNOWN_TOOL = "_unknown"
OTHER_MODEL = "_other"
# Models outside the config are labelled by name up to this many per provider, then `_other`.
MAX_MODELS_PER_PROVIDER = 64
_MODEL_NAME = re.compile(r"[\w.:@/-]{1,100}")
# Gateway overhead is sub-millisecond; LLM answers take seconds.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, configured_models: dict[str, set[str]] | None = None) -> None:
        self.registry = CollectorRegistry()
        multiprocess = bool(os.environ.get(MULTIPROCESS_ENV))
        owner = None if multiprocess else self.registry
        self._requests = Counter(
            "agentgw_requests", "Requests answered, by route and HTTP status", ["route", "status"], registry=owner
        )
        self._duration = Histogram(
            "agentgw_request_duration_seconds",
            "Time from request to the end of the answer, by route",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=owner,
        )
        self._tool_calls = Counter(
            "agentgw_tool_calls", "tools/call decisions", ["target", "tool", "decision"], registry=owner
        )
        self._llm_tokens = Counter(
            "agentgw_llm_tokens",
            "LLM tokens used, by provider, model and kind",
            ["provider", "model", "kind"],
            registry=owner,
        )
        self._backend_refusals = Counter(
            "agentgw_backend_refusals",
            "What the gateway refused from a backend, agent, provider or identity provider, by reason",
            ["target", "reason"],
            registry=owner,
        )
        self._guardrail_actions = Counter(
            "agentgw_guardrail_actions",
            "Secrets and patterns found in what servers send, by detector and action taken",
            ["detector", "action"],
            registry=owner,
        )
        if multiprocess:
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        self._models = {provider: set(models) for provider, models in (configured_models or {}).items()}
        # labels() looks children up under a lock; the hot path keeps its own cache.
        self._request_children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}
        self._tool_children: dict[tuple[str, str, str], Counter] = {}
        self._guardrail_children: dict[tuple[str, str], Counter] = {}

    def request(self, route: str, status: int, seconds: float | None) -> None:
        """`seconds` is None for what is not a request's latency (a WebSocket connection's lifetime)."""
        children = self._request_children.get((route, status))
        if children is None:
            children = (self._requests.labels(route, str(status)), self._duration.labels(route))
            self._request_children[(route, status)] = children
        children[0].inc()
        if seconds is not None:
            children[1].observe(seconds)

    def tool_call(self, target: str, tool: str | None, decision: str) -> None:
        """`tool` is None when the target's catalogue does not know the name."""
        key = (target, tool if tool is not None else UNKNOWN_TOOL, decision)
        child = self._tool_children.get(key)
        if child is None:
            child = self._tool_children[key] = self._tool_calls.labels(*key)
        child.inc()

    def backend_refusal(self, target: str, reason: str) -> None:
        """`target` comes from the config and `reason` from a fixed set, so the series stay bounded."""
        self._backend_refusals.labels(target, reason).inc()

    def guardrail_action(self, detector: str, action: str) -> None:
        """`detector` is a built-in detector's or a policy pattern's name and `action` is redact,
        block or warn: both come from the policies, so the series stay bounded."""
        key = (detector, action)
        child = self._guardrail_children.get(key)
        if child is None:
            child = self._guardrail_children[key] = self._guardrail_actions.labels(*key)
        child.inc()

    def llm_tokens(self, provider: str, model: str, prompt: int, completion: int) -> None:
        label = self._model_label(provider, model)
        if prompt:
            self._llm_tokens.labels(provider, label, "prompt").inc(prompt)
        if completion:
            self._llm_tokens.labels(provider, label, "completion").inc(completion)

    def _model_label(self, provider: str, model: str) -> str:
        known = self._models.setdefault(provider, set())
        if model in known:
            return model
        if len(known) < MAX_MODELS_PER_PROVIDER and _MODEL_NAME.fullmatch(model):
            known.add(model)
            return model
        return OTHER_MODEL

    def add_live(self, collect: Callable[[], Awaitable[list[Metric]]]) -> LiveMetrics:
        """Gauges read when scraped (sessions in the store, backend health)."""
        live = LiveMetrics(collect)
        self.registry.register(live)
        return live

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class LiveMetrics(Collector):
    """Values gathered asynchronously just before a scrape, then handed to the synchronous collector."""

    def __init__(self, gather: Callable[[], Awaitable[list[Metric]]]) -> None:
        self._gather = gather
        self._latest: list[Metric] = []

    async def refresh(self) -> None:
        self._latest = await self._gather()

    def collect(self) -> Iterable[Metric]:
        return list(self._latest)


def gauge(name: str, documentation: str, labels: list[str], values: Mapping[tuple[str, ...], float]) -> Metric:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for label_values, value in values.items():
        family.add_metric(list(label_values), value)
    return family
