"""OpenTelemetry: with an SDK tracer provider, a span per request and per upstream call, context carried on."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import uvicorn
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from agentgw.app import create_app
from agentgw.config import load_settings
from tests.support import Process, gateway, initialize_body, mcp_headers, raw_request, recording_backend

CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"


@pytest.fixture
def recorder(tmp: Path) -> Iterator[Process]:
    process = recording_backend(tmp / "recorder.log").start()
    yield process
    process.stop()


@pytest.fixture
async def traced(tmp: Path, recorder: Process) -> AsyncIterator[tuple[int, InMemorySpanExporter]]:
    """A gateway in this process, its spans collected in memory (the global provider is left alone)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = tmp / "gateway.yaml"
    config.write_text(
        f"mcp:\n  targets:\n    - {{name: rec, backends: [{{url: 'http://127.0.0.1:{recorder.port}/mcp'}}]}}\n"
    )
    (tmp / "policies").mkdir()
    settings = load_settings(config, env={"AGENTGW_POLICIES": str(tmp / "policies"), "AGENTGW_METRICS_LISTEN": ""})
    app = create_app(settings, tracer_provider=provider)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.02)
    yield sock.getsockname()[1], exporter
    server.should_exit = True
    await asyncio.wait_for(serving, 10)


async def test_request_and_upstream_spans_continue_the_clients_trace(
    traced: tuple[int, InMemorySpanExporter], recorder: Process
) -> None:
    port, exporter = traced
    traceparent = ("traceparent", f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01")

    response = await raw_request(port, "POST", "/mcp/v1/rec", mcp_headers(port, traceparent), initialize_body())
    assert response.status == 200

    spans = exporter.get_finished_spans()
    [server] = [s for s in spans if s.kind == SpanKind.SERVER]
    [client] = [s for s in spans if s.kind == SpanKind.CLIENT and s.attributes["http.request.method"] == "POST"]
    assert format(server.context.trace_id, "032x") == CLIENT_TRACE_ID
    assert server.parent is not None and format(server.parent.span_id, "016x") == CLIENT_SPAN_ID
    assert server.name == "POST /mcp/v1/{target}"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["rpc.method"] == "initialize"
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    assert client.attributes["url.full"] == f"http://127.0.0.1:{recorder.port}/mcp"
    # The backend is told about the gateway's call, not the client's: its parent is the client span.
    records = await raw_request(recorder.port, "GET", "/_records", [("Host", f"127.0.0.1:{recorder.port}")])
    forwarded = records.json()[-1]["headers"]["traceparent"]
    assert forwarded == f"00-{CLIENT_TRACE_ID}-{format(client.context.span_id, '016x')}-01"


async def test_a_request_without_trace_context_starts_a_trace(traced: tuple[int, InMemorySpanExporter]) -> None:
    port, exporter = traced
    response = await raw_request(port, "GET", "/healthz", [("Host", f"127.0.0.1:{port}")])
    assert response.status == 200
    [server] = [s for s in exporter.get_finished_spans() if s.name == "GET /healthz"]
    assert server.parent is None and server.attributes["http.response.status_code"] == 200


async def test_agentgw_serve_traces_when_an_exporter_is_configured(tmp: Path) -> None:
    # A process: `agentgw serve` sets up tracing from its environment.
    gw = gateway(tmp, {"mcp": {"enabled": False}}, env={"OTEL_TRACES_EXPORTER": "console"})
    try:
        assert (await raw_request(gw.port, "GET", "/healthz", [("Host", f"127.0.0.1:{gw.port}")])).status == 200
    finally:
        gw.stop()  # the batch of spans is exported on shutdown
    output = gw.log.read_text()
    assert '"name": "GET /healthz"' in output and '"kind": "SpanKind.SERVER"' in output
