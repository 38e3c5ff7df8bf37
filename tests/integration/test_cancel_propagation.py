"""Cancelling an execution cancels its running and enqueued descendants, each with an audit
entry of its own, and notifies executors of every execution it cancelled."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from stepstone import Runtime, Store, UsageError, WorkflowCancelled
from stepstone.persistence import StartRequest

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def store(db: str) -> Iterator[Store]:
    with Store(db) as s:
        yield s


def _start(store: Store, workflow_id: str, parent: str | None = None) -> None:
    inputs = store.encode({"args": [], "kwargs": {}}, "inputs")
    request = StartRequest(workflow_id, "flow", "1", inputs, "exec-a", parent_id=parent)
    assert store.start_execution(request).created


def _family(store: Store) -> None:
    """p ─┬─ p/0 (running) ─┬─ p/0/0 (running)
          │                 └─ p/0/1 (enqueued)
          └─ p/1 (succeeded) ── p/1/0 (running)
    and an unrelated running execution, other."""
    _start(store, "p")
    _start(store, "p/0", "p")
    _start(store, "p/0/0", "p/0")
    _start(store, "p/1", "p")
    _start(store, "p/1/0", "p/1")
    _start(store, "other")
    store.finish_execution("p/1", "exec-a", 1, status="SUCCEEDED", output="1", error=None, seq=0)
    with store.connection() as conn:
        conn.execute(
            "INSERT INTO stepstone.executions "
            "(id, workflow_name, workflow_version, status, inputs, parent_id) "
            "VALUES ('p/0/1', 'flow', '1', 'ENQUEUED', '{}', 'p/0')"
        )


def _statuses(store: Store) -> dict[str, str]:
    with store.connection() as conn:
        rows = conn.execute("SELECT id, status FROM stepstone.executions ORDER BY id").fetchall()
    return {str(i): str(s) for i, s in rows}


def _cancellations(store: Store, workflow_id: str) -> list[tuple[str | None, dict[str, Any]]]:
    return [
        (log.actor, log.details)
        for log in store.list_logs(workflow_id)
        if log.event == "execution_cancelled"
    ]


def test_cancelling_a_parent_cancels_its_running_descendants(store: Store) -> None:
    """The parent, its running child, and that child's running and enqueued children all
    end CANCELLED, each with its own audit entry naming the ancestor cancelled; a finished
    child is left alone (its running child is still cancelled), and so is an unrelated
    execution."""
    _family(store)
    assert store.cancel_execution("p", "operator") == "RUNNING"
    assert _statuses(store) == {
        "other": "RUNNING",
        "p": "CANCELLED",
        "p/0": "CANCELLED",
        "p/0/0": "CANCELLED",
        "p/0/1": "CANCELLED",
        "p/1": "SUCCEEDED",
        "p/1/0": "CANCELLED",
    }
    assert _cancellations(store, "p") == [("operator", {"previous_status": "RUNNING"})]
    for workflow_id, parent, previous in [
        ("p/0", "p", "RUNNING"),
        ("p/0/0", "p/0", "RUNNING"),
        ("p/0/1", "p/0", "ENQUEUED"),
        ("p/1/0", "p/1", "RUNNING"),
    ]:
        assert _cancellations(store, workflow_id) == [
            (
                "operator",
                {
                    "previous_status": previous,
                    "reason": "parent_cancelled",
                    "ancestor": "p",
                    "parent": parent,
                },
            )
        ]
    assert _cancellations(store, "p/1") == []
    assert _cancellations(store, "other") == []
    for workflow_id in ("p", "p/0/0"):
        row = store.get_execution(workflow_id)
        assert row is not None
        assert row.finished_at is not None


def test_cancelling_a_child_leaves_its_parent_running(store: Store) -> None:
    """Cancellation goes down the tree, never up: the child and its children end CANCELLED,
    the parent runs on."""
    _family(store)
    assert store.cancel_execution("p/0", "operator") == "RUNNING"
    statuses = _statuses(store)
    assert (statuses["p"], statuses["p/0"], statuses["p/0/0"], statuses["p/0/1"]) == (
        "RUNNING",
        "CANCELLED",
        "CANCELLED",
        "CANCELLED",
    )
    assert statuses["p/1/0"] == "RUNNING"


def test_cancelling_an_ended_parent_changes_nothing(store: Store) -> None:
    """A parent that already ended is refused, and its running children are left as they
    are."""
    _family(store)
    with pytest.raises(UsageError, match="already ended"):
        store.cancel_execution("p/1", "operator")
    assert _statuses(store)["p/1/0"] == "RUNNING"
    assert _cancellations(store, "p/1/0") == []


def test_each_cancelled_execution_is_notified_at_commit(store: Store, db: str) -> None:
    """A listener on the channel 'stepstone' hears 'cancelled:<id>' for every execution the
    cancel ended, once its transaction commits, and nothing before."""
    _family(store)
    with (
        psycopg.connect(db, autocommit=True) as listener,
        psycopg.connect(db) as canceller,
    ):
        listener.execute("LISTEN stepstone")
        canceller.execute("SELECT stepstone.cancel_execution_v1('p', 'operator')")
        assert [n.payload for n in listener.notifies(timeout=0.3)] == []
        canceller.commit()
        heard = [n.payload for n in listener.notifies(timeout=5, stop_after=5)]
    assert sorted(heard) == [
        "cancelled:p",
        "cancelled:p/0",
        "cancelled:p/0/0",
        "cancelled:p/0/1",
        "cancelled:p/1/0",
    ]


def test_runtime_cancel_stops_a_running_child_with_its_parent(rt: Runtime) -> None:
    """rt.cancel() on a parent that waits for its child ends both CANCELLED; the child's
    step in flight commits nothing."""
    inside = threading.Event()
    cancelled = threading.Event()

    @rt.step()
    def slow() -> str:
        inside.set()
        cancelled.wait(10)
        return "done"

    @rt.workflow()
    def child() -> str:
        return slow()

    @rt.workflow()
    def parent() -> str:
        return child()

    rt.launch()
    handle = rt.start(parent.with_options(workflow_id="tree"))
    assert inside.wait(10)
    (child_id,) = [
        row.id
        for row in rt.store.list_executions().items
        if row.id != "tree" and row.status == "RUNNING"
    ]
    rt.cancel("tree")
    cancelled.set()
    with pytest.raises(WorkflowCancelled):
        handle.result(timeout=10)
    assert rt.handle(child_id).status() == "CANCELLED"
    assert rt.store.list_steps(child_id) == []
    (entry,) = _cancellations(rt.store, child_id)
    assert entry == (
        rt.executor_id,
        {
            "previous_status": "RUNNING",
            "reason": "parent_cancelled",
            "ancestor": "tree",
            "parent": "tree",
        },
    )
