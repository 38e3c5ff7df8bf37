"""Spans and metric instruments, taken from the application's OpenTelemetry providers.

Only `opentelemetry-api` is used here: the tracer and meter come from the global providers
(proxies until the application installs real ones), so with no SDK configured everything
below is a cheap no-op.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from stepstone.telemetry._log import EventLog, records
from stepstone.telemetry._recorder import Recorder

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from opentelemetry._logs import LoggerProvider

__all__ = ["METRICS", "Telemetry"]

_PROPAGATOR = TraceContextTextMapPropagator()

METRICS: dict[str, tuple[str, str]] = {
    # name: (unit, description) -- the README lists the same table
    "stepstone.workflow.started": (
        "{execution}",
        "Executions started (not counting joins of existing ids)",
    ),
    "stepstone.workflow.completed": ("{execution}", "Executions that ended, by status"),
    "stepstone.workflow.duration": (
        "s",
        "Time one run of an execution took in this process, by status",
    ),
    "stepstone.step.duration": (
        "s",
        "Time an executed step took, retries included (replays are not counted)",
    ),
    "stepstone.step.retries": ("{retry}", "Step attempts that failed and were retried"),
    "stepstone.step.commit.duration": (
        "s",
        "Time to commit a step record (for a transaction step: with its SQL)",
    ),
    "stepstone.executions.recovered": (
        "{execution}",
        "Executions resumed by this executor, by reason",
    ),
    "stepstone.executions.active": ("{execution}", "Executions running in this process"),
    "stepstone.executions.waiting": (
        "{execution}",
        (
            "Executions WAITING in the whole schema, by workflow name: one count query per "
            "collection (read it with a periodic reader); every executor reports the same figure"
        ),
    ),
    "stepstone.wake.latency": (
        "s",
        "From when a wait was due (by the database clock) to when its execution ran again here",
    ),
    "stepstone.messages.sent": ("{message}", "Messages stored by sends from this process"),
    "stepstone.messages.received": (
        "{message}",
        "Messages consumed by receives of executions this process ran or woke",
    ),
    "stepstone.db.pool.connections": (
        "{connection}",
        "Connections in the pool, by state (idle, used)",
    ),
    "stepstone.db.pool.waiting": ("{request}", "Requests waiting for a pooled connection"),
}


def _instrument(meter: metrics.Meter, kind: str, name: str, **kwargs: Any) -> Any:
    unit, description = METRICS[name]
    factory = getattr(meter, f"create_{kind}")
    return factory(name, unit=unit, description=description, **kwargs)


_KIND_ATTRIBUTES = {
    kind: {"stepstone.step.kind": kind}
    for kind in ("step", "transaction", "workflow", "sleep", "recv", "send", "wait_state")
}


class Telemetry:
    """The spans and measurements of one Runtime."""

    def __init__(
        self,
        version: str,
        pool_stats: Callable[[], dict[str, int]],
        executor_id: str,
        waiting: Callable[[], dict[str, int]] = dict,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        logger_provider: LoggerProvider | None = None,
    ) -> None:
        self.tracer = trace.get_tracer("stepstone", version, tracer_provider)
        meter = metrics.get_meter("stepstone", version, meter_provider)
        # With a real meter provider, measurements are recorded off the hot path.
        self._record = Recorder(deferred=records(meter_provider or metrics.get_meter_provider()))
        self._step_attributes: dict[tuple[str, str, str, str], dict[str, str]] = {}
        self.log = EventLog("stepstone", logger_provider)
        self._started = _instrument(meter, "counter", "stepstone.workflow.started")
        self._completed = _instrument(meter, "counter", "stepstone.workflow.completed")
        self._workflow_duration = _instrument(meter, "histogram", "stepstone.workflow.duration")
        self._step_duration = _instrument(meter, "histogram", "stepstone.step.duration")
        self._retries = _instrument(meter, "counter", "stepstone.step.retries")
        self._commit_duration = _instrument(meter, "histogram", "stepstone.step.commit.duration")
        self._recovered = _instrument(meter, "counter", "stepstone.executions.recovered")
        self._active = _instrument(meter, "up_down_counter", "stepstone.executions.active")
        self._wake_latency = _instrument(meter, "histogram", "stepstone.wake.latency")
        self._sent = _instrument(meter, "counter", "stepstone.messages.sent")
        self._received = _instrument(meter, "counter", "stepstone.messages.received")
        self._pool_stats = pool_stats
        self._waiting = waiting
        self._executor = {"stepstone.executor.id": executor_id}
        _instrument(
            meter,
            "observable_gauge",
            "stepstone.db.pool.connections",
            callbacks=[self._observe_connections],
        )
        _instrument(
            meter,
            "observable_gauge",
            "stepstone.db.pool.waiting",
            callbacks=[self._observe_waiting],
        )
        _instrument(
            meter,
            "observable_gauge",
            "stepstone.executions.waiting",
            callbacks=[self._observe_waiting_executions],
        )

    # -- trace context -----------------------------------------------------------------------

    @staticmethod
    def carrier(span: trace.Span) -> dict[str, str] | None:
        """The W3C trace context of `span`, to store with the execution (None if not sampled
        or not recording)."""
        if not span.get_span_context().is_valid:
            return None
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
        return carrier

    @staticmethod
    def parent_from(carrier: dict[str, str] | None) -> otel_context.Context | None:
        """The context a stored carrier describes, to continue its trace."""
        if not carrier:
            return None
        return _PROPAGATOR.extract(carrier)

    # -- spans -------------------------------------------------------------------------------

    def workflow_span(
        self,
        name: str,
        workflow_id: str,
        *,
        parent: otel_context.Context | None,
        recovered: bool,
    ) -> trace.Span:
        """A span for one run of an execution (not yet current: `running()` activates it)."""
        return self.tracer.start_span(
            f"workflow {name}",
            context=parent,
            attributes={
                "stepstone.workflow.id": workflow_id,
                "stepstone.workflow.name": name,
                "stepstone.recovered": recovered,
            },
        )

    def step_span(self, name: str, seq: int, workflow_id: str) -> trace.Span:
        """The span of one executed step, at its first attempt (the caller makes it current;
        a retry updates `stepstone.step.attempt`)."""
        return self.tracer.start_span(
            f"step {name}",
            attributes={
                "stepstone.workflow.id": workflow_id,
                "stepstone.step.name": name,
                "stepstone.step.seq": seq,
                "stepstone.step.attempt": 1,
            },
        )

    @staticmethod
    def failed(span: trace.Span, exc: BaseException) -> None:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:500]))

    # -- metrics -----------------------------------------------------------------------------

    def flush(self) -> None:
        """Record queued measurements now (before reading metrics in a test, say)."""
        self._record.flush()

    def open(self) -> None:
        """(Re)start the recording thread after `close()`: a Runtime launched again."""
        self._record.open()

    def close(self) -> None:
        """Record what is queued and stop the recording thread."""
        self._record.close()

    def workflow_started(self, name: str) -> None:
        self._record(self._started.add, 1, {"stepstone.workflow.name": name})

    def workflow_running(self, delta: int) -> None:
        self._record(self._active.add, delta, self._executor)

    def workflow_completed(
        self, name: str, status: str, seconds: float, *, recovered: bool
    ) -> None:
        attributes = {"stepstone.workflow.name": name, "stepstone.status": status}
        self._record(self._completed.add, 1, attributes)
        self._record(
            self._workflow_duration.record,
            seconds,
            {**attributes, "stepstone.recovered": recovered},
        )

    def step_finished(
        self, workflow: str, step: str, kind: str, outcome: str, seconds: float, retries: int
    ) -> None:
        key = (workflow, step, kind, outcome)
        attributes = self._step_attributes.get(key)
        if attributes is None:
            attributes = self._step_attributes.setdefault(
                key,
                {
                    "stepstone.workflow.name": workflow,
                    "stepstone.step.name": step,
                    "stepstone.step.kind": kind,
                    "stepstone.outcome": outcome,
                },
            )
        self._record(self._step_duration.record, seconds, attributes)
        if retries:
            self._record(
                self._retries.add,
                retries,
                {"stepstone.workflow.name": workflow, "stepstone.step.name": step},
            )

    def step_committed(self, kind: str, seconds: float) -> None:
        self._record(self._commit_duration.record, seconds, _KIND_ATTRIBUTES[kind])

    def recovered(self, reason: str, count: int) -> None:
        if count:
            self._record(
                self._recovered.add, count, {"stepstone.recovery.reason": reason, **self._executor}
            )

    def woken(self, workflow: str, wait_kind: str, seconds: float) -> None:
        """A woken execution runs again here, `seconds` after its wait was due."""
        self._record(
            self._wake_latency.record,
            seconds,
            {"stepstone.workflow.name": workflow, "stepstone.wait.kind": wait_kind},
        )

    def message_sent(self) -> None:
        self._record(self._sent.add, 1, None)

    def message_received(self, workflow: str) -> None:
        self._record(self._received.add, 1, {"stepstone.workflow.name": workflow})

    def _observe_connections(self, _options: CallbackOptions) -> Iterable[Observation]:
        stats = self._pool_stats()
        if not stats:
            return []
        size = stats.get("pool_size", 0)
        idle = stats.get("pool_available", 0)
        return [
            Observation(idle, {**self._executor, "state": "idle"}),
            Observation(max(0, size - idle), {**self._executor, "state": "used"}),
        ]

    def _observe_waiting(self, _options: CallbackOptions) -> Iterable[Observation]:
        stats = self._pool_stats()
        return [Observation(stats.get("requests_waiting", 0), self._executor)] if stats else []

    def _observe_waiting_executions(self, _options: CallbackOptions) -> Iterable[Observation]:
        # Runs on the metric reader's thread at each collection, never on a workflow's path.
        try:
            counts = self._waiting()
        except Exception as exc:  # noqa: BLE001 - a collection must not fail for a count
            self.log.debug("waiting_count_failed", error=str(exc)[:500])
            return []
        return [
            Observation(count, {"stepstone.workflow.name": name})
            for name, count in sorted(counts.items())
        ]
