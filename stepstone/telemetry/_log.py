"""stepstone's structured events: to structlog or logging, and with trace correlation to
OpenTelemetry.

Events have stable snake_case names (`workflow_started`, `step_committed`,
`execution_recovered`, ...) and fields. When the application has configured structlog
(`structlog.is_configured()`), each is handed to structlog as an event with its fields;
otherwise it becomes a `logging` record of the `stepstone` logger (message
`event key=value ...`, the event and fields also as record attributes), so that handlers,
levels and filters of the application's `logging` setup apply — and an application that set
up neither sees warnings and errors on stderr through logging's last resort, never anything
on stdout (structlog's default would print there). At or above the bridge level, each event
is also emitted as an OpenTelemetry log record in the current span's context, so that it
exports over OTLP with its trace and span ids.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry import _logs, metrics, trace
from opentelemetry._logs import SeverityNumber

if TYPE_CHECKING:
    from opentelemetry._logs import LoggerProvider
    from structlog.typing import EventDict, WrappedLogger

__all__ = ["EventLog", "add_trace_context", "records", "set_bridge_level"]

_SEVERITY = {
    logging.DEBUG: (SeverityNumber.DEBUG, "DEBUG", "debug"),
    logging.INFO: (SeverityNumber.INFO, "INFO", "info"),
    logging.WARNING: (SeverityNumber.WARN, "WARN", "warning"),
    logging.ERROR: (SeverityNumber.ERROR, "ERROR", "error"),
}

_bridge_level = logging.INFO


def set_bridge_level(level: int) -> None:
    """Events at or above `level` are emitted as OpenTelemetry log records (default INFO)."""
    global _bridge_level  # noqa: PLW0603 - one process-wide setting, set by configure()
    _bridge_level = level


_NO_OP_PROVIDERS = (metrics.NoOpMeterProvider, _logs.NoOpLoggerProvider)
_PROXY_PROVIDERS = frozenset({"_ProxyMeterProvider", "ProxyLoggerProvider"})


def records(provider: object) -> bool:
    """Whether an OpenTelemetry meter or logger provider records anything: the API's no-op
    providers do not, nor the proxies that stand in until the application sets one."""
    return not isinstance(provider, _NO_OP_PROVIDERS) and (
        type(provider).__name__ not in _PROXY_PROVIDERS
    )


def _attribute(value: Any) -> Any:
    return value if isinstance(value, str | bool | int | float) else str(value)


# Attributes every LogRecord has (and the two Formatter adds): `extra` may not set them.
_RECORD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


def _logfmt(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if text and not any(c.isspace() or c in '"=\\' for c in text):
        return text
    return json.dumps(text)


def _message(event: str, fields: dict[str, Any]) -> str:
    """`event key=value ...`, values quoted when they hold spaces, quotes or `=`."""
    return " ".join([event, *(f"{key}={_logfmt(value)}" for key, value in fields.items())])


def _extra(event: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The record attributes: `event`, `fields` (all of them) and each field whose name is
    not one a LogRecord already has (`name`, `msg`, ...)."""
    extra = {key: value for key, value in fields.items() if key not in _RECORD_ATTRIBUTES}
    extra["event"] = event
    extra["fields"] = fields
    return extra


class EventLog:
    """Emits stepstone's events under one logger name (`stepstone`, `stepstone.persistence`)."""

    def __init__(self, name: str, logger_provider: LoggerProvider | None = None) -> None:
        self._structlog = structlog.get_logger(name)
        self._logging = logging.getLogger(name)
        self._provider = logger_provider
        self._otel = _logs.get_logger(name, logger_provider=logger_provider)

    def _bridged(self, level: int) -> bool:
        # Only with a real logger provider: building a record for the API's no-op one is
        # work on the hot path for nothing. (The global provider may be set later.)
        if level < _bridge_level:
            return False
        provider = self._provider if self._provider is not None else _logs.get_logger_provider()
        return records(provider)

    def enabled(self, level: int) -> bool:
        """Whether an event at `level` would go anywhere (check before building costly fields)."""
        return self._logged(level) or self._bridged(level)

    def _logged(self, level: int) -> bool:
        # structlog filters by itself; logging says whether any logger on the way takes it.
        return structlog.is_configured() or self._logging.isEnabledFor(level)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields)

    def emit(self, level: int, event: str, fields: dict[str, Any]) -> None:
        """Emit `event` at `level` (a logging level: DEBUG, INFO, WARNING or ERROR)."""
        self._emit(level, event, fields)

    def _emit(self, level: int, event: str, fields: dict[str, Any]) -> None:
        # Called from debug()/info()/... or emit(): the record's location is their caller.
        severity, severity_text, method = _SEVERITY[level]
        to_log = self._logged(level)
        to_otel = self._bridged(level)
        if not (to_log or to_otel):
            return
        if to_otel:
            # The record takes its trace and span ids from the current context.
            self._otel.emit(
                timestamp=time.time_ns(),
                severity_number=severity,
                severity_text=severity_text,
                body=event,
                event_name=event,
                attributes={
                    key: _attribute(value) for key, value in fields.items() if key != "exc_info"
                },
            )
        if not to_log:
            return
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            fields["trace_id"] = format(span_context.trace_id, "032x")
            fields["span_id"] = format(span_context.span_id, "016x")
        if structlog.is_configured():
            getattr(self._structlog, method)(event, **fields)
            return
        exc_info = fields.pop("exc_info", None)
        self._logging.log(
            level,
            _message(event, fields),
            exc_info=exc_info,
            extra=_extra(event, fields),
            stacklevel=3,
        )


def add_trace_context(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """A structlog processor adding the current trace and span ids to every event.

    >>> structlog.configure(processors=[add_trace_context, structlog.dev.ConsoleRenderer()])  # doctest: +SKIP
    """
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event_dict.setdefault("trace_id", format(span_context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(span_context.span_id, "016x"))
    return event_dict
