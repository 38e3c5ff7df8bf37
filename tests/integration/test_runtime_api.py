"""The public Runtime API as a user meets it."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import textwrap
import threading
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

import stepstone
from stepstone import (
    NotLaunched,
    ResultTimeout,
    RetryPolicy,
    Runtime,
    StepOutsideWorkflow,
    UnregisteredWorkflow,
    UsageError,
    WorkflowFailed,
    WorkflowNotFound,
)

if TYPE_CHECKING:
    from collections.abc import Callable


def test_calling_a_workflow_runs_it_durably_in_the_calling_thread(rt: Runtime) -> None:
    """A direct call returns the result and leaves a SUCCEEDED execution with its steps."""
    seen: list[str] = []

    @rt.step()
    def add(a: int, b: int) -> int:
        seen.append(threading.current_thread().name)
        return a + b

    @rt.workflow()
    def total(a: int, b: int) -> int:
        seen.append(threading.current_thread().name)
        return add(a, b) * 10

    rt.launch()
    assert total(2, b=3) == 50
    assert seen == [threading.current_thread().name] * 2
    rows = rt.store.list_steps(_only_execution(rt))
    assert [(r.seq, r.name, r.output) for r in rows] == [(0, "add", "5")]


def _only_execution(rt: Runtime) -> str:
    with rt.store.connection() as conn:
        rows = conn.execute("SELECT id, status FROM stepstone.executions").fetchall()
    assert len(rows) == 1
    assert rows[0][1] == "SUCCEEDED"
    return str(rows[0][0])


def test_start_runs_in_the_worker_pool_and_returns_a_handle(rt: Runtime) -> None:
    """rt.start returns at once with a handle whose result and status come from the run."""
    release = threading.Event()
    threads: list[str] = []

    @rt.step()
    def wait() -> str:
        threads.append(threading.current_thread().name)
        release.wait(10)
        return "done"

    @rt.workflow()
    def slow() -> str:
        return wait()

    rt.launch()
    handle = rt.start(slow.with_options(workflow_id="slow-1"))
    assert handle.workflow_id == "slow-1"
    assert handle.status() == "RUNNING"
    with pytest.raises(ResultTimeout, match="slow-1"):
        handle.result(timeout=0.05)
    release.set()
    assert handle.result(timeout=10) == "done"
    assert handle.status() == "SUCCEEDED"
    assert threads[0].startswith("stepstone-worker")
    assert rt.handle("slow-1").result(timeout=1) == "done"


def test_generated_ids_are_unique(rt: Runtime) -> None:
    """Without an explicit id every call is a new execution."""

    @rt.workflow()
    def one() -> int:
        return 1

    rt.launch()
    handles = [rt.start(one) for _ in range(5)]
    assert len({h.workflow_id for h in handles}) == 5
    assert [h.result(timeout=10) for h in handles] == [1] * 5


def test_state_is_durable_and_readable_from_another_process(rt: Runtime, db: str) -> None:
    """current().state changes are committed with the next step and read by another process."""
    checkpoint_reached = threading.Event()
    release = threading.Event()

    @rt.step()
    def mark() -> None:
        return None

    @rt.step()
    def hold() -> None:
        checkpoint_reached.set()
        release.wait(10)

    @rt.workflow()
    def staged() -> str:
        ctx = stepstone.current()
        ctx.state["stage"] = "reserved"
        ctx.state["items"] = ("a", 1)
        mark()
        ctx.state["stage"] = "charging"
        hold()
        ctx.state["stage"] = "done"
        return ctx.workflow_id

    rt.launch()
    handle = rt.start(staged.with_options(workflow_id="staged-1"))
    assert checkpoint_reached.wait(10)
    script = textwrap.dedent(
        f"""
        from stepstone import Runtime
        rt = Runtime({db!r})
        rt.launch()
        print(repr(rt.get_state("staged-1")))
        rt.shutdown()
        """
    )
    seen = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    # The change made just before hold() commits with hold's record, not before.
    assert seen.strip().splitlines()[-1] == "{'items': ('a', 1), 'stage': 'reserved'}"
    release.set()
    assert handle.result(timeout=10) == "staged-1"
    assert rt.get_state("staged-1") == {"stage": "done", "items": ("a", 1)}


def test_state_mutated_in_place_is_committed(rt: Runtime) -> None:
    """A value changed in place (not reassigned) is still seen as a change."""

    @rt.step()
    def noop() -> None:
        return None

    @rt.workflow()
    def grow() -> None:
        items: list[int] = []
        stepstone.current().state["items"] = items
        noop()
        items.append(1)
        noop()
        del stepstone.current().state["items"]
        stepstone.current().state["gone"] = True

    rt.launch()
    grow.with_options(workflow_id="grow-1")()
    states = [rt.store.recover_from_checkpoint("grow-1", n) for n in (1, 2, 3)]
    # Position 2 holds the latest state committed with two steps done: the completion's.
    assert [(c.seq, c.state) if c else None for c in states] == [
        (1, {"items": "[]"}),
        (2, {"gone": "true"}),
        (2, {"gone": "true"}),
    ]
    with rt.store.connection() as conn:
        snapshots = conn.execute("SELECT count(*) FROM stepstone.checkpoints").fetchone()
    assert snapshots == (2,)
    assert rt.get_state("grow-1") == {"gone": True}


def test_current_outside_a_workflow_is_a_clear_error() -> None:
    """stepstone.current() outside a workflow says where to call it."""
    with pytest.raises(UsageError, match="outside a running workflow"):
        stepstone.current()


def test_step_called_outside_a_workflow_is_refused(rt: Runtime) -> None:
    """A step is not run, durably or otherwise, outside a workflow."""
    ran: list[int] = []

    @rt.step()
    def side_effect() -> None:
        ran.append(1)

    rt.launch()
    with pytest.raises(StepOutsideWorkflow, match="'side_effect' was called outside a workflow"):
        side_effect()
    assert ran == []


def test_workflow_called_before_launch_is_refused(rt: Runtime) -> None:
    """Calling before launch() (or after shutdown()) says what to do and writes nothing."""

    @rt.workflow()
    def early() -> int:
        return 1

    with pytest.raises(NotLaunched, match=r"call rt\.launch\(\) first"):
        early()
    rt.launch()
    assert early() == 1
    rt.shutdown()
    with pytest.raises(NotLaunched):
        early()


def test_reads_before_launch_or_after_shutdown_are_refused(rt: Runtime) -> None:
    """Reads and operations before launch() or after shutdown() raise NotLaunched, as calls
    do; health_status() answers (it reports an unreachable database)."""
    reads: dict[str, Callable[[], object]] = {
        "rt.get_state()": lambda: rt.get_state("any"),
        "rt.wait_state()": lambda: rt.wait_state("any", "key", timeout=1),
        "rt.list_executions()": rt.list_executions,
        "rt.send()": lambda: rt.send("any", "hello"),
        "rt.cancel()": lambda: rt.cancel("any"),
        "rt.purge()": lambda: rt.purge(dt.timedelta(days=1)),
        "handle.status()": lambda: rt.handle("any").status(),
        "handle.result()": lambda: rt.handle("any").result(timeout=1),
        "handle.get_state()": lambda: rt.handle("any").get_state(),
    }
    for moment in ("before launch", "after shutdown"):
        if moment == "after shutdown":
            rt.launch()
            rt.shutdown()
        for what, read in reads.items():
            with pytest.raises(
                NotLaunched, match=rf"^{re.escape(what)} .*call rt\.launch\(\) first"
            ):
                read()
        assert rt.health_status().reachable, moment


def test_state_of_an_unknown_workflow_id_is_a_clear_error(rt: Runtime) -> None:
    """get_state of an id no execution has raises WorkflowNotFound, not an empty state."""

    @rt.workflow()
    def stateless() -> int:
        return 1

    rt.launch()
    stateless.with_options(workflow_id="known")()
    assert rt.get_state("known") == {}
    assert rt.handle("known").get_state() == {}
    with pytest.raises(WorkflowNotFound, match="'nope'"):
        rt.get_state("nope")
    with pytest.raises(WorkflowNotFound, match="'nope'"):
        rt.handle("nope").get_state()


def test_workflow_of_another_runtime_is_refused(rt: Runtime, db: str) -> None:
    """rt.start only takes this runtime's workflows."""
    other = Runtime(db)

    @other.workflow()
    def foreign() -> int:
        return 1

    rt.launch()
    with pytest.raises(UnregisteredWorkflow, match="not a workflow of this runtime"):
        rt.start(foreign)


