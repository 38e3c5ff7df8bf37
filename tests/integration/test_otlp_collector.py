"""Telemetry exported over OTLP (gRPC and HTTP) to a real collector (rotel) on loopback."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

import stepstone
from stepstone import Runtime
from tests.support.collector import Collector, collector

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(scope="module")
def otel_collector() -> Iterator[Collector]:
    with collector() as c:
        yield c


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_spans_metrics_and_logs_arrive_at_the_collector(
    db: str, otel_collector: Collector, protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configure() from the standard OTEL_* variables; everything a workflow emits arrives."""
    port = otel_collector.grpc_port if protocol == "grpc" else otel_collector.http_port
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    service = f"collector-test-{protocol.replace('/', '-')}"
    providers = stepstone.telemetry.configure(
        set_global=False, service_name=service, metric_interval=0.5
    )
    workflow_id = f"exported-{protocol.replace('/', '-')}"
    try:
        with Runtime(
            db,
            tracer_provider=providers.tracer_provider,
            meter_provider=providers.meter_provider,
            logger_provider=providers.logger_provider,
        ) as rt:

            @rt.step()
            def ping() -> str:
                return "pong"

            @rt.workflow()
            def exported() -> str:
                return ping()

            assert exported.with_options(workflow_id=workflow_id)() == "pong"
            providers.force_flush()
    finally:
        providers.shutdown()
    received = otel_collector.wait_for(
        f"service.name: Str({service})",
        f"stepstone.workflow.id: Str({workflow_id})",
        "Name           : workflow exported",
        "Name           : step ping",
        "Name: stepstone.workflow.completed",
        "Name: stepstone.step.duration",
        "Body: Str(workflow_completed)",
    )
    # The log records of this execution carry the trace id of its workflow span.
    spans = [
        block
        for block in received.split("Span #")
        if "Name           : workflow exported" in block and f"Str({workflow_id})" in block
    ]
    assert len(spans) == 1
    trace_id = re.search(r"Trace ID\s+: ([0-9a-f]{32})", spans[0])
    assert trace_id is not None
    # Each record's text, up to the next record or the next export of another signal.
    records = [
        re.split(r"^Resource(?:Metrics|Spans|Log) #", block, flags=re.MULTILINE)[0]
        for block in received.split("LogRecord #")
        if f"workflow_id: Str({workflow_id})" in block
    ]
    assert len(records) >= 2  # workflow_started, workflow_completed
    for block in records:
        record_trace = re.search(r"Trace ID\s+: ([0-9a-f]{32})", block)
        assert record_trace is not None
        assert record_trace.group(1) == trace_id.group(1)
        assert "Timestamp: 0\n" not in block
