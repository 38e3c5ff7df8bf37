"""A workflow with its traces, metrics and logs printed on the console (or sent over OTLP).

    STEPSTONE_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python examples/telemetry.py

With OTEL_EXPORTER_OTLP_ENDPOINT set (for example http://127.0.0.1:4317), the same program
sends everything to that collector instead.
"""

from __future__ import annotations

from opentelemetry import trace

import stepstone
from stepstone import RetryPolicy, Runtime

providers = stepstone.telemetry.configure(
    service_name="telemetry-example", configure_structlog=True
)
rt = Runtime()
attempts: list[int] = []


@rt.step(retry=RetryPolicy(max_attempts=3, initial_interval=0.01))
def fetch_rate(currency: str) -> float:
    attempts.append(1)
    if len(attempts) == 1:
        raise ConnectionError("rate service timed out")
    return 1.08 if currency == "USD" else 1.0


@rt.step()
def convert(amount: float, rate: float) -> float:
    return round(amount * rate, 2)


@rt.workflow()
def quote(amount: float, currency: str) -> float:
    return convert(amount, fetch_rate(currency))


def main() -> None:
    with rt:
        tracer = trace.get_tracer("example")
        with tracer.start_as_current_span("handle request"):
            print("quote:", quote(100.0, "USD"))
    providers.shutdown()  # flushes spans, metrics and logs


if __name__ == "__main__":
    main()
