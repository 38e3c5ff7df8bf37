"""continue_as_new: a workflow ends its run and starts afresh under the same id, with new
arguments and an empty history; its mailbox, deadline and callers stay."""

from __future__ import annotations

import contextvars
import json
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

import stepstone
from stepstone import (
    NonDeterminismError,
    Runtime,
    SerializationError,
    StepOutsideWorkflow,
    UsageError,
    WorkflowFailed,
    WorkflowTimedOut,
)
from tests.support.runtime import FAST, Crash, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable


def _status_if_any(db: str, workflow_id: str) -> str | None:
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT status FROM stepstone.executions WHERE id = %s", [workflow_id]
        ).fetchone()
        return None if row is None else str(row[0])


def _execution(db: str, workflow_id: str) -> dict[str, Any]:
    with psycopg.connect(db) as conn:
        cursor = conn.execute(
            "SELECT status, owner, run, epoch, recoveries, inputs, parent_id, deadline_at "
            "FROM stepstone.executions WHERE id = %s",
            [workflow_id],
        )
        row = cursor.fetchone()
        assert row is not None
        return dict(zip([c.name for c in cursor.description or ()], row, strict=True))


def _events(rt: Runtime, workflow_id: str) -> list[str]:
    return [log.event for log in rt.store.list_logs(workflow_id)]


def _counter(rt: Runtime, ran: list[int], crash_at: set[int] | None = None) -> Any:
    """A workflow that counts from n to `limit` two steps per run, continuing as new after
    each run; its step raises Crash (once) at the numbers in `crash_at`."""

    @rt.step()
    def bump(n: int) -> int:
        ran.append(n)
        if crash_at is not None and n in crash_at:
            crash_at.discard(n)
            raise Crash
        return n + 1

    @rt.workflow()
    def counter(n: int, limit: int) -> int:
        stepstone.current().state["from"] = n
        n = bump(bump(n))
        if n < limit:
            stepstone.continue_as_new(n, limit=limit)
        return n

    return counter


# -- runs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["called", "started"])
def test_a_counter_that_continues_as_new_ends_with_the_last_runs_history(
    rt: Runtime, db: str, how: str
) -> None:
    """Counting 0..6 two steps per run takes three runs: the caller (a direct call, or a
    handle's result) gets the last run's result, each step ran once, and the execution
    keeps only the last run's steps, state and checkpoints, as run 3 with an audit entry per
    continue-as-new."""
    ran: list[int] = []
    counter = _counter(rt, ran)
    rt.launch()
    flow = counter.with_options(workflow_id="count-1")
    if how == "called":
        assert flow(0, 6) == 6
    else:
        assert rt.start(flow, 0, 6).result(timeout=30) == 6
    assert ran == [0, 1, 2, 3, 4, 5]
    steps = rt.store.list_steps("count-1")
    assert [(s.seq, s.name, s.output) for s in steps] == [(0, "bump", "5"), (1, "bump", "6")]
    assert rt.get_state("count-1") == {"from": 4}
    assert [c.seq for c in rt.store.list_checkpoints("count-1")] == [1]
    row = _execution(db, "count-1")
    assert (row["status"], row["run"], row["recoveries"]) == ("SUCCEEDED", 3, 0)
    assert rt.store.decode(row["inputs"]) == {"args": [4], "kwargs": {"limit": 6}, "run": 3}
    assert _events(rt, "count-1") == [
        "execution_started",
        "execution_continued_as_new",
        "execution_continued_as_new",
        "execution_succeeded",
    ]
    continued = [log for log in rt.store.list_logs("count-1") if log.details.get("run")]
    assert [(log.seq, log.details["run"], log.details["steps_removed"]) for log in continued] == [
        (2, 2, 2),
        (2, 3, 2),
    ]
    assert rt.store.get_execution("count-1").run == 3  # type: ignore[union-attr]


def test_executions_show_tells_the_run(rt: Runtime, db: str) -> None:
    """`stepstone executions show` names the run of an execution that continued as new (and
    says nothing of runs for one that never did); --json has it as `run`."""
    counter = _counter(rt, [])
    rt.launch()
    counter.with_options(workflow_id="count-3")(0, 6)
    counter.with_options(workflow_id="count-4")(0, 2)

    def show(*args: str) -> str:
        command = [sys.executable, "-m", "stepstone", "--database-url", db, "executions", "show"]
        done = subprocess.run([*command, *args], capture_output=True, text=True, check=True)
        return done.stdout

    assert "  run:        3 (continued as new 2 times)\n" in show("count-3")
    assert "run:" not in show("count-4")
    assert json.loads(show("count-3", "--json"))["execution"]["run"] == 3


