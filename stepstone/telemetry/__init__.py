"""OpenTelemetry traces, metrics and logs, and structlog wiring; no business logic.

The runtime only uses `opentelemetry-api`: spans, metrics and log records go to the
providers the application installs (or passes to `Runtime(...)`). `configure()` installs
SDK providers with OTLP or console exporters for applications that want stepstone to do it.
"""

from __future__ import annotations

from stepstone.telemetry._instruments import METRICS, Telemetry
from stepstone.telemetry._log import EventLog, add_trace_context, set_bridge_level
from stepstone.telemetry.setup import Providers, configure

__all__ = [
    "METRICS",
    "EventLog",
    "Providers",
    "Telemetry",
    "add_trace_context",
    "configure",
    "set_bridge_level",
]
