"""An existing workflow id never runs twice."""

from __future__ import annotations

import threading

import pytest

from stepstone import Runtime, WorkflowFailed, WorkflowIdConflict


def test_calling_again_with_the_same_id_returns_the_recorded_result(rt: Runtime) -> None:
    """A second call with a finished id returns its result without running anything."""
    runs: list[int] = []

    @rt.workflow()
    def once(n: int) -> int:
        runs.append(n)
        return n * 2

    rt.launch()
    pinned = once.with_options(workflow_id="once-1")
    assert pinned(21) == 42
    assert pinned(99) == 42
    assert rt.start(pinned, 7).result(timeout=5) == 42
    assert runs == [21]


def test_failed_execution_is_not_run_again_by_its_id(rt: Runtime) -> None:
    """The same id after a failure raises the recorded failure again."""
    runs: list[int] = []

    @rt.workflow()
    def fails() -> None:
        runs.append(1)
        raise RuntimeError("no stock")

    rt.launch()
    for _ in range(3):
        with pytest.raises(WorkflowFailed, match="no stock"):
            fails.with_options(workflow_id="fails-1")()
    assert runs == [1]


def test_same_id_for_another_workflow_is_a_conflict(rt: Runtime) -> None:
    """An id belongs to one workflow: reusing it for another raises and writes nothing."""

    @rt.workflow()
    def first() -> int:
        return 1

    @rt.workflow()
    def second() -> int:
        return 2

    rt.launch()
    assert first.with_options(workflow_id="shared")() == 1
    with pytest.raises(
        WorkflowIdConflict,
        match="'shared' already belongs to an execution of 'first', not 'second'",
    ):
        second.with_options(workflow_id="shared")()
    with pytest.raises(WorkflowIdConflict):
        rt.start(second.with_options(workflow_id="shared"))
    assert [log.event for log in rt.store.list_logs("shared")] == [
        "execution_started",
        "execution_succeeded",
    ]


def test_concurrent_starts_of_one_id_run_it_once(rt: Runtime) -> None:
    """Threads racing to start the same id share one execution and one result."""
    runs: list[int] = []
    gate = threading.Event()

    @rt.step()
    def slow() -> int:
        gate.wait(10)
        return 5

    @rt.workflow()
    def racy() -> int:
        runs.append(1)
        return slow()

    rt.launch()
    pinned = racy.with_options(workflow_id="racy-1")
    results: list[int] = []

    def caller() -> None:
        results.append(pinned())

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    handles = [rt.start(pinned) for _ in range(3)]
    gate.set()
    for t in threads:
        t.join(10)
    assert results == [5, 5, 5, 5]
    assert [h.result(timeout=10) for h in handles] == [5, 5, 5]
    assert runs == [1]


def test_start_of_an_id_owned_by_another_live_executor_waits_for_its_outcome(
    rt: Runtime, db: str
) -> None:
    """An id that another executor is running is not run here; its handle waits for it."""
    other = Runtime(db, executor_id="other-executor")
    gate = threading.Event()

    @other.step(name="hold")
    def hold_other() -> None:
        gate.wait(10)

    @other.workflow(name="shared_flow")
    def flow_other() -> str:
        hold_other()
        return "from other"

    @rt.workflow(name="shared_flow")
    def flow_here() -> str:
        return "from here"

    other.launch()
    rt.launch()
    try:
        running = other.start(flow_other.with_options(workflow_id="owned-elsewhere"))
        here = rt.start(flow_here.with_options(workflow_id="owned-elsewhere"))
        assert here.status() == "RUNNING"
        gate.set()
        assert here.result(timeout=10) == "from other"
        assert running.result(timeout=10) == "from other"
    finally:
        other.shutdown()
