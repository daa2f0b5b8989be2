"""OpenTelemetry tracing, when an SDK tracer provider is configured: a span per request, one per upstream call.

The OpenTelemetry API ships with the MCP SDK; spans are only made once a real
provider is in place, set by `opentelemetry-instrument agentgw serve`, or by
`agentgw serve` itself when `OTEL_TRACES_EXPORTER` is `console` or `otlp` and
the OpenTelemetry SDK is installed. Without one, nothing here runs per request.
W3C trace context (`traceparent`) from the client is the parent of the
request's span, and each upstream call carries its own span's context onward.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Tracer, TracerProvider
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentgw.call import Call, call_of
from agentgw.observability.requests import without_credentials
from agentgw.upstream.http import ConnectionPool, UpstreamResponse

log = logging.getLogger("agentgw.tracing")

TRACE_HEADERS = (b"traceparent", b"tracestate")


def configured_provider(provider: TracerProvider | None = None) -> TracerProvider | None:
    """The provider to make spans with: the one given, else the global one if an SDK set it; else None."""
    provider = provider if provider is not None else trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    return provider


def configure_from_environment(env: Mapping[str, str]) -> None:
    """`OTEL_TRACES_EXPORTER=console|otlp` (and the SDK installed): set up the global provider."""
    exporter_name = env.get("OTEL_TRACES_EXPORTER", "").strip()
    if exporter_name in ("", "none") or configured_provider() is not None:
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError:
        log.warning("OTEL_TRACES_EXPORTER is set but the OpenTelemetry SDK is not installed: no tracing")
        return
    exporter: SpanExporter
    if exporter_name == "console":
        exporter = ConsoleSpanExporter(out=sys.stderr)
    elif exporter_name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter,
            )
        except ImportError:
            log.warning("OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http: no tracing")
            return
        exporter = OTLPSpanExporter()  # endpoint and headers from the OTEL_EXPORTER_OTLP_* variables
    else:
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported (console, otlp): no tracing", exporter_name)
        return
    provider = SdkTracerProvider(resource=Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "agentgw")}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def flush_spans(provider: TracerProvider) -> None:
    """Export what is buffered now: uvicorn ends the process by re-raising SIGTERM, before atexit hooks run."""
    flush = getattr(provider, "force_flush", None)
    if flush is not None:
        flush()


class TracingMiddleware:
    """The request's span (SpanKind.SERVER), a child of the client's `traceparent` when it sent one."""

    def __init__(self, app: ASGIApp, tracer: Tracer) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in TRACE_HEADERS}
        call = call_of(scope)
        name = f"{scope.get('method', 'GET')} {call.route}"
        with self.tracer.start_as_current_span(name, context=propagate.extract(carrier), kind=SpanKind.SERVER) as span:

            async def traced_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                await send(message)

            await self.app(scope, receive, traced_send)
            span.set_attributes(_attributes(call))


def _attributes(call: Call) -> dict[str, str]:
    values = {
        "http.route": call.route,
        "rpc.method": call.rpc_method,
        "agentgw.target": call.target,
        "agentgw.tool": call.tool,
        "agentgw.decision": call.decision,
    }
    return {k: v for k, v in values.items() if v is not None}


class TracedConnectionPool(ConnectionPool):
    """Every upstream call in a span of its own (SpanKind.CLIENT), its context sent in `traceparent`."""

    def __init__(self, connect_timeout: float, tracer: Tracer) -> None:
        super().__init__(connect_timeout)
        self._tracer = tracer

    async def request(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: float | None
    ) -> UpstreamResponse:
        with self._tracer.start_as_current_span(method, kind=SpanKind.CLIENT) as span:
            span.set_attributes({"http.request.method": method, "url.full": without_credentials(url)})
            headers = {k: v for k, v in headers.items() if k not in ("traceparent", "tracestate")}
            propagate.inject(headers)
            response = await super().request(method, url, headers, body, timeout)
            span.set_attribute("http.response.status_code", response.status)
            return response