def test_a_crash_in_the_last_run_replays_that_run_only(db: str) -> None:
    """A process that dies in run 3 leaves the execution RUNNING as run 3 with that run's
    first step recorded; the restarted executor replays run 3 from its record (runs 1 and 2
    are not run again, the recorded step is not re-run) and finishes with the right result.
    The recovery counter starts afresh with each run."""
    crash_at = {1, 5}
    first: list[int] = []
    rt = Runtime(db, executor_id="counting", **FAST)
    counter = _counter(rt, first, crash_at)
    rt.launch()
    with pytest.raises(Crash):
        counter.with_options(workflow_id="count-2")(0, 6)
    rt.shutdown()
    assert first == [0, 1]

    second: list[int] = []
    rt = Runtime(db, executor_id="counting", **FAST)
    _counter(rt, second, crash_at)
    rt.launch()
    wait_for(lambda: not crash_at)  # resumed run 1, continued, and crashed in run 3
    rt.shutdown()
    assert second == [1, 2, 3, 4, 5]
    row = _execution(db, "count-2")
    assert (row["status"], row["run"]) == ("RUNNING", 3)
    with psycopg.connect(db) as conn:
        recorded = conn.execute(
            "SELECT seq, output FROM stepstone.steps WHERE execution_id = 'count-2'"
        ).fetchall()
    assert recorded == [(0, "5")]

    third: list[int] = []
    rt = Runtime(db, executor_id="counting", **FAST)
    _counter(rt, third)
    rt.launch()
    try:
        assert rt.handle("count-2").result(timeout=30) == 6
    finally:
        rt.shutdown()
    assert third == [5]
    row = _execution(db, "count-2")
    assert (row["status"], row["run"], row["recoveries"]) == ("SUCCEEDED", 3, 1)


def test_deadline_and_parent_are_kept_across_runs(rt: Runtime, db: str) -> None:
    """A workflow with a timeout that keeps continuing as new is ended by its one deadline
    (WorkflowTimedOut), set when it started; a child that continues as new keeps its
    parent."""

    @rt.workflow()
    def forever(n: int) -> None:
        stepstone.sleep(0.1)
        stepstone.continue_as_new(n + 1)

    @rt.workflow()
    def kid(n: int) -> int:
        if n < 2:
            stepstone.continue_as_new(n + 1)
        return n

    @rt.workflow()
    def parent() -> int:
        return kid.with_options(workflow_id="kid-1")(0)

    rt.launch()
    handle = rt.start(forever.with_options(workflow_id="forever-1", timeout=1.5), 0)
    deadline = _execution(db, "forever-1")["deadline_at"]
    assert deadline is not None
    with pytest.raises(WorkflowTimedOut):
        handle.result(timeout=30)
    row = _execution(db, "forever-1")
    assert row["deadline_at"] == deadline
    assert row["status"] == "CANCELLED"
    assert row["run"] > 1
    assert parent.with_options(workflow_id="parent-1")() == 2
    kid_row = _execution(db, "kid-1")
    assert (kid_row["parent_id"], kid_row["run"]) == ("parent-1", 3)


# -- children and messages ------------------------------------------------------------------


