"""Operator actions through the Runtime: cancel, resume, fork, purge and retention, and the
statistics over stored executions."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql

import stepstone
from stepstone import (
    ExecutionFilter,
    RetryPolicy,
    Runtime,
    UsageError,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowNotFound,
)
from tests.support.runtime import FAST


def _events(rt: Runtime, workflow_id: str) -> list[tuple[str, str | None]]:
    return [(log.event, log.actor) for log in rt.store.list_logs(workflow_id)]


def test_cancel_stops_a_running_execution_at_its_next_step(rt: Runtime) -> None:
    """A cancelled execution ends CANCELLED; the step in flight commits nothing (its SQL
    rolls back), no later step runs, and the caller gets WorkflowCancelled."""
    rt.launch()
    with rt.store.connection() as conn:
        conn.execute("CREATE TABLE marks (note text)")
    inside = threading.Event()
    cancelled = threading.Event()
    ran: list[str] = []

    @rt.step()
    def first() -> None:
        ran.append("first")

    @rt.transaction()
    def slow(conn: psycopg.Connection[Any]) -> None:
        conn.execute("INSERT INTO marks VALUES ('slow')")
        inside.set()
        cancelled.wait(10)

    @rt.step()
    def after() -> None:
        ran.append("after")

    @rt.workflow()
    def long_job() -> None:
        first()
        slow()
        after()

    handle = rt.start(long_job.with_options(workflow_id="job-1"))
    assert inside.wait(10)
    rt.cancel("job-1")
    cancelled.set()
    with pytest.raises(WorkflowCancelled, match="'job-1' was cancelled"):
        handle.result(timeout=10)
    assert handle.status() == "CANCELLED"
    assert ran == ["first"]
    assert [s.name for s in rt.store.list_steps("job-1")] == ["first"]
    with rt.store.connection() as conn:
        assert conn.execute("SELECT count(*) FROM marks").fetchone() == (0,)
    assert ("execution_cancelled", rt.executor_id) in _events(rt, "job-1")


def test_cancel_refuses_ended_and_unknown_executions(rt: Runtime) -> None:
    """Cancelling what already ended, or what does not exist, is refused and changes nothing."""

    @rt.workflow()
    def quick() -> int:
        return 1

    rt.launch()
    quick.with_options(workflow_id="done-1")()
    with pytest.raises(UsageError, match=r"cannot cancel 'done-1': it already ended \(SUCCEEDED\)"):
        rt.cancel("done-1")
    with pytest.raises(WorkflowNotFound, match="'ghost'"):
        rt.cancel("ghost")
    assert rt.handle("done-1").status() == "SUCCEEDED"
    assert [e for e, _ in _events(rt, "done-1")] == ["execution_started", "execution_succeeded"]


def test_cancelled_enqueued_execution_never_starts(rt: Runtime, db: str) -> None:
    """An ENQUEUED execution cancelled before it starts ends CANCELLED and is never run."""

    @rt.workflow()
    def queued() -> int:
        raise AssertionError("must not run")

    rt.launch()
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO stepstone.executions (id, workflow_name, workflow_version, status, inputs) "
            "VALUES ('q-1', 'queued', '1', 'ENQUEUED', '{\"args\": [], \"kwargs\": {}}')"
        )
    rt.cancel("q-1")
    with pytest.raises(WorkflowCancelled):
        rt.handle("q-1").result(timeout=5)


def test_resume_runs_a_failed_execution_again_from_its_failed_step(rt: Runtime) -> None:
    """Resuming a FAILED execution replays its completed steps and runs the failed step again."""
    calls: list[str] = []
    broken = {"now": True}

    @rt.step()
    def prepare() -> str:
        calls.append("prepare")
        return "prepared"

    @rt.step()
    def flaky() -> str:
        calls.append("flaky")
        if broken["now"]:
            raise RuntimeError("dependency down")
        return "ok"

    @rt.workflow()
    def repairable() -> str:
        return f"{prepare()} {flaky()}"

    rt.launch()
    with pytest.raises(WorkflowFailed, match="dependency down"):
        repairable.with_options(workflow_id="fix-1")()
    broken["now"] = False
    handle = rt.resume("fix-1")
    assert handle.result(timeout=10) == "prepared ok"
    assert calls == ["prepare", "flaky", "flaky"]
    resumed = [log for log in rt.store.list_logs("fix-1") if log.event == "execution_resumed"]
    assert resumed[0].actor == rt.executor_id
    assert resumed[0].details["reason"] == "operator"
    assert resumed[0].details["failed_steps_removed"] == 1


def test_resume_refuses_a_running_or_succeeded_execution(rt: Runtime) -> None:
    """Only FAILED or CANCELLED executions can be resumed; others are left as they are."""

    @rt.workflow()
    def fine() -> int:
        return 1

    rt.launch()
    fine.with_options(workflow_id="fine-1")()
    with pytest.raises(UsageError, match="it is SUCCEEDED; only FAILED or CANCELLED"):
        rt.resume("fine-1")
    with pytest.raises(WorkflowNotFound):
        rt.resume("nobody")
    assert rt.handle("fine-1").status() == "SUCCEEDED"


def test_resume_of_a_cancelled_execution_continues_it(rt: Runtime) -> None:
    """A cancelled execution, resumed, runs on from where it stopped."""
    gate = threading.Event()
    inside = threading.Event()
    ran: list[str] = []

    @rt.step()
    def one() -> None:
        ran.append("one")

    @rt.step()
    def two() -> None:
        ran.append("two")
        inside.set()
        gate.wait(10)

    @rt.workflow()
    def stoppable() -> str:
        one()
        two()
        return "finished"

    rt.launch()
    handle = rt.start(stoppable.with_options(workflow_id="stop-1"))
    assert inside.wait(10)
    rt.cancel("stop-1")
    gate.set()
    with pytest.raises(WorkflowCancelled):
        handle.result(timeout=10)
    assert rt.resume("stop-1").result(timeout=10) == "finished"
    assert ran == ["one", "two", "two"]


def test_fork_reuses_steps_before_n_and_the_state_there(rt: Runtime) -> None:
    """A fork from step N keeps the recorded steps before N (not run again), starts from the
    state checkpointed at N, and runs steps from N on again."""
    runs: list[str] = []

    @rt.step()
    def load(n: int) -> int:
        runs.append(f"load{n}")
        return n

    @rt.workflow()
    def pipeline() -> int:
        total = 0
        for n in range(3):
            total += load(n)
            stepstone.current().state["total"] = total
        return total

    rt.launch()
    assert pipeline.with_options(workflow_id="src")() == 3
    runs.clear()
    forked = rt.fork("src", 2, new_workflow_id="src-again")
    assert forked.workflow_id == "src-again"
    assert forked.result(timeout=10) == 3
    assert runs == ["load2"]
    copied = rt.store.get_execution("src-again")
    assert copied is not None
    assert copied.attributes == {"stepstone.forked_from": "src", "stepstone.fork_step": 2}
    assert [e for e, _ in _events(rt, "src")][-1] == "execution_forked_to"
    with pytest.raises(UsageError, match="from step 4: it has 3 recorded steps"):
        rt.fork("src", 4)
    with pytest.raises(WorkflowNotFound):
        rt.fork("nope", 0)


def test_purge_deletes_old_finished_executions_with_everything_theirs(rt: Runtime, db: str) -> None:
    """Executions that ended long enough ago go with their steps, state, checkpoints and
    log; recent and unfinished ones stay; the purge itself is logged."""

    @rt.step()
    def work(n: int) -> int:
        return n

    @rt.workflow()
    def kept(n: int) -> int:
        stepstone.current().state["n"] = n
        return work(n)

    rt.launch()
    for n in range(5):
        kept.with_options(workflow_id=f"old-{n}")(n)
    kept.with_options(workflow_id="recent")(9)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "UPDATE stepstone.executions SET finished_at = now() - interval '40 days' WHERE id LIKE 'old-%'"
        )
        conn.execute(
            "INSERT INTO stepstone.executions (id, workflow_name, workflow_version, status, inputs, created_at) "
            "VALUES ('old-running', 'kept', '1', 'RUNNING', '{}', now() - interval '40 days')"
        )
    assert rt.store.purge(dt.timedelta(days=30), "test", batch_size=2) == 5
    with psycopg.connect(db) as conn:
        for table, column in (
            ("executions", "id"),
            ("steps", "execution_id"),
            ("states", "execution_id"),
            ("checkpoints", "execution_id"),
        ):
            query = sql.SQL("SELECT count(*) FROM {} WHERE {} LIKE 'old-%%'").format(
                sql.Identifier("stepstone", table), sql.Identifier(column)
            )
            left = conn.execute(query).fetchone()
            assert left == ((1,) if table == "executions" else (0,)), table
        logs = conn.execute(
            "SELECT count(*) FROM stepstone.logs WHERE execution_id LIKE 'old-%'"
        ).fetchone()
        purge_log = conn.execute(
            "SELECT actor, details->>'deleted' FROM stepstone.logs WHERE execution_id = '' AND event = 'executions_purged'"
        ).fetchall()
    assert logs == (0,)
    assert purge_log == [("test", "5")]
    assert rt.handle("recent").status() == "SUCCEEDED"
    with pytest.raises(stepstone.InvalidQuery, match="older_than must be a positive timedelta"):
        rt.purge(dt.timedelta(0))


def test_retention_policy_purges_in_the_background(db: str) -> None:
    """With retention set, the runtime purges old finished executions by itself."""
    with Runtime(db, retention=dt.timedelta(days=1), retention_interval=0.2, **FAST) as rt:

        @rt.workflow()
        def brief() -> int:
            return 1

        brief.with_options(workflow_id="ancient")()
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("UPDATE stepstone.executions SET finished_at = now() - interval '3 days'")
        deadline = time.monotonic() + 10
        while rt.store.get_execution("ancient") is not None:
            assert time.monotonic() < deadline, "the retention policy did not purge"
            time.sleep(0.05)


def test_listing_filters_by_attributes_and_pages(rt: Runtime) -> None:
    """Executions started with attributes are found by containment, page by page."""

    @rt.workflow()
    def tagged(n: int) -> int:
        return n

    rt.launch()
    for n in range(7):
        tagged.with_options(
            workflow_id=f"t-{n}", attributes={"tenant": "acme" if n % 2 else "other", "n": n}
        )(n)
    seen: list[str] = []
    cursor = None
    while True:
        page = rt.list_executions(
            ExecutionFilter(attributes={"tenant": "acme"}), limit=2, cursor=cursor
        )
        seen += [item.id for item in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ["t-5", "t-3", "t-1"]
    with pytest.raises(UsageError, match="attributes must be a dict with string keys"):
        tagged.with_options(attributes={1: "x"})  # type: ignore[dict-item]


def test_statistics_and_slowest_steps_are_derived_from_the_rows(rt: Runtime) -> None:
    """Counts by outcome, percentiles and retries per workflow, and the slowest steps, over a
    time window."""
    failures: list[int] = []

    @rt.step(retry=RetryPolicy(max_attempts=2, initial_interval=0))
    def sometimes(n: int) -> int:
        if n == 0 and not failures:
            failures.append(1)
            raise ConnectionError("once")
        if n == 2:
            time.sleep(0.05)
        return n

    @rt.workflow()
    def measured(n: int) -> int:
        if n == 3:
            raise ValueError("bad")
        return sometimes(n)

    rt.launch()
    for n in range(4):
        try:
            measured(n)
        except WorkflowFailed:
            pass
    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    (stats,) = rt.store.workflow_stats(since)
    assert (stats.workflow_name, stats.count, stats.succeeded, stats.failed, stats.retries) == (
        "measured",
        4,
        3,
        1,
        1,
    )
    assert stats.success_rate == pytest.approx(0.75)
    assert stats.p50_seconds is not None
    assert stats.p99_seconds is not None
    assert stats.p50_seconds <= stats.p99_seconds
    (slowest,) = rt.store.slowest_steps(since, limit=1)
    assert (slowest.workflow_name, slowest.step_name, slowest.attempts) == (
        "measured",
        "sometimes",
        1,
    )
    assert slowest.seconds >= 0.04  # the n == 2 call, which sleeps
    with pytest.raises(stepstone.InvalidQuery, match="window is empty"):
        rt.store.workflow_stats(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))


def test_fork_checks_the_new_id(rt: Runtime) -> None:
    """A fork's new id follows the workflow id rules, and an id in use is a clear conflict."""

    @rt.workflow()
    def base() -> int:
        return 1

    rt.launch()
    base.with_options(workflow_id="base-1")()
    base.with_options(workflow_id="taken")()
    with pytest.raises(
        stepstone.InvalidWorkflowId, match="300 characters long, over the limit of 255"
    ):
        rt.store.fork_execution("base-1", 0, "test", new_id="x" * 300)
    with pytest.raises(stepstone.InvalidWorkflowId):
        rt.store.fork_execution("base-1", 0, "test", new_id="")
    with pytest.raises(
        stepstone.WorkflowIdConflict,
        match="'taken' already belongs to an execution of 'base'",
    ):
        rt.store.fork_execution("base-1", 0, "test", new_id="taken")


