"""Traces, metrics and logs, checked exactly through the SDK's in-memory exporters."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
import structlog
from opentelemetry import trace
from structlog.testing import capture_logs

import stepstone
from stepstone import RetryPolicy, Runtime, WorkflowFailed
from stepstone.telemetry import add_trace_context
from tests.support.otel import Recorded, render
from tests.support.runtime import FAST, Crash, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator


def providers_of(providers: stepstone.telemetry.Providers) -> dict[str, Any]:
    return {
        "tracer_provider": providers.tracer_provider,
        "meter_provider": providers.meter_provider,
        "logger_provider": providers.logger_provider,
    }


@pytest.fixture
def recorded() -> Recorded:
    return Recorded()


@pytest.fixture
def traced(db: str, recorded: Recorded) -> Iterator[Runtime]:
    runtime = Runtime(db, executor_id="traced", **recorded.providers())
    yield runtime
    runtime.shutdown()


def test_span_tree_of_a_workflow_with_steps_and_a_child(
    traced: Runtime, recorded: Recorded
) -> None:
    """One span per execution and per executed step, children nested, attributes set."""
    rt = traced
    rt.launch()
    with rt.store.connection() as conn:
        conn.execute("CREATE TABLE notes (body text)")

    @rt.transaction()
    def note(conn: psycopg.Connection[Any], body: str) -> None:
        conn.execute("INSERT INTO notes VALUES (%s)", [body])

    @rt.step()
    def charge(amount: int) -> str:
        return f"charged {amount}"

    @rt.workflow()
    def receipt(text: str) -> str:
        note(text)
        return text.upper()

    @rt.workflow()
    def checkout(amount: int) -> str:
        note("reserved")
        paid = charge(amount)
        return receipt(paid)

    assert checkout.with_options(workflow_id="co-1")(5) == "CHARGED 5"
    keys = (
        "stepstone.workflow.id",
        "stepstone.step.seq",
        "stepstone.step.attempt",
        "stepstone.recovered",
    )
    assert render(recorded.finished(), keys) == "\n".join(
        [
            "workflow checkout [stepstone.workflow.id=co-1, stepstone.recovered=False]",
            "  step note [stepstone.workflow.id=co-1, stepstone.step.seq=0, stepstone.step.attempt=1]",
            "  step charge [stepstone.workflow.id=co-1, stepstone.step.seq=1, stepstone.step.attempt=1]",
            "  step receipt [stepstone.workflow.id=co-1, stepstone.step.seq=2, stepstone.step.attempt=1]",
            "    workflow receipt [stepstone.workflow.id=co-1/2, stepstone.recovered=False]",
            "      step note [stepstone.workflow.id=co-1/2, stepstone.step.seq=0, stepstone.step.attempt=1]",
        ]
    )
    spans = recorded.finished()
    assert len({s.context.trace_id for s in spans}) == 1
    (workflow,) = [s for s in spans if s.name == "workflow checkout"]
    assert workflow.attributes is not None
    assert workflow.attributes["stepstone.workflow.name"] == "checkout"
    (step,) = [s for s in spans if s.name == "step charge"]
    assert step.attributes is not None
    assert step.attributes["stepstone.step.name"] == "charge"


def test_errors_and_retries_mark_the_spans(traced: Runtime, recorded: Recorded) -> None:
    """A retried step has retry events; a failed step and workflow have ERROR status and the
    exception recorded."""
    rt = traced
    attempts: list[int] = []

    @rt.step(retry=RetryPolicy(max_attempts=2, initial_interval=0))
    def flaky() -> None:
        attempts.append(1)
        raise ConnectionError(f"down {len(attempts)}")

    @rt.workflow()
    def fragile() -> None:
        flaky()

    rt.launch()
    with pytest.raises(WorkflowFailed):
        fragile.with_options(workflow_id="f-1")()
    assert render(recorded.finished(), ("stepstone.step.attempt",)) == "\n".join(
        ["workflow fragile ERROR", "  step flaky ERROR [stepstone.step.attempt=2]"]
    )
    step = next(s for s in recorded.finished() if s.name == "step flaky")
    assert [(e.name, (e.attributes or {}).get("stepstone.step.attempt")) for e in step.events] == [
        ("retry", 1),
        ("exception", None),
    ]
    assert step.status.description == "ConnectionError: down 2"
    workflow = next(s for s in recorded.finished() if s.name == "workflow fragile")
    assert [e.attributes["exception.type"] for e in workflow.events if e.attributes] == [
        "ConnectionError"
    ]


def test_callers_trace_is_the_parent_and_is_stored_with_the_execution(
    traced: Runtime, recorded: Recorded
) -> None:
    """Started inside a span of the caller, the workflow span is its child (also from the
    worker pool), and the execution row keeps the W3C context of the workflow span."""
    rt = traced

    @rt.workflow()
    def noop() -> int:
        return 1

    rt.launch()
    tracer = recorded.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("http request") as request:
        noop.with_options(workflow_id="n-1")()
        rt.start(noop.with_options(workflow_id="n-2")).result(timeout=10)
    assert render(recorded.finished()) == "http request\n  workflow noop\n  workflow noop"
    for workflow_id in ("n-1", "n-2"):
        with rt.store.connection() as conn:
            row = conn.execute(
                "SELECT trace_context FROM stepstone.executions WHERE id = %s", [workflow_id]
            ).fetchone()
        assert row is not None
        _version, trace_id, span_id, _flags = row[0]["traceparent"].split("-")
        assert int(trace_id, 16) == request.get_span_context().trace_id
        spans = {s.context.span_id for s in recorded.finished() if s.name == "workflow noop"}
        assert int(span_id, 16) in spans


def test_an_enqueued_execution_runs_in_the_enqueuers_trace_and_counts_one_start(
    traced: Runtime, recorded: Recorded
) -> None:
    """Enqueued inside a span, the execution's workflow span (run by the dispatcher) is a
    child of that span; it counts as one start, at its dispatch, also when a wait sends it
    back to its queue and it is started again."""
    rt = traced
    queue = rt.queue("traced")

    @rt.workflow()
    def queued() -> Any:
        return stepstone.recv("go")

    rt.launch()
    tracer = recorded.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("http request"):
        handle = queue.enqueue(queued.with_options(workflow_id="q-1"))
    wait_for(lambda: handle.status() == "WAITING")
    rt.send("q-1", "ok", topic="go")
    assert handle.result(timeout=15) == "ok"
    rt.telemetry.flush()
    assert render(recorded.finished()) == "http request\n  workflow queued\n  workflow queued"
    assert recorded.total("stepstone.workflow.started") == 1


def test_resumed_execution_continues_the_trace_without_spans_for_replayed_steps(
    traced: Runtime, recorded: Recorded
) -> None:
    """After an interruption, the resumed run is a child of the original workflow span (same
    trace id), marked recovered, with spans only for the steps that ran again."""
    rt = traced
    crash = {"now": True}

    @rt.step()
    def first() -> int:
        return 1

    @rt.step()
    def second() -> int:
        if crash["now"]:
            raise Crash
        return 2

    @rt.workflow()
    def twice() -> int:
        return first() + second()

    rt.launch()
    with pytest.raises(Crash):
        twice.with_options(workflow_id="t-1")()
    original = {s.name: s for s in recorded.finished()}
    recorded.spans.clear()
    crash["now"] = False
    assert twice.with_options(workflow_id="t-1")() == 3
    resumed = recorded.finished()
    assert render(resumed, ("stepstone.recovered",)) == "\n".join(
        ["workflow twice [stepstone.recovered=True]", "  step second"]
    )
    workflow = next(s for s in resumed if s.name == "workflow twice")
    assert workflow.context.trace_id == original["step first"].context.trace_id
    assert workflow.parent is not None
    assert workflow.parent.span_id == original["step first"].parent.span_id  # the first run's span


def test_async_execution_resumed_on_the_loop_thread_continues_the_trace(
    db: str, recorded: Recorded
) -> None:
    """An async execution interrupted on one executor and resumed by another's loop thread
    continues the original trace: a child of the original workflow span, marked
    recovered, with spans only for the steps that ran again."""
    crash = {"now": True}

    def define(rt: Runtime) -> Any:
        @rt.step(name="first")
        async def first() -> int:
            return 1

        @rt.step(name="second")
        async def second() -> int:
            if crash["now"]:
                raise Crash
            return 2

        @rt.workflow(name="twice")
        async def twice() -> int:
            return await first() + await second()

        return twice

    dying = Runtime(db, executor_id="dying", **FAST, **recorded.providers())
    twice = define(dying)

    async def main() -> None:
        async with dying:
            with pytest.raises(Crash):
                await twice.with_options(workflow_id="t-2")()

    asyncio.run(main())
    original = {s.name: s for s in recorded.finished()}
    recorded.spans.clear()
    crash["now"] = False
    with psycopg.connect(db, autocommit=True) as conn:  # its lease ran out
        conn.execute(
            "UPDATE stepstone.executors SET heartbeat_at = now() - interval '1 hour' "
            "WHERE id = 'dying'"
        )
    rt = Runtime(db, executor_id="resuming", **FAST, **recorded.providers())
    define(rt)
    with rt:
        assert rt.handle("t-2").result(timeout=15) == 3
    resumed = recorded.finished()
    assert render(resumed, ("stepstone.recovered",)) == "\n".join(
        ["workflow twice [stepstone.recovered=True]", "  step second"]
    )
    workflow = next(s for s in resumed if s.name == "workflow twice")
    assert workflow.context.trace_id == original["step first"].context.trace_id
    assert workflow.parent is not None
    assert workflow.parent.span_id == original["step first"].parent.span_id  # the first run's span


def test_metrics_count_executions_steps_retries_and_recoveries(
    traced: Runtime, recorded: Recorded
) -> None:
    """Started, completed by status, durations, retries, commit latency, recoveries and
    active executions; replayed steps are not counted."""
    rt = traced
    crash = {"now": True}
    failures: list[int] = []

    @rt.step(retry=RetryPolicy(max_attempts=3, initial_interval=0))
    def flaky() -> int:
        if len(failures) < 1:
            failures.append(1)
            raise ConnectionError("once")
        return 1

    @rt.step()
    def stop() -> None:
        if crash["now"]:
            raise Crash

    @rt.workflow()
    def counted(fail: bool) -> int:
        value = flaky()
        stop()
        if fail:
            raise ValueError("no")
        return value

    rt.launch()
    with pytest.raises(Crash):
        counted.with_options(workflow_id="m-1")(False)
    crash["now"] = False
    assert counted.with_options(workflow_id="m-1")(False) == 1
    with pytest.raises(WorkflowFailed):
        counted.with_options(workflow_id="m-2")(True)
    rt.telemetry.flush()

    assert recorded.total("stepstone.workflow.started") == 2
    assert recorded.total("stepstone.workflow.completed", **{"stepstone.status": "SUCCEEDED"}) == 1
    assert recorded.total("stepstone.workflow.completed", **{"stepstone.status": "FAILED"}) == 1
    assert recorded.total("stepstone.workflow.duration") == 2
    # m-1 ran flaky once (2 attempts) and stop twice (crash, then again); the replay of
    # flaky is not counted. m-2 ran both once.
    assert recorded.total("stepstone.step.duration", **{"stepstone.step.name": "flaky"}) == 2
    assert recorded.total("stepstone.step.duration", **{"stepstone.step.name": "stop"}) == 3
    assert recorded.total("stepstone.step.duration", **{"stepstone.outcome": "abandoned"}) == 1
    assert recorded.total("stepstone.step.retries") == 1
    assert recorded.total("stepstone.step.commit.duration") == 4
    assert (
        recorded.total(
            "stepstone.executions.recovered", **{"stepstone.recovery.reason": "called_again"}
        )
        == 1
    )
    assert recorded.total("stepstone.executions.active") == 0
    connections = recorded.points("stepstone.db.pool.connections")
    assert {attrs["state"] for attrs, _ in connections} == {"idle", "used"}


# -- waits and messages ---------------------------------------------------------------------


def _waiting_points(recorded: Recorded) -> dict[str, int]:
    return {
        attrs["stepstone.workflow.name"]: value
        for attrs, value in recorded.points("stepstone.executions.waiting")
    }


def test_a_message_wake_is_measured_and_is_no_recovery(traced: Runtime, recorded: Recorded) -> None:
    """A receive woken by a message: the waiting gauge counts it while it waits, the message
    is counted sent and received once, the wake has one latency measurement (by workflow
    and wait kind), and nothing counts as a recovery."""
    rt = traced

    @rt.workflow()
    def approval() -> Any:
        return stepstone.recv("go", timeout=600)

    rt.launch()
    handle = rt.start(approval.with_options(workflow_id="ap-1"))
    wait_for(lambda: handle.status() == "WAITING")
    assert _waiting_points(recorded) == {"approval": 1}
    rt.send("ap-1", "note", topic="log", idempotency_key="k")
    rt.send("ap-1", "note", topic="log", idempotency_key="k")  # a duplicate: not stored
    rt.send("ap-1", "yes", topic="go")
    assert handle.result(timeout=30) == "yes"
    rt.telemetry.flush()

    assert recorded.total("stepstone.messages.sent") == 2
    assert recorded.points("stepstone.messages.received") == [
        ({"stepstone.workflow.name": "approval"}, 1)
    ]
    assert recorded.points("stepstone.wake.latency") == [
        ({"stepstone.workflow.name": "approval", "stepstone.wait.kind": "recv"}, 1)
    ]
    assert recorded.total("stepstone.executions.recovered") == 0
    assert recorded.total("stepstone.workflow.duration", **{"stepstone.recovered": True}) == 0
    assert _waiting_points(recorded).get("approval", 0) == 0


def test_a_message_already_there_is_received_without_a_wake(
    traced: Runtime, recorded: Recorded
) -> None:
    """A receive that finds its message at once counts it received, with no wake."""
    rt = traced
    gate = threading.Event()

    @rt.step()
    def hold() -> None:
        assert gate.wait(30)

    @rt.workflow()
    def reader() -> Any:
        hold()
        return stepstone.recv("go")

    rt.launch()
    handle = rt.start(reader.with_options(workflow_id="rd-1"))
    rt.send("rd-1", 1, topic="go")
    gate.set()
    assert handle.result(timeout=30) == 1
    rt.telemetry.flush()
    assert recorded.points("stepstone.messages.received") == [
        ({"stepstone.workflow.name": "reader"}, 1)
    ]
    assert recorded.total("stepstone.messages.sent") == 1
    assert recorded.points("stepstone.wake.latency") == []


def test_wake_latency_runs_from_the_due_time_by_the_database_clock(
    traced: Runtime, recorded: Recorded, db: str
) -> None:
    """A sleep whose due time the database holds as an hour ago, woken now, measures a wake
    latency of at least that hour: the latency starts at wake_at, read by the database."""
    rt = traced

    @rt.workflow()
    def napper() -> str:
        stepstone.sleep(3600)
        return "up"

    rt.launch()
    handle = rt.start(napper.with_options(workflow_id="nap-1"))
    wait_for(lambda: handle.status() == "WAITING")
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "UPDATE stepstone.executions SET wake_at = now() - interval '1 hour' WHERE id = %s",
            ["nap-1"],
        )
        conn.execute("SELECT pg_notify('stepstone', 'due:nap-1')")
    assert handle.result(timeout=30) == "up"
    rt.telemetry.flush()
    (point,) = _histogram_points(recorded, "stepstone.wake.latency")
    assert point.attributes == {"stepstone.workflow.name": "napper", "stepstone.wait.kind": "sleep"}
    assert point.count == 1
    assert 3600 <= point.sum < 2 * 3600
    assert recorded.total("stepstone.executions.recovered") == 0


def _histogram_points(recorded: Recorded, name: str) -> list[Any]:
    data = recorded.metrics.get_metrics_data()
    return [
        point
        for resource in (data.resource_metrics if data else [])
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def test_a_woken_run_continues_the_trace_of_the_run_that_waited(
    traced: Runtime, recorded: Recorded
) -> None:
    """The run after a wake is a child of the first run's workflow span (same trace id),
    not marked recovered, with spans only for the steps it ran."""
    rt = traced

    @rt.step()
    def before() -> int:
        return 1

    @rt.step()
    def after(value: Any) -> str:
        return f"got {value}"

    @rt.workflow()
    def approval() -> str:
        before()
        return after(stepstone.recv("go"))

    rt.launch()
    handle = rt.start(approval.with_options(workflow_id="tr-1"))
    wait_for(lambda: handle.status() == "WAITING")
    rt.send("tr-1", "yes", topic="go")
    assert handle.result(timeout=30) == "got yes"
    assert render(recorded.finished(), ("stepstone.recovered",)) == "\n".join(
        [
            "workflow approval [stepstone.recovered=False]",
            "  step before",
            "  workflow approval [stepstone.recovered=False]",
            "    step after",
        ]
    )
    first, woken = sorted(
        (s for s in recorded.finished() if s.name == "workflow approval"),
        key=lambda s: s.start_time or 0,
    )
    assert woken.context.trace_id == first.context.trace_id
    assert woken.parent is not None
    assert woken.parent.span_id == first.context.span_id


def test_events_go_to_opentelemetry_logs_with_trace_correlation(
    traced: Runtime, recorded: Recorded
) -> None:
    """workflow_started, workflow_completed and step_retried are log records carrying the
    trace and span ids of the spans they happened in."""
    rt = traced

    failures: list[int] = []

    @rt.step(retry=RetryPolicy(max_attempts=2, initial_interval=0))
    def wobbly() -> int:
        if not failures:
            failures.append(1)
            raise ConnectionError("blip")
        return 1

    @rt.workflow()
    def logged() -> int:
        return wobbly()

    rt.launch()
    logged.with_options(workflow_id="l-1")()
    records = [r.log_record for r in recorded.logs.get_finished_logs()]
    ours = [r for r in records if (r.attributes or {}).get("workflow_id") == "l-1"]
    assert [r.body for r in ours] == ["workflow_started", "step_retried", "workflow_completed"]
    spans = {s.name: s for s in recorded.finished()}
    by_body = {r.body: r for r in ours}
    assert by_body["workflow_started"].trace_id == spans["workflow logged"].context.trace_id
    assert by_body["workflow_started"].span_id == spans["workflow logged"].context.span_id
    assert by_body["step_retried"].span_id == spans["step wobbly"].context.span_id
    assert by_body["step_retried"].severity_text == "INFO"
    assert (by_body["workflow_completed"].attributes or {})["status"] == "SUCCEEDED"


def test_structlog_events_are_bound_with_ids(
    traced: Runtime, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """With structlog configured by the application, events carry workflow id, step and
    trace/span ids (and go neither to logging nor to stdout); the trace-context processor adds
    ids to the application's own events."""
    rt = traced
    caplog.set_level(logging.DEBUG, logger="stepstone")

    @rt.step()
    def work() -> int:
        structlog.get_logger("app").info("inside_step")
        return 1

    @rt.workflow()
    def flow() -> int:
        return work()

    rt.launch()
    with capture_logs(processors=[add_trace_context]) as logs:
        flow.with_options(workflow_id="s-1")()
    events = {e["event"]: e for e in logs}
    assert {"workflow_started", "step_committed", "workflow_completed", "inside_step"} <= set(
        events
    )
    assert events["step_committed"]["workflow_id"] == "s-1"
    assert events["step_committed"]["step"] == "work"
    assert events["inside_step"]["trace_id"] == events["workflow_started"]["trace_id"]
    assert events["inside_step"]["span_id"] == events["step_committed"]["span_id"]
    assert not [r for r in caplog.records if r.name.startswith("stepstone")]
    assert capfd.readouterr().out == ""


