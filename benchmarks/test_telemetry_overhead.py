"""Per-step cost with telemetry configured, beside telemetry off, in one run.

"on": SDK providers with a batch span processor, a periodic metric reader (5 s) and a batch
log processor, exporting (serialized, to /dev/null) like a real exporter would. "off": no
providers (the API's no-op). Per-step cost = (median of a 10-step workflow - median of an
empty one) / 10. Goal: "on" at most 15% more per step than "off".

`test_per_step_overhead_interleaved` alternates the four variants call by call, so that
drift of the machine (other load, checkpoints) hits them alike; its numbers are in the
benchmark's extra_info (and printed with -s).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, ConsoleLogRecordExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from stepstone import Runtime

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pytest_benchmark.fixture import BenchmarkFixture


def _providers(sink: Any) -> dict[str, Any]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sink)))
    reader = PeriodicExportingMetricReader(
        ConsoleMetricExporter(out=sink), export_interval_millis=5000
    )
    meter_provider = MeterProvider(metric_readers=[reader])
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(
        BatchLogRecordProcessor(ConsoleLogRecordExporter(out=sink))
    )
    return {
        "tracer_provider": tracer_provider,
        "meter_provider": meter_provider,
        "logger_provider": logger_provider,
    }


@pytest.fixture(scope="module")
def flows(bench_db: str) -> Iterator[dict[str, Any]]:
    sink = open(os.devnull, "w")  # noqa: PTH123, SIM115 - closed below
    built: dict[str, Any] = {}
    runtimes = []
    for mode, extra in (("off", {}), ("on", _providers(sink))):
        rt = Runtime(
            bench_db, executor_id=f"bench-{mode}", pool_min_size=1, pool_max_size=2, **extra
        )

        @rt.step(name="echo")
        def echo(n: int) -> int:
            return n

        @rt.workflow(name="steps")
        def steps(n: int) -> int:
            return sum(echo(i) for i in range(n))

        rt.launch()
        built[mode] = steps
        runtimes.append((rt, extra))
    yield built
    for rt, extra in runtimes:
        rt.shutdown()
        for provider in extra.values():
            provider.shutdown()
    sink.close()


@pytest.mark.parametrize("n", [0, 10])
@pytest.mark.parametrize("mode", ["off", "on"])
def test_workflow_steps_with_and_without_telemetry(
    benchmark: BenchmarkFixture, flows: dict[str, Any], mode: str, n: int
) -> None:
    """A workflow of n trivial steps, telemetry off or on."""
    benchmark.group = f"telemetry, {n} steps"
    benchmark.pedantic(flows[mode], args=(n,), rounds=300, warmup_rounds=30)


def test_per_step_overhead_interleaved(benchmark: BenchmarkFixture, flows: dict[str, Any]) -> None:
    """Per-step cost off and on, measured call by call in alternation (400 rounds)."""

    def compare() -> dict[str, float]:
        timings: dict[tuple[str, int], list[float]] = {}
        for _ in range(30):
            for mode in ("off", "on"):
                flows[mode](0)
                flows[mode](10)
        for _ in range(400):
            for mode in ("off", "on"):
                for n in (0, 10):
                    started = time.perf_counter()
                    flows[mode](n)
                    timings.setdefault((mode, n), []).append(time.perf_counter() - started)
        medians = {key: statistics.median(values) * 1e6 for key, values in timings.items()}
        per_step = {mode: (medians[(mode, 10)] - medians[(mode, 0)]) / 10 for mode in ("off", "on")}
        return {
            "per_step_off_us": round(per_step["off"], 1),
            "per_step_on_us": round(per_step["on"], 1),
            "per_step_overhead_percent": round(100 * (per_step["on"] / per_step["off"] - 1), 1),
            "empty_workflow_off_us": round(medians[("off", 0)], 1),
            "empty_workflow_on_us": round(medians[("on", 0)], 1),
        }

    result = benchmark.pedantic(compare, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(result)
