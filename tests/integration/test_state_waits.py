"""Waiting for another execution's state: `rt.wait_state` from outside polls until the key
is committed; `stepstone.wait_state` in a workflow is a durable wait, made due by the
target's commit of the key (or its end), recorded, and replayed the same."""

from __future__ import annotations

import datetime as dt
import threading
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

import stepstone
from stepstone import (
    InvalidWorkflowId,
    Runtime,
    StateNotSet,
    StateTimeout,
    StepOutsideWorkflow,
    UsageError,
    WorkflowNotFound,
)
from tests.support.runtime import wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def waiter(db: str) -> Iterator[Runtime]:
    """Two workers and a long sweep interval: a wait is woken by a notification here, not
    by a periodic sweep."""
    runtime = Runtime(
        db,
        executor_id="waiter",
        workers=2,
        sweep_interval=30,
        lease_seconds=60,
        heartbeat_interval=5,
    )
    yield runtime
    runtime.shutdown()


def _stager(rt: Runtime) -> Any:
    """A workflow that sets state key "stage" once told to ("go"), then waits for "done"."""

    @rt.workflow()
    def stager(stage: Any) -> str:
        stepstone.recv("go")
        stepstone.current().state["stage"] = stage
        stepstone.recv("done")
        return "staged"

    return stager


def _waiting_row(db: str, workflow_id: str) -> tuple[Any, ...]:
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT status, owner, waits_for, waiting->>'kind', waiting->>'key', recoveries "
            "FROM stepstone.executions WHERE id = %s",
            [workflow_id],
        ).fetchone()
    assert row is not None
    return tuple(row)


# -- from outside ---------------------------------------------------------------------------


def test_wait_state_from_outside_returns_once_the_key_is_committed(rt: Runtime) -> None:
    """rt.wait_state blocks while the key is not committed and returns its value once the
    target's commit makes it visible; a key committed already returns at once."""
    stager = _stager(rt)
    rt.launch()
    handle = rt.start(stager.with_options(workflow_id="order-1"), {"k": "packed"})
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.append(rt.wait_state("order-1", "stage", 30)))
    reader.start()
    wait_for(lambda: handle.status() == "WAITING")
    assert got == []
    rt.send("order-1", None, topic="go")
    reader.join(30)
    assert got == [{"k": "packed"}]
    assert rt.wait_state("order-1", "stage", timeout=0) == {"k": "packed"}
    rt.send("order-1", None, topic="done")
    assert handle.result(timeout=10) == "staged"
    assert rt.wait_state("order-1", "stage") == {"k": "packed"}  # kept after the end


def test_wait_state_from_outside_times_out_or_learns_the_key_never_comes(rt: Runtime) -> None:
    """Outside a workflow: StateTimeout when the key does not come in time, StateNotSet
    once the target ended without it, WorkflowNotFound for an unknown id."""
    stager = _stager(rt)

    @rt.workflow()
    def quiet() -> str:
        return "no state"

    rt.launch()
    rt.start(stager.with_options(workflow_id="order-2"), "packed")
    with pytest.raises(StateTimeout, match=r"'order-2' did not set state key 'stage' within 0.2"):
        rt.wait_state("order-2", "stage", timeout=dt.timedelta(seconds=0.2))
    assert quiet.with_options(workflow_id="quiet-1")() == "no state"
    with pytest.raises(StateNotSet, match=r"'quiet-1' ended \(SUCCEEDED\) without .* 'stage'"):
        rt.wait_state("quiet-1", "stage", timeout=30)
    with pytest.raises(WorkflowNotFound, match="'nobody'"):
        rt.wait_state("nobody", "stage", timeout=30)


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (("", "k"), InvalidWorkflowId, "workflow_id"),
        ((7, "k"), InvalidWorkflowId, "workflow_id"),
        (("a", 3), UsageError, "state keys must be strings"),
        (("a", "k\x00"), UsageError, "NUL"),
        (("a", "k", -1), UsageError, "duration from 0"),
        (("a", "k", float("nan")), UsageError, "finite number"),
    ],
)
def test_bad_state_waits_are_refused(
    rt: Runtime, args: tuple[Any, ...], error: type[Exception], message: str
) -> None:
    """A bad id, key or timeout raises a clear error naming it, from outside and inside a
    workflow alike, and nothing is recorded."""
    seen: list[BaseException] = []

    @rt.workflow()
    def bad() -> None:
        try:
            stepstone.wait_state(*args)
        except UsageError as exc:
            seen.append(exc)

    rt.launch()
    with pytest.raises(error, match=message):
        rt.wait_state(*args)
    bad.with_options(workflow_id="bad-1")()
    assert len(seen) == 1
    assert isinstance(seen[0], error)
    assert message in str(seen[0])
    assert rt.store.list_steps("bad-1") == []


# -- inside a workflow ----------------------------------------------------------------------


