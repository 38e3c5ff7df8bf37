"""OpenTelemetry SDK providers with in-memory exporters, for exact assertions in tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@dataclass
class Recorded:
    """Providers to pass to Runtime(...) and what they recorded."""

    spans: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    metrics: InMemoryMetricReader = field(default_factory=InMemoryMetricReader)
    logs: InMemoryLogRecordExporter = field(default_factory=InMemoryLogRecordExporter)

    def __post_init__(self) -> None:
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.meter_provider = MeterProvider(metric_readers=[self.metrics])
        self.logger_provider = LoggerProvider()
        self.logger_provider.add_log_record_processor(SimpleLogRecordProcessor(self.logs))

    def providers(self) -> dict[str, Any]:
        return {
            "tracer_provider": self.tracer_provider,
            "meter_provider": self.meter_provider,
            "logger_provider": self.logger_provider,
        }

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, value) of every point of metric `name`: the sum for counters, the
        count for histograms, the value for gauges."""
        data = self.metrics.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != name:
                        continue
                    for point in metric.data.data_points:
                        value = getattr(point, "count", None)
                        if value is None:
                            value = point.value
                        found.append((dict(point.attributes or {}), value))
        return found

    def total(self, name: str, **attributes: Any) -> Any:
        return sum(
            v
            for attrs, v in self.points(name)
            if all(attrs.get(k) == a for k, a in attributes.items())
        )


def render(spans: list[ReadableSpan], keys: tuple[str, ...] = ()) -> str:
    """The span tree as indented text, children in start order, with chosen attributes."""
    by_parent: dict[int | None, list[ReadableSpan]] = {}
    ids = {s.context.span_id for s in spans}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        parent = span.parent.span_id if span.parent and span.parent.span_id in ids else None
        by_parent.setdefault(parent, []).append(span)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for span in by_parent.get(parent, []):
            shown = [
                f"{k}={span.attributes[k]}"
                for k in keys
                if span.attributes and k in span.attributes
            ]
            status = " ERROR" if span.status.status_code.name == "ERROR" else ""
            lines.append(
                "  " * depth + span.name + status + (" [" + ", ".join(shown) + "]" if shown else "")
            )
            walk(span.context.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)