def test_logging_configured_app_gets_events_as_records_of_the_stepstone_logger(
    db: str, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """With only logging set up, a run's events are LogRecords of `stepstone` at their levels,
    with the event and fields as attributes and in a `key=value` message; stdout gets nothing."""
    caplog.set_level(logging.DEBUG, logger="stepstone")
    with Runtime(db) as rt:

        @rt.step()
        def work() -> int:
            return 1

        @rt.workflow()
        def flow() -> int:
            return work()

        assert flow.with_options(workflow_id="lg-1")() == 1
    ours = [r for r in caplog.records if getattr(r, "workflow_id", None) == "lg-1"]
    by_event = {r.event: r for r in ours}  # type: ignore[attr-defined]
    assert {"workflow_started", "step_committed", "workflow_completed"} <= set(by_event)
    assert all(r.name == "stepstone" or r.name.startswith("stepstone.") for r in ours)
    committed = by_event["step_committed"]
    assert committed.levelno == logging.DEBUG
    assert by_event["workflow_started"].levelno == logging.INFO
    assert committed.step == "work"  # type: ignore[attr-defined]
    assert committed.fields["workflow_id"] == "lg-1"  # type: ignore[attr-defined]
    assert committed.getMessage().startswith("step_committed workflow_id=lg-1 ")
    assert " step=work" in committed.getMessage()
    assert "telemetry" not in committed.pathname  # the location is the code emitting it
    assert capfd.readouterr().out == ""


def test_a_field_named_like_a_record_attribute_stays_in_the_fields(
    empty_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    """migration_applied's `name` field is in the message and record.fields while record.name
    stays the logger's name."""
    caplog.set_level(logging.INFO, logger="stepstone")
    with Runtime(empty_db) as rt:
        rt.launch()
    applied = [r for r in caplog.records if getattr(r, "event", None) == "migration_applied"]
    assert applied
    assert applied[0].name == "stepstone"
    assert applied[0].fields["name"]  # type: ignore[attr-defined]
    assert f"name={applied[0].fields['name']}" in applied[0].getMessage()  # type: ignore[attr-defined]


def test_configure_structlog_writes_to_stderr_without_colours_off_a_terminal(
    db: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """configure(configure_structlog=True) renders the events with their fields on stderr,
    with no ANSI escape when stderr is not a terminal, and nothing on stdout."""
    providers = stepstone.telemetry.configure(
        exporter="none", set_global=False, configure_structlog=True
    )
    try:
        with Runtime(db, **providers_of(providers)) as rt:

            @rt.workflow()
            def shown() -> int:
                return 1

            assert shown.with_options(workflow_id="c-1")() == 1
    finally:
        providers.shutdown()
        stepstone.telemetry.set_bridge_level(logging.INFO)
    out, err = capfd.readouterr()
    assert out == ""
    assert "workflow_started" in err
    assert "workflow_id=c-1" in err
    assert "\x1b[" not in err


def test_library_installs_no_global_provider(db: str) -> None:
    """Running workflows leaves the global OpenTelemetry providers as the application left them."""
    before = trace.get_tracer_provider()
    with Runtime(db) as rt:

        @rt.workflow()
        def plain() -> int:
            return 1

        assert plain() == 1
    assert trace.get_tracer_provider() is before
    assert type(before).__name__ in ("ProxyTracerProvider", "NoOpTracerProvider")


class _Stop(BaseException):
    """Stops a workflow the way KeyboardInterrupt would: it is handed back, with a warning."""


def test_with_nothing_configured_warnings_reach_stderr_and_nothing_stdout(
    db: str, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With neither structlog nor logging configured, a warning goes to stderr through
    logging's last resort, INFO events are not shown, and stdout gets nothing."""
    monkeypatch.setattr(logging.root, "handlers", [])  # no handler at all, as in a bare script
    with Runtime(db) as rt:

        @rt.step()
        def interrupted() -> None:
            raise _Stop

        @rt.workflow()
        def quiet() -> None:
            interrupted()

        with pytest.raises(_Stop):
            quiet.with_options(workflow_id="q-1")()
    out, err = capfd.readouterr()
    assert out == ""
    assert "workflow_interrupted workflow_id=q-1" in err
    assert "workflow_started" not in err


def test_configure_builds_providers_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """configure() picks OTLP when an endpoint variable is set, console otherwise, and
    refuses unknown exporters and protocols."""
    from opentelemetry.sdk.trace import TracerProvider

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    console = stepstone.telemetry.configure(set_global=False, service_name="svc")
    assert isinstance(console.tracer_provider, TracerProvider)
    assert console.tracer_provider.resource.attributes["service.name"] == "svc"
    processor = console.tracer_provider._active_span_processor._span_processors[0]
    assert type(processor.span_exporter).__name__ == "ConsoleSpanExporter"  # type: ignore[attr-defined]
    console.shutdown()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    otlp = stepstone.telemetry.configure(set_global=False, log_level=logging.DEBUG)
    processor = otlp.tracer_provider._active_span_processor._span_processors[0]
    assert type(processor.span_exporter).__module__.endswith("grpc.trace_exporter")  # type: ignore[attr-defined]
    otlp.shutdown()
    stepstone.telemetry.set_bridge_level(logging.INFO)
    with pytest.raises(stepstone.ConfigurationError, match="exporter must be"):
        stepstone.telemetry.configure(set_global=False, exporter="zipkin")  # type: ignore[arg-type]
    with pytest.raises(stepstone.ConfigurationError, match="protocol must be"):
        stepstone.telemetry.configure(set_global=False, exporter="otlp", protocol="thrift")  # type: ignore[arg-type]


def test_events_are_bridged_only_to_a_real_logger_provider() -> None:
    """With the API's no-op or proxy logger provider no log record is built; with an SDK
    provider INFO events are bridged and DEBUG ones are not."""
    from opentelemetry.sdk._logs import LoggerProvider

    from stepstone.telemetry import EventLog

    assert not EventLog("stepstone").enabled(logging.INFO) or structlog.is_configured()
    real = EventLog("stepstone", LoggerProvider())
    assert real._bridged(logging.INFO)
    assert not real._bridged(logging.DEBUG)
    assert not EventLog("stepstone")._bridged(logging.INFO)


def test_async_workflow_and_its_concurrent_steps_have_the_same_spans(
    traced: Runtime, recorded: Recorded
) -> None:
    """An async workflow gets a workflow span and each step it runs a step span under it,
    steps started together (asyncio.gather) included, in one trace."""
    rt = traced

    @rt.step()
    async def first() -> int:
        await asyncio.sleep(0.05)
        return 1

    @rt.step()
    async def second() -> int:
        return 2

    @rt.workflow()
    async def pair() -> int:
        a, b = await asyncio.gather(first(), second())
        return a + b

    async def main() -> int:
        async with rt:
            return await pair.with_options(workflow_id="as-1")()

    assert asyncio.run(main()) == 3
    keys = ("stepstone.workflow.id", "stepstone.step.seq")
    assert render(recorded.finished(), keys) == "\n".join(
        [
            "workflow pair [stepstone.workflow.id=as-1]",
            "  step first [stepstone.workflow.id=as-1, stepstone.step.seq=0]",
            "  step second [stepstone.workflow.id=as-1, stepstone.step.seq=1]",
        ]
    )
    assert len({s.context.trace_id for s in recorded.finished()}) == 1
