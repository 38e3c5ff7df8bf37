"""OpenTelemetry traces, metrics and logs, and structlog wiring."""

from __future__ import annotations
