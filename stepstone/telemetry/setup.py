"""`configure()`: one call that installs OpenTelemetry SDK providers, for applications that
want stepstone to set telemetry up rather than doing it themselves.

Needs the SDK and exporters: `pip install 'stepstone[otlp]'`. Nothing here runs unless the
application calls it.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from stepstone.errors import ConfigurationError
from stepstone.telemetry._log import add_trace_context, set_bridge_level

if TYPE_CHECKING:
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

__all__ = ["Providers", "configure"]

Exporter = Literal["otlp", "console", "none"]
_OTLP_ENDPOINT_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
)


@dataclass(frozen=True)
class Providers:
    """The providers configure() installed; flush or shut them down before exiting."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    logger_provider: LoggerProvider

    def force_flush(self, timeout_millis: int = 10_000) -> None:
        """Export everything buffered now."""
        self.tracer_provider.force_flush(timeout_millis)
        self.meter_provider.force_flush(timeout_millis)
        self.logger_provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Flush and stop the exporters."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()
        self.logger_provider.shutdown()


def configure(
    *,
    service_name: str | None = None,
    exporter: Exporter | None = None,
    protocol: Literal["grpc", "http/protobuf"] | None = None,
    metric_interval: float = 10.0,
    log_level: int = logging.INFO,
    set_global: bool = True,
    configure_structlog: bool = False,
) -> Providers:
    """Install tracer, meter and logger providers exporting stepstone's telemetry.

    - `exporter`: "otlp" (endpoint, headers and so on from the standard `OTEL_EXPORTER_OTLP_*`
      variables), "console" (stdout), or "none"; by default "otlp" when an
      `OTEL_EXPORTER_OTLP_*ENDPOINT` variable is set, else "console".
    - `protocol`: "grpc" or "http/protobuf"; by default `OTEL_EXPORTER_OTLP_PROTOCOL`, else grpc.
    - `service_name`: the resource's service.name (default `OTEL_SERVICE_NAME`, else "stepstone").
    - `metric_interval`: seconds between metric exports.
    - `log_level`: stepstone events at or above it become OpenTelemetry log records.
    - `set_global`: install the providers as the process's global ones (which OpenTelemetry
      allows once per process); otherwise pass them to `Runtime(...)` yourself.
    - `configure_structlog`: also configure structlog (console lines on stderr with trace and
      span ids, coloured only when stderr is a terminal).
    """
    try:
        from opentelemetry import _logs, metrics, trace
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ConfigurationError(
            "stepstone.telemetry.configure() needs the OpenTelemetry SDK: pip install 'stepstone[otlp]'"
        ) from exc
    chosen = exporter or (
        "otlp" if any(os.environ.get(v) for v in _OTLP_ENDPOINT_VARS) else "console"
    )
    if chosen not in ("otlp", "console", "none"):
        raise ConfigurationError(f"exporter must be 'otlp', 'console' or 'none', got {chosen!r}")
    wire = protocol or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    if wire not in ("grpc", "http/protobuf"):
        raise ConfigurationError(f"protocol must be 'grpc' or 'http/protobuf', got {wire!r}")
    resource = Resource.create(
        {"service.name": service_name or os.environ.get("OTEL_SERVICE_NAME", "stepstone")}
    )
    spans, metric_exporter, logs = _exporters(chosen, wire)

    tracer_provider = TracerProvider(resource=resource)
    if spans is not None:
        tracer_provider.add_span_processor(BatchSpanProcessor(spans))
    readers = (
        [
            PeriodicExportingMetricReader(
                metric_exporter, export_interval_millis=metric_interval * 1000
            )
        ]
        if metric_exporter is not None
        else []
    )
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    logger_provider = LoggerProvider(resource=resource)
    if logs is not None:
        logger_provider.add_log_record_processor(BatchLogRecordProcessor(logs))
    if set_global:
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
        _logs.set_logger_provider(logger_provider)
    set_bridge_level(log_level)
    if configure_structlog:
        _configure_structlog()
    return Providers(tracer_provider, meter_provider, logger_provider)


def _exporters(kind: str, protocol: str) -> tuple[Any, Any, Any]:
    if kind == "none":
        return None, None, None
    if kind == "console":
        from opentelemetry.sdk._logs.export import ConsoleLogRecordExporter
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(), ConsoleMetricExporter(), ConsoleLogRecordExporter()
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc import _log_exporter as grpc_logs
            from opentelemetry.exporter.otlp.proto.grpc import metric_exporter as grpc_metrics
            from opentelemetry.exporter.otlp.proto.grpc import trace_exporter as grpc_traces

            return (
                grpc_traces.OTLPSpanExporter(),
                grpc_metrics.OTLPMetricExporter(),
                grpc_logs.OTLPLogExporter(),
            )
        from opentelemetry.exporter.otlp.proto.http import _log_exporter as http_logs
        from opentelemetry.exporter.otlp.proto.http import metric_exporter as http_metrics
        from opentelemetry.exporter.otlp.proto.http import trace_exporter as http_traces
    except ImportError as exc:
        raise ConfigurationError(
            f"the OTLP exporter for {protocol} is not installed: pip install 'stepstone[otlp]'"
        ) from exc
    return (
        http_traces.OTLPSpanExporter(),
        http_metrics.OTLPMetricExporter(),
        http_logs.OTLPLogExporter(),
    )


def _configure_structlog() -> None:
    """Console lines on stderr (stdout is the application's), coloured only on a terminal."""
    import structlog

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            add_trace_context,
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
