"""Inputs and results decoded by the workflow's and steps' annotations; arguments checked
before anything is written; inputs an executor cannot decode left for another."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import time

import psycopg
import pytest

from stepstone import Runtime, UsageError
from stepstone.persistence.rows import StartRequest
from tests.support.runtime import wait_for


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass(frozen=True)
class Job:
    name: str
    due: dt.date
    priority: Priority


JOB = Job("nightly", dt.date(2026, 12, 1), Priority.HIGH)


def _from_script(text: str) -> str:
    """`text` as `python app.py` stores it: the dataclass under "__main__:Job", which a worker
    that imported the module (here: pytest's __main__, which has no Job) cannot find."""
    script = text.replace(f'"{__name__}:Job"', '"__main__:Job"')
    assert '"__main__:Job"' in script
    return script


def _released(rt: Runtime, workflow_id: str, name: str, inputs: str) -> None:
    """Write a RUNNING execution of `name` as another executor would, and hand it back, so
    that the sweep of `rt` claims it."""
    found = rt.store.start_execution(StartRequest(workflow_id, name, "1", inputs, "elsewhere"))
    assert rt.store.release_execution(
        workflow_id, "elsewhere", found.epoch, "test", interrupted=False
    )


def test_inputs_stored_by_a_script_are_rebuilt_by_the_annotations(rt: Runtime) -> None:
    """A dataclass stored under `__main__:Job` resumes elsewhere as a Job, from the annotation."""

    @rt.workflow(name="plan")
    def plan(job: Job, extra: Priority) -> Job:
        assert isinstance(job, Job)
        return dataclasses.replace(job, priority=extra)

    rt.launch()
    inputs = _from_script(rt.store.encode({"args": [JOB, Priority.LOW], "kwargs": {}}, "inputs"))
    _released(rt, "plan-1", "plan", inputs)
    wait_for(lambda: rt.handle("plan-1").status() == "SUCCEEDED")
    # Called again with its id: its stored result, decoded by the return annotation.
    assert plan.with_options(workflow_id="plan-1")(JOB, Priority.LOW) == dataclasses.replace(
        JOB, priority=Priority.LOW
    )


def test_step_results_replay_by_the_steps_return_annotation(rt: Runtime, db: str) -> None:
    """A step's recorded result replays as its annotated type after a takeover; unannotated
    ones replay as plain values."""

    @rt.step()
    def fetch() -> Job:
        return JOB

    @rt.step()
    def fetch_untyped():  # type: ignore[no-untyped-def]
        return JOB

    @rt.workflow(name="replayed")
    def replayed() -> tuple[str, object]:
        job, untyped = fetch(), fetch_untyped()
        return job.priority.name, untyped

    rt.launch()
    inputs = rt.store.encode({"args": [], "kwargs": {}}, "inputs")
    found = rt.store.start_execution(StartRequest("replay-1", "replayed", "1", inputs, "elsewhere"))
    for seq, step in enumerate(("fetch", "fetch_untyped")):
        with psycopg.connect(db) as conn:
            conn.execute(
                "INSERT INTO stepstone.steps (execution_id, seq, name, kind, output, attempts,"
                " started_at, finished_at) VALUES (%s, %s, %s, 'step', %s, 1, now(), now())",
                ("replay-1", seq, step, _from_script(rt.store.encode(JOB, "output"))),
            )
    assert rt.store.release_execution(
        "replay-1", "elsewhere", found.epoch, "test", interrupted=False
    )
    name, untyped = rt.handle("replay-1").result(timeout=15)
    assert name == "HIGH"
    assert untyped == {"name": "nightly", "due": dt.date(2026, 12, 1), "priority": 2}


def test_arguments_are_checked_against_the_signature_before_anything_is_written(
    rt: Runtime,
) -> None:
    """Arguments a workflow does not take, or that its annotations cannot decode, raise
    UsageError from start, a direct call and enqueue; no execution is written."""

    @rt.workflow(name="typed")
    def typed(n: int, job: Job | None = None) -> int:
        return n

    queue = rt.queue("q")
    rt.launch()
    with pytest.raises(
        UsageError, match=r"do not fit workflow 'typed'\(n, job=None\).*workflow_id"
    ):
        rt.start(typed, 1, workflow_id="a")  # type: ignore[call-arg]
    with pytest.raises(UsageError, match=r"argument 'n'.*not a valid int.*nothing was started"):
        typed.with_options(workflow_id="b")("many")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"argument 'job'.*nothing was enqueued"):
        queue.enqueue(typed.with_options(workflow_id="c"), 1, job={"name": "x"})  # type: ignore[arg-type]
    assert rt.list_executions().items == []
    assert typed.with_options(workflow_id="d")(3, job=JOB) == 3


def test_inputs_this_executor_cannot_decode_are_left_for_another(db: str) -> None:
    """An execution whose inputs do not decode here is refused, not failed: handed back
    once (audit log, health), never claimed again by this executor, run by another."""
    with Runtime(db, executor_id="strict", sweep_interval=0.2) as strict:

        @strict.workflow(name="count")
        def count(n: int) -> int:
            return n

        inputs = strict.store.encode({"args": ["twelve"], "kwargs": {}}, "inputs")
        _released(strict, "count-1", "count", inputs)
        wait_for(
            lambda: any(
                log.event == "execution_refused" for log in strict.store.list_logs("count-1")
            )
        )
        refused = [
            log for log in strict.store.list_logs("count-1") if log.event == "execution_refused"
        ]
        assert refused[0].actor == "strict"
        assert "cannot be decoded" in refused[0].details["reason"]
        assert "argument 'n'" in refused[0].details["reason"]
        row = strict.store.get_execution("count-1")
        assert row is not None
        assert row.status == "RUNNING"
        assert row.owner is None
        epoch = row.epoch
        health = strict.store.health_status()
        assert health.unclaimable == 1
        assert not health.healthy
        time.sleep(1.0)  # five sweep intervals
        again = strict.store.get_execution("count-1")
        assert again is not None
        assert again.epoch == epoch
        assert again.owner is None

        with Runtime(db, executor_id="lenient", sweep_interval=0.2) as lenient:

            @lenient.workflow(name="count")
            def count_text(n: str) -> int:
                return len(n)

            assert lenient.handle("count-1").result(timeout=15) == 6
        assert strict.store.health_status().unclaimable == 0


def test_a_started_handles_result_is_rebuilt_by_the_return_annotation(rt: Runtime) -> None:
    """The handle that rt.start returns reads a stored result as the workflow's annotated
    type; rt.handle(id), which knows no workflow function, reads it as stored (an enum's
    plain value)."""

    @rt.workflow(name="rank")
    def rank(name: str) -> Priority:
        return Priority.HIGH if name == "urgent" else Priority.LOW

    rt.launch()
    started = rt.start(rank.with_options(workflow_id="rk-1"), "urgent")
    wait_for(lambda: rt.handle("rk-1").status() == "SUCCEEDED")
    # Once the run is over in this process, the result is read from the database.
    wait_for(lambda: rt._engine.runs.future("rk-1") is None)
    result = started.result(timeout=10)
    assert type(result) is Priority
    assert result is Priority.HIGH
    plain = rt.handle("rk-1").result(timeout=10)
    assert type(plain) is int
    assert plain == 2