def test_a_parent_gets_the_final_result_of_a_child_that_continues_as_new(
    rt: Runtime, db: str
) -> None:
    """A parent waiting durably for a child running elsewhere is not woken by the child's
    continue-as-new, only by its end, and gets the last run's result; a child called from a
    later run of its parent is a new execution (not the earlier run's child, whose
    position it shares)."""

    @rt.workflow()
    def relay(hops: list[str]) -> list[str]:
        hops = [*hops, stepstone.recv("hop", timeout=30)]
        if len(hops) < 2:
            stepstone.continue_as_new(hops)
        return hops

    @rt.workflow()
    def waiter() -> list[str]:
        return rt.start(relay.with_options(workflow_id="relay-1"), []).result()

    @rt.workflow()
    def echo(word: str) -> str:
        return word

    @rt.workflow()
    def looper(words: list[str], heard: list[str]) -> list[str]:
        heard = [*heard, echo(words[0])]
        if len(words) > 1:
            stepstone.continue_as_new(words[1:], heard)
        return heard

    rt.launch()
    handle = rt.start(waiter.with_options(workflow_id="waiter-1"))
    wait_for(lambda: _status_if_any(db, "relay-1") == "WAITING")  # the parent creates it
    wait_for(lambda: handle.status() == "WAITING")
    rt.send("relay-1", "a", topic="hop")
    wait_for(lambda: _execution(db, "relay-1")["run"] == 2)
    wait_for(lambda: rt.handle("relay-1").status() == "WAITING")
    assert handle.status() == "WAITING"
    assert "execution_woken" not in _events(rt, "waiter-1")
    rt.send("relay-1", "b", topic="hop")
    assert handle.result(timeout=30) == ["a", "b"]

    assert looper.with_options(workflow_id="loop-1")(["x", "y", "z"], []) == ["x", "y", "z"]
    with psycopg.connect(db) as conn:
        children = conn.execute(
            "SELECT id, output FROM stepstone.executions WHERE parent_id = 'loop-1' ORDER BY id"
        ).fetchall()
    assert children == [("loop-1/0", '"x"'), ("loop-1/r2/0", '"y"'), ("loop-1/r3/0", '"z"')]


def test_unread_messages_go_to_the_next_run_and_read_ones_stay_read(rt: Runtime, db: str) -> None:
    """Messages sent before a continue-as-new and not yet received are received by the next
    runs, in send order; one received by an earlier run is never delivered again, keeps
    deduplicating its idempotency key, and is marked with the run that received it (the
    current run's receives are listed as its own)."""

    @rt.workflow()
    def inbox(got: list[str]) -> list[str]:
        if not got:
            stepstone.recv("go")
        got = [*got, stepstone.recv("m", timeout=30)]
        if len(got) < 3:
            stepstone.continue_as_new(got)
        return got

    rt.launch()
    handle = rt.start(inbox.with_options(workflow_id="inbox-1"), [])
    wait_for(lambda: handle.status() == "WAITING")
    for word in ("a", "b", "c", "d"):
        rt.send("inbox-1", word, topic="m", idempotency_key=f"key-{word}")
    rt.send("inbox-1", None, topic="go")
    assert handle.result(timeout=30) == ["a", "b", "c"]
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT payload, received_seq, received_run FROM stepstone.messages "
            "WHERE execution_id = 'inbox-1' AND topic = 'm' ORDER BY id"
        ).fetchall()
    assert rows == [('"a"', 1, 1), ('"b"', 0, 2), ('"c"', 0, None), ('"d"', None, None)]
    (received,) = rt.store.received_messages("inbox-1")
    assert (received.seq, received.received_at) == (
        0,
        rt.store.list_steps("inbox-1")[0].finished_at,
    )
    (unread,) = rt.store.unread_messages("inbox-1")
    assert (unread.topic, unread.count) == ("m", 1)


def test_a_message_received_by_an_earlier_run_still_deduplicates(rt: Runtime, db: str) -> None:
    """Sending again with the idempotency key of a message an earlier run received stores
    nothing: the next run does not receive it a second time."""

    @rt.workflow()
    def twice(got: list[str]) -> list[str]:
        got = [*got, stepstone.recv("m", timeout=30)]
        if len(got) < 2:
            stepstone.continue_as_new(got)
        return got

    rt.launch()
    handle = rt.start(twice.with_options(workflow_id="twice-1"), [])
    rt.send("twice-1", "first", topic="m", idempotency_key="k1")
    wait_for(lambda: _execution(db, "twice-1")["run"] == 2)
    rt.send("twice-1", "first", topic="m", idempotency_key="k1")
    rt.send("twice-1", "second", topic="m", idempotency_key="k2")
    assert handle.result(timeout=30) == ["first", "second"]


# -- misuse ---------------------------------------------------------------------------------


_SNAPSHOT = (
    "SELECT inputs, epoch, run, status, owner, recoveries FROM stepstone.executions WHERE id = %s",
    "SELECT seq, name, output FROM stepstone.steps WHERE execution_id = %s",
    "SELECT key, value FROM stepstone.states WHERE execution_id = %s",
    "SELECT id, event FROM stepstone.logs WHERE execution_id = %s",
)