def test_a_workflow_waits_for_state_durably_and_is_woken_by_the_commit(
    waiter: Runtime, db: str
) -> None:
    """stepstone.wait_state in a workflow records a WAITING wait on the target (no owner,
    no thread); the target's commit of the key wakes it through a notification (the sweep
    interval is 30 s); the value is the wait's recorded outcome; a wake is no recovery."""
    stager = _stager(waiter)

    @waiter.workflow()
    def watcher(target: str) -> Any:
        return ["saw", stepstone.wait_state(target, "stage", timeout=600)]

    waiter.launch()
    order = waiter.start(stager.with_options(workflow_id="order-3"), "shipped")
    watch = waiter.start(watcher.with_options(workflow_id="watch-3"), "order-3")
    wait_for(lambda: watch.status() == "WAITING" and order.status() == "WAITING")
    assert _waiting_row(db, "watch-3") == ("WAITING", None, "order-3", "wait_state", "stage", 0)
    waiter.send("order-3", None, topic="go")
    assert watch.result(timeout=10) == ["saw", "shipped"]
    assert _waiting_row(db, "watch-3")[:3] == ("SUCCEEDED", "waiter", None)
    assert _waiting_row(db, "watch-3")[5] == 0
    (step,) = waiter.store.list_steps("watch-3")
    assert (step.seq, step.name, step.kind, step.output) == (
        0,
        "wait_state",
        "wait_state",
        '"shipped"',
    )
    waiter.send("order-3", None, topic="done")
    assert order.result(timeout=10) == "staged"


def test_a_state_wait_already_satisfied_does_not_suspend(rt: Runtime) -> None:
    """A key committed before the wait is reached completes the wait in its one commit;
    rt.wait_state in a workflow body is the same durable wait."""
    stager = _stager(rt)

    @rt.workflow()
    def reader(target: str) -> list[Any]:
        return [stepstone.wait_state(target, "stage"), rt.wait_state(target, "stage", 5)]

    rt.launch()
    rt.start(stager.with_options(workflow_id="order-4"), "done")
    rt.send("order-4", None, topic="go")
    assert rt.wait_state("order-4", "stage", timeout=10) == "done"
    assert reader.with_options(workflow_id="reader-4")("order-4") == ["done", "done"]
    events = [log.event for log in rt.store.list_logs("reader-4")]
    assert "execution_waiting" not in events
    assert [s.kind for s in rt.store.list_steps("reader-4")] == ["wait_state", "wait_state"]


def test_state_wait_errors_are_recorded_and_replay_the_same(rt: Runtime) -> None:
    """In a workflow, a timeout (StateTimeout), a target that ended without the key
    (StateNotSet, woken by that end) and an unknown target (WorkflowNotFound) are the
    wait's recorded outcomes; a replay raises the same errors at the same places."""
    stager = _stager(rt)
    release = threading.Event()

    @rt.workflow()
    def ender() -> str:
        release.wait(30)
        return "ended"

    @rt.workflow()
    def prober() -> list[str]:
        seen = []
        for target, timeout in [("order-5", 0.3), ("ender-5", None), ("ghost-5", None)]:
            try:
                stepstone.wait_state(target, "stage", timeout=timeout)
            except (StateTimeout, StateNotSet, WorkflowNotFound) as exc:
                seen.append(f"{type(exc).__name__}: {exc}")
        return seen

    rt.launch()
    rt.start(stager.with_options(workflow_id="order-5"), "never")
    rt.start(ender.with_options(workflow_id="ender-5"))
    probe = rt.start(prober.with_options(workflow_id="probe-5"))
    wait_for(lambda: probe.status() == "WAITING" and len(rt.store.list_steps("probe-5")) == 1)
    release.set()
    expected = [
        'StateTimeout: workflow "order-5" did not set state key "stage" within 0.3 s',
        'StateNotSet: workflow "ender-5" ended (SUCCEEDED) without setting state key "stage"',
        'WorkflowNotFound: no execution has workflow id "ghost-5"',
    ]
    assert probe.result(timeout=30) == expected
    steps = rt.store.list_steps("probe-5")
    assert [(s.kind, s.output, (s.error or {}).get("type")) for s in steps] == [
        ("wait_state", None, "stepstone.errors:StateTimeout"),
        ("wait_state", None, "stepstone.errors:StateNotSet"),
        ("wait_state", None, "stepstone.errors:WorkflowNotFound"),
    ]
    replay = rt.fork("probe-5", len(steps), new_workflow_id="probe-5b")
    assert replay.result(timeout=10) == expected


def test_state_waits_outside_a_workflow_or_on_itself_are_refused(rt: Runtime) -> None:
    """stepstone.wait_state outside a workflow raises StepOutsideWorkflow naming
    rt.wait_state; a workflow waiting for its own state key gets UsageError."""

    @rt.workflow()
    def narcissus() -> str:
        try:
            stepstone.wait_state(stepstone.current().workflow_id, "stage")
        except UsageError as exc:
            return str(exc)
        return "waited"

    rt.launch()
    with pytest.raises(StepOutsideWorkflow, match=r"rt\.wait_state\(\)"):
        stepstone.wait_state("a", "stage")
    assert "its own state key 'stage'" in narcissus.with_options(workflow_id="self-1")()


def test_many_watchers_racing_the_commit_all_see_the_key(waiter: Runtime) -> None:
    """Watchers that start while the target commits its key all end with its value: the
    check of the key and the suspend are serialized with the target's state writes, so no
    wake is lost between them (the sweep interval is 30 s: a lost wake would time out)."""
    stager = _stager(waiter)

    @waiter.workflow()
    def watcher(target: str) -> Any:
        return stepstone.wait_state(target, "stage", timeout=600)

    waiter.launch()
    waiter.start(stager.with_options(workflow_id="order-6"), "raced")
    handles = [
        waiter.start(watcher.with_options(workflow_id=f"w6-{i}"), "order-6") for i in range(10)
    ]
    waiter.send("order-6", None, topic="go")
    handles += [
        waiter.start(watcher.with_options(workflow_id=f"w6-{i}"), "order-6") for i in range(10, 20)
    ]
    assert [h.result(timeout=20) for h in handles] == ["raced"] * 20