def test_decorator_without_parentheses_is_explained(rt: Runtime) -> None:
    """@rt.workflow without () raises a message that shows the right spelling."""
    with pytest.raises(UsageError, match=r"@rt\.workflow\(\) with parentheses"):
        rt.workflow(lambda: None)  # type: ignore[arg-type]


def test_context_manager_launches_and_shuts_down(db: str) -> None:
    """`with Runtime(...) as rt` launches on entry and closes the pool on exit."""
    with Runtime(db) as rt:

        @rt.workflow()
        def late() -> str:
            return "registered after launch"

        assert late() == "registered after launch"
        assert rt.store.load_workflow("late") is not None
    with pytest.raises(NotLaunched):
        late()


def test_unknown_workflow_id_handle_is_a_clear_error(rt: Runtime) -> None:
    """A handle to an id that does not exist says so."""
    rt.launch()
    with pytest.raises(WorkflowNotFound, match="'nope'"):
        rt.handle("nope").status()
    with pytest.raises(WorkflowNotFound):
        rt.handle("nope").result(timeout=1)


def test_failed_workflow_raises_workflow_failed_with_the_cause(rt: Runtime) -> None:
    """A workflow that raises ends FAILED; callers get WorkflowFailed caused by the error."""

    @rt.workflow()
    def broken(x: int) -> int:
        raise ValueError(f"bad {x}")

    rt.launch()
    with pytest.raises(WorkflowFailed, match="failed with ValueError: bad 3") as info:
        broken.with_options(workflow_id="broken-1")(3)
    assert isinstance(info.value.__cause__, ValueError)
    assert rt.handle("broken-1").status() == "FAILED"
    with pytest.raises(WorkflowFailed) as again:
        rt.handle("broken-1").result(timeout=1)
    assert isinstance(again.value.__cause__, ValueError)
    assert str(again.value.__cause__) == "bad 3"
    row = rt.store.get_execution("broken-1")
    assert row is not None
    assert row.error is not None
    assert row.error["type"] == "builtins:ValueError"
    assert "Traceback" in row.error["traceback"]