def _snapshot(db: str, workflow_id: str) -> tuple[Any, ...]:
    with psycopg.connect(db) as conn:
        return tuple(conn.execute(query, [workflow_id]).fetchall() for query in _SNAPSHOT)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: stepstone.continue_as_new(object()), SerializationError, "cannot be serialized"),
        (lambda: stepstone.continue_as_new(1, 2), UsageError, "does not take"),
        (lambda: stepstone.continue_as_new(nope=1), UsageError, "does not take"),
        (lambda: stepstone.continue_as_new("x" * 2_000_000), SerializationError, "limit"),
    ],
)
def test_bad_arguments_are_refused_and_write_nothing(
    rt: Runtime, db: str, call: Callable[[], None], error: type[Exception], message: str
) -> None:
    """Arguments the workflow does not take, or that cannot be serialized, raise in the
    workflow before anything is written: the execution's row, steps, state and log are as
    they were, and the workflow goes on in the same run."""
    seen: list[str] = []

    @rt.step()
    def one() -> int:
        return 1

    @rt.workflow()
    def careful(n: int) -> str:
        one()
        stepstone.current().state["n"] = n
        before = _snapshot(db, "careful-1")
        try:
            call()
        except error as exc:
            seen.append(str(exc))
        assert _snapshot(db, "careful-1") == before
        return f"went on after {one()}"

    rt.launch()
    assert careful.with_options(workflow_id="careful-1")(5) == "went on after 1"
    assert message in seen[0]
    assert _execution(db, "careful-1")["run"] == 1
    assert "execution_continued_as_new" not in _events(rt, "careful-1")


def test_outside_a_workflow_or_inside_a_step_it_is_refused(rt: Runtime, db: str) -> None:
    """Outside a workflow, continue_as_new raises StepOutsideWorkflow saying where to call
    it; inside a step's body, UsageError (the step records nothing): nothing is written."""
    with pytest.raises(StepOutsideWorkflow, match="from the body of a function decorated"):
        stepstone.continue_as_new(1)

    @rt.step()
    def sneaky() -> None:
        stepstone.continue_as_new()

    @rt.workflow()
    def host() -> str:
        try:
            sneaky()
        except UsageError as exc:
            return str(exc)
        return "not refused"

    rt.launch()
    assert "inside the body of a step" in host.with_options(workflow_id="host-1")()
    assert rt.store.list_steps("host-1") == []
    assert _execution(db, "host-1")["run"] == 1


def test_from_another_thread_it_is_refused(rt: Runtime, db: str) -> None:
    """continue_as_new from another thread that carries the workflow's context raises
    UsageError (positions are taken in the workflow's own thread), and nothing is written."""
    errors: list[BaseException] = []

    @rt.workflow()
    def threaded() -> str:
        def other() -> None:
            try:
                stepstone.continue_as_new()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=contextvars.copy_context().run, args=(other,))
        thread.start()
        thread.join()
        return "stayed"

    rt.launch()
    assert threaded.with_options(workflow_id="threaded-1")() == "stayed"
    assert isinstance(errors[0], UsageError)
    assert "another thread" in str(errors[0])
    assert _execution(db, "threaded-1")["run"] == 1


def test_a_replay_that_reaches_continue_as_new_where_the_run_went_on_fails(db: str) -> None:
    """If the recorded run went past the point where the replayed code now continues as
    new, the execution fails with NonDeterminismError and is not continued."""
    rt = Runtime(db, executor_id="changing", **FAST)

    @rt.step()
    def a() -> str:
        return "a"

    @rt.step()
    def b() -> str:
        raise Crash

    @rt.workflow(name="changing")
    def old() -> str:
        return a() + b()

    rt.launch()
    with pytest.raises(Crash):
        old.with_options(workflow_id="changing-1")()
    rt.shutdown()

    rt = Runtime(db, executor_id="changing", **FAST)

    @rt.workflow(name="changing")
    def new() -> str:
        stepstone.continue_as_new()

    rt.launch()
    try:
        with pytest.raises(WorkflowFailed) as failed:
            rt.handle("changing-1").result(timeout=30)
    finally:
        rt.shutdown()
    assert isinstance(failed.value.__cause__, NonDeterminismError)
    assert "continue_as_new" in str(failed.value.__cause__)
    assert _execution(db, "changing-1")["run"] == 1