def test_statistics_are_plain_numbers(rt: Runtime) -> None:
    """Statistics come back as int and float (not Decimal), ready for JSON."""
    import dataclasses
    import json

    @rt.step()
    def s() -> int:
        return 1

    @rt.workflow()
    def w() -> int:
        return s()

    rt.launch()
    w()
    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    json.dumps([dataclasses.asdict(x) for x in rt.store.workflow_stats(since)])
    json.dumps([dataclasses.asdict(x) for x in rt.store.slowest_steps(since)])
    (stats,) = rt.store.workflow_stats(since)
    assert type(stats.retries) is int


def test_purge_prunes_executors_dead_longer_than_the_retention(rt: Runtime, db: str) -> None:
    """A purge deletes the rows of executors whose last heartbeat is older than its cutoff
    and that own no running execution; a recent one and a long-dead one that still owns a
    running execution stay; the purge's log names the pruned ones."""
    rt.launch()
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO stepstone.executors (id, hostname, pid, lease_seconds, heartbeat_at) "
            "VALUES ('old', 'h', 1, 30, now() - interval '40 days'), "
            "('old-busy', 'h', 2, 30, now() - interval '40 days'), "
            "('stopped', 'h', 3, 30, '-infinity'), "
            "('recent', 'h', 4, 30, now() - interval '1 day')"
        )
        conn.execute(
            "INSERT INTO stepstone.executions (id, workflow_name, workflow_version, status, "
            "inputs, owner) VALUES ('busy-1', 'wf', '1', 'RUNNING', '{}', 'old-busy')"
        )
    assert rt.purge(dt.timedelta(days=30)) == 0
    ids = {e.id for e in rt.store.list_executors()}
    assert {"old-busy", "recent", rt.executor_id} <= ids
    assert not ids & {"old", "stopped"}
    purged = rt.store.list_logs("")[-1]
    assert purged.event == "executions_purged"
    assert sorted(purged.details["executors_pruned"]) == ["old", "stopped"]