def test_step_retries_follow_the_policy_and_are_audited(rt: Runtime) -> None:
    """A flaky step is retried per its policy; the retries are recorded with the step commit."""
    attempts: list[int] = []

    @rt.step(retry=RetryPolicy(max_attempts=4, initial_interval=0.001, backoff=2.0))
    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError(f"try {len(attempts)}")
        return "ok"

    @rt.workflow()
    def calls_flaky() -> str:
        return flaky()

    rt.launch()
    assert calls_flaky.with_options(workflow_id="flaky-1")() == "ok"
    assert len(attempts) == 3
    (step,) = rt.store.list_steps("flaky-1")
    assert step.attempts == 3
    retried = [log for log in rt.store.list_logs("flaky-1") if log.event == "step_retried"]
    assert retried[0].details == {
        "step": "flaky",
        "attempts": 3,
        "errors": ["ConnectionError: try 1", "ConnectionError: try 2"],
    }


def test_non_retryable_and_exhausted_steps_record_their_error(rt: Runtime) -> None:
    """A non-retryable error fails at once; the failure is recorded and raised in the workflow."""
    attempts: list[int] = []

    @rt.step(retry=RetryPolicy(max_attempts=5, initial_interval=0, non_retryable=(KeyError,)))
    def lookup() -> None:
        attempts.append(1)
        raise KeyError("sku-9")

    @rt.workflow()
    def recovers() -> str:
        try:
            lookup()
        except KeyError as exc:
            return f"handled {exc}"
        return "unreachable"

    rt.launch()
    assert recovers.with_options(workflow_id="nr-1")() == "handled 'sku-9'"
    assert len(attempts) == 1
    (step,) = rt.store.list_steps("nr-1")
    assert step.error is not None
    assert step.error["type"] == "builtins:KeyError"
    assert [log.event for log in rt.store.list_logs("nr-1")] == [
        "execution_started",
        "step_failed",
        "execution_succeeded",
    ]


def test_child_workflow_runs_durably_and_is_recorded_in_the_parent(rt: Runtime) -> None:
    """A workflow called from a workflow is a child execution with a deterministic id."""

    @rt.workflow()
    def child(n: int) -> int:
        return n * 2

    @rt.workflow()
    def parent() -> int:
        return child(20) + child(1)

    rt.launch()
    assert parent.with_options(workflow_id="p")() == 42
    kid = rt.store.get_execution("p/0")
    assert kid is not None
    assert (kid.parent_id, kid.status, kid.output) == ("p", "SUCCEEDED", "40")
    assert [(s.seq, s.kind, s.name, s.output) for s in rt.store.list_steps("p")] == [
        (0, "workflow", "child", "40"),
        (1, "workflow", "child", "2"),
    ]


def test_transaction_step_receives_a_connection_and_commits_with_the_step(rt: Runtime) -> None:
    """The injected connection is a psycopg Connection in a transaction stepstone commits."""
    rt.launch()
    with rt.store.connection() as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    kinds: list[Any] = []

    @rt.transaction()
    def write(conn: psycopg.Connection[Any], note_id: int, body: str) -> int:
        kinds.append((type(conn), conn.info.transaction_status))
        conn.execute("INSERT INTO notes VALUES (%s, %s)", [note_id, body])
        return note_id

    @rt.workflow()
    def noting() -> int:
        return write(1, "hello")

    assert noting() == 1
    assert kinds == [(psycopg.Connection, psycopg.pq.TransactionStatus.INTRANS)]
    with rt.store.connection() as conn:
        assert conn.execute("SELECT body FROM notes").fetchall() == [("hello",)]
