"""The recovery counter counts interruptions only: claims of interrupted executions and
hand-backs, never an operator's resume or fork; a resume starts a fresh budget."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from stepstone import RecoveryLimitExceeded, Runtime, Store, WorkflowFailed
from stepstone.errors import OwnershipLost
from stepstone.persistence import StartRequest, StepCommit
from tests.support.runtime import FAST, Crash

if TYPE_CHECKING:
    from collections.abc import Iterator


def _define(rt: Runtime, crash: dict[str, bool], ran: list[str]) -> Any:
    @rt.step(name="ship")
    def ship(sku: str) -> str:
        ran.append("ship")
        if crash.get("now"):
            raise Crash
        return f"shipped {sku}"

    @rt.workflow(name="order")
    def order(sku: str) -> str:
        return ship(sku)

    return order


def _recoveries(db: str, workflow_id: str) -> tuple[Any, ...] | None:
    with psycopg.connect(db) as conn:
        return conn.execute(
            "SELECT status, recoveries FROM stepstone.executions WHERE id = %s", [workflow_id]
        ).fetchone()


def _interrupt(db: str, executor_id: str) -> None:
    """Leave 'order-1' RUNNING, owned by `executor_id`, its step interrupted."""
    rt = Runtime(db, executor_id=executor_id, **FAST)
    order = _define(rt, {"now": True}, [])
    rt.launch()
    with pytest.raises(Crash):
        order.with_options(workflow_id="order-1")("sku-1")
    rt.shutdown()


def test_execution_ended_by_the_recovery_limit_can_be_resumed(db: str) -> None:
    """An execution that ended FAILED with RecoveryLimitExceeded is resumed by an operator
    with a fresh budget: it runs and completes."""
    _interrupt(db, "worker-a")
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE stepstone.executions SET recoveries = 3 WHERE id = 'order-1'")
    ran: list[str] = []
    rt = Runtime(db, executor_id="worker-a", max_recoveries=3, **FAST)
    _define(rt, {}, ran)
    rt.launch()
    try:
        with pytest.raises(WorkflowFailed) as info:
            rt.handle("order-1").result(timeout=10)
        assert isinstance(info.value.__cause__, RecoveryLimitExceeded)
        assert ran == []
        assert rt.resume("order-1").result(timeout=10) == "shipped sku-1"
        assert ran == ["ship"]
        assert _recoveries(db, "order-1") == ("SUCCEEDED", 0)
    finally:
        rt.shutdown()


def test_an_ordinary_failure_can_be_resumed_again_and_again(db: str) -> None:
    """Resuming a failed execution is not a recovery: with max_recoveries=2 it can be
    resumed four times (each run failing on its own), and the fifth run succeeds."""
    failures = {"left": 6}
    rt = Runtime(db, executor_id="operator", max_recoveries=2, **FAST)

    @rt.step()
    def flaky() -> str:
        failures["left"] -= 1
        if failures["left"] > 0:
            raise RuntimeError(f"still down ({failures['left']} to go)")
        return "up"

    @rt.workflow()
    def fixing() -> str:
        return flaky()

    rt.launch()
    try:
        with pytest.raises(WorkflowFailed, match="still down"):
            fixing.with_options(workflow_id="fix-1")()
        for _ in range(4):
            with pytest.raises(WorkflowFailed, match="still down") as info:
                rt.resume("fix-1").result(timeout=10)
            assert isinstance(info.value.__cause__, RuntimeError)
            assert _recoveries(db, "fix-1") == ("FAILED", 0)
        assert rt.resume("fix-1").result(timeout=10) == "up"
        assert _recoveries(db, "fix-1") == ("SUCCEEDED", 0)
    finally:
        rt.shutdown()


def test_a_claim_after_an_expired_lease_counts_as_a_recovery(db: str) -> None:
    """Taking over an execution whose owner's lease expired is a recovery: the counter goes
    up by one."""
    _interrupt(db, "worker-a")
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "UPDATE stepstone.executors SET heartbeat_at = now() - interval '1 hour' "
            "WHERE id = 'worker-a'"
        )
    assert _recoveries(db, "order-1") == ("RUNNING", 0)
    rt = Runtime(db, executor_id="worker-b", **FAST)
    _define(rt, {}, [])
    rt.launch()
    try:
        assert rt.handle("order-1").result(timeout=15) == "shipped sku-1"
        assert _recoveries(db, "order-1") == ("SUCCEEDED", 1)
    finally:
        rt.shutdown()


@pytest.fixture
def store(db: str) -> Iterator[Store]:
    with Store(db) as s:
        yield s


def _start(store: Store, workflow_id: str = "wf-1", owner: str = "exec-a") -> None:
    inputs = store.encode({"args": [], "kwargs": {}}, "inputs")
    assert store.start_execution(StartRequest(workflow_id, "flow", "1", inputs, owner)).created


def _row(store: Store, workflow_id: str = "wf-1") -> tuple[Any, ...] | None:
    with store.connection() as conn:
        return conn.execute(
            "SELECT status, owner, epoch, recoveries FROM stepstone.executions WHERE id = %s",
            [workflow_id],
        ).fetchone()


def test_claims_count_by_their_reason_and_the_previous_owner(store: Store) -> None:
    """Claims for a restart, an expired lease, a retry or a call again count; claims for a
    resume or a fork do not, nor does claiming a released execution (the release counted)."""
    _start(store)
    expected = 0
    for reason, counts in [
        ("resumed", False),
        ("forked", False),
        ("woken", False),
        ("called_again", True),
        ("retry", True),
        ("restart", True),
        ("expired_lease", True),
    ]:
        record = store.claim_own("wf-1", "exec-a", reason=reason)
        assert record is not None
        expected += counts
        assert record.recoveries == expected, reason
    assert _row(store) == ("RUNNING", "exec-a", 8, expected)
    assert store.release_execution("wf-1", "exec-a", 8, "interrupted")
    assert _row(store) == ("RUNNING", None, 9, expected + 1)
    claimed = store.sweep("exec-b", [("flow", "1")], 10).claimed
    assert [(r.id, r.epoch, r.recoveries) for r in claimed] == [("wf-1", 10, expected + 1)]


def test_release_is_fenced_by_owner_and_epoch(store: Store) -> None:
    """A release by another owner, at another epoch or of an ended execution returns False
    and changes nothing; the owner's release at its epoch hands the execution back, counts
    one recovery, is in the audit log, and fences out the old epoch."""
    _start(store)
    _start(store, "wf-done")
    store.finish_execution(
        "wf-done", "exec-a", 1, status="SUCCEEDED", output="1", error=None, seq=0
    )
    before, logs = _row(store), store.list_logs("wf-1")
    assert not store.release_execution("wf-1", "exec-b", 1, "interrupted")
    assert not store.release_execution("wf-1", "exec-a", 2, "interrupted")
    assert not store.release_execution("wf-1", "exec-a", 0, "interrupted")
    assert not store.release_execution("wf-done", "exec-a", 1, "interrupted")
    assert not store.release_execution("ghost", "exec-a", 1, "interrupted")
    assert _row(store) == before == ("RUNNING", "exec-a", 1, 0)
    assert store.list_logs("wf-1") == logs
    assert _row(store, "wf-done") == ("SUCCEEDED", "exec-a", 1, 0)

    assert store.release_execution("wf-1", "exec-a", 1, "SystemExit in a step")
    assert _row(store) == ("RUNNING", None, 2, 1)
    released = store.list_logs("wf-1")[-1]
    assert (released.event, released.actor) == ("execution_released", "exec-a")
    assert released.details == {
        "reason": "SystemExit in a step",
        "epoch": 2,
        "previous_epoch": 1,
        "interrupted": True,
    }
    assert not store.release_execution("wf-1", "exec-a", 1, "again")
    with pytest.raises(OwnershipLost):
        store.commit_step(_step(epoch=1))


def _step(*, epoch: int) -> StepCommit:
    now = dt.datetime.now(dt.UTC)
    return StepCommit("wf-1", "exec-a", epoch, 0, "s", "step", "1", None, 1, now, now)


def test_a_graceful_release_counts_no_recovery_and_tells_the_executors(
    store: Store, db: str
) -> None:
    """A release at a graceful shutdown (interrupted=False) hands the execution back with no
    owner at the next epoch but counts no recovery, says so in the audit log, and notifies
    executors at commit ('due:' and its id) so that a sweep claims it at once."""
    _start(store)
    with psycopg.connect(db, autocommit=True) as listener:
        listener.execute("LISTEN stepstone")
        assert not store.release_execution("wf-1", "exec-a", 0, "shutdown", interrupted=False)
        assert [n.payload for n in listener.notifies(timeout=0.3)] == []
        assert store.release_execution("wf-1", "exec-a", 1, "shutdown", interrupted=False)
        heard = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    assert heard == ["due:wf-1"]
    assert _row(store) == ("RUNNING", None, 2, 0)
    released = store.list_logs("wf-1")[-1]
    assert released.details is not None
    assert (released.event, released.details["interrupted"]) == ("execution_released", False)
    claimed = store.sweep("exec-b", [("flow", "1")], 10).claimed
    assert [(r.id, r.epoch, r.recoveries) for r in claimed] == [("wf-1", 3, 0)]
