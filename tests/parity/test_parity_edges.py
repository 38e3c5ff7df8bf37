"""Less travelled paths, the same for sync and async workflows: errors at COMMIT, a
failing workflow body, values that cannot be stored, an id called again, cancellation and
deadlines."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import time
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

import stepstone
from stepstone import (
    OwnershipLost,
    ResultTimeout,
    RetryPolicy,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowTimedOut,
)
from tests.parity.flavours import bump_epoch
from tests.support.runtime import Crash

if TYPE_CHECKING:
    from stepstone import Runtime
    from tests.parity.flavours import Flavour


def _steps(rt: Runtime, workflow_id: str) -> list[tuple[int, str, int, str | None]]:
    return [
        (s.seq, s.name, s.attempts, s.error["type"] if s.error else None)
        for s in rt.store.list_steps(workflow_id)
    ]


def _events(rt: Runtime, workflow_id: str) -> list[str]:
    return [log.event for log in rt.store.list_logs(workflow_id)]


@pytest.fixture
def orders(db: str) -> None:
    """Tables whose deferred foreign key fails at COMMIT."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id int PRIMARY KEY)")
        conn.execute(
            "CREATE TABLE orders (id int PRIMARY KEY, customer int REFERENCES customers "
            "DEFERRABLE INITIALLY DEFERRED)"
        )


@pytest.mark.usefixtures("orders")
def test_a_constraint_failing_at_commit_is_the_transaction_steps_own_failure(
    flavour: Flavour, rt: Runtime, db: str
) -> None:
    """A deferred foreign key violated by a transaction step's SQL fails at COMMIT: the
    step is retried per its policy, then its failure is recorded and raised in the
    workflow, which catches it; nothing of its SQL stays."""
    f = flavour
    attempts: list[int] = []

    @f.transaction("place", retry=RetryPolicy(max_attempts=3, initial_interval=0))
    def place(order_id: int) -> Any:
        attempts.append(order_id)
        yield f.sql("INSERT INTO orders VALUES (%s, 404)", order_id)

    @f.workflow("ordering")
    def ordering() -> Any:
        try:
            yield place(1)
        except psycopg.errors.ForeignKeyViolation as exc:
            return f"refused: {exc.sqlstate}"
        return "placed"

    assert f.call(ordering, workflow_id="e-fk") == "refused: 23503"
    assert attempts == [1, 1, 1]
    assert _steps(rt, "e-fk") == [(0, "place", 3, "psycopg.errors:ForeignKeyViolation")]
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)
    assert rt.handle("e-fk").status() == "SUCCEEDED"


def test_a_recorded_transaction_step_replays_without_running_its_sql(
    flavour: Flavour, rt: Runtime, db: str
) -> None:
    """After an interruption, a committed transaction step returns its recorded result
    and its SQL does not run again."""
    f = flavour
    crash = {"now": True}
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE counter (n int NOT NULL)")
        conn.execute("INSERT INTO counter VALUES (0)")

    @f.transaction("bump")
    def bump() -> Any:
        ((n,),) = yield f.sql("UPDATE counter SET n = n + 1 RETURNING n")
        return n

    @f.step("stop")
    def stop() -> None:
        if crash["now"]:
            raise Crash

    @f.workflow("bumping")
    def bumping() -> Any:
        n = yield bump()
        yield stop()
        return n

    with pytest.raises(Crash):
        f.call(bumping, workflow_id="e-bump")
    crash["now"] = False
    assert f.call(bumping, workflow_id="e-bump") == 1
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT n FROM counter").fetchone() == (1,)
    assert _steps(rt, "e-bump") == [(0, "bump", 1, None), (1, "stop", 1, None)]


def test_a_failing_workflow_body_ends_failed_and_replays_its_error(
    flavour: Flavour, rt: Runtime
) -> None:
    """An exception raised by the workflow body itself (not a step) ends the execution
    FAILED with that error, after its committed steps and state; calling it again raises
    the recorded failure and runs nothing."""
    f = flavour
    ran: list[str] = []

    @f.step("first")
    def first() -> str:
        ran.append("first")
        return "first"

    @f.workflow("doomed")
    def doomed() -> Any:
        yield first()
        stepstone.current().state["at"] = "raising"
        raise LookupError("no such order")

    with pytest.raises(WorkflowFailed, match="no such order"):
        f.call(doomed, workflow_id="e-doomed")
    row = rt.store.get_execution("e-doomed")
    assert row is not None
    assert row.status == "FAILED"
    assert row.error is not None
    assert (row.error["type"], row.error["message"]) == ("builtins:LookupError", "no such order")
    assert rt.get_state("e-doomed") == {"at": "raising"}
    assert _events(rt, "e-doomed") == ["execution_started", "execution_failed"]
    with pytest.raises(WorkflowFailed, match="no such order"):
        f.call(doomed, workflow_id="e-doomed")
    assert ran == ["first"]


def test_a_finished_execution_called_again_returns_its_recorded_result(
    flavour: Flavour, rt: Runtime
) -> None:
    """Calling a SUCCEEDED id again returns its recorded result; nothing runs and
    nothing is written."""
    f = flavour
    ran: list[str] = []

    @f.step("once")
    def once(n: int) -> int:
        ran.append("once")
        return n * 2

    @f.workflow("twice")
    def twice(n: int) -> Any:
        return (yield once(n))

    assert f.call(twice, 4, workflow_id="e-again") == 8
    logs = _events(rt, "e-again")
    assert f.call(twice, 5, workflow_id="e-again") == 8
    assert ran == ["once"]
    assert _events(rt, "e-again") == logs


def test_a_step_result_that_cannot_be_stored_fails_the_workflow_and_records_no_step(
    flavour: Flavour, rt: Runtime
) -> None:
    """A step returning a value the serializer cannot store raises naming the step and
    its position; no step row is written, and the workflow ends FAILED with that error
    (instead of staying RUNNING)."""
    f = flavour

    @f.step("opaque")
    def opaque() -> Any:
        return object()

    @f.workflow("storing")
    def storing() -> Any:
        yield opaque()

    with pytest.raises(
        WorkflowFailed, match=r"output of step 'opaque' \(position 0\) of workflow 'e-opaque'"
    ):
        f.call(storing, workflow_id="e-opaque")
    assert rt.store.list_steps("e-opaque") == []
    assert rt.handle("e-opaque").status() == "FAILED"


def test_a_fenced_out_plain_step_records_nothing_and_stops_the_workflow(
    flavour: Flavour, rt: Runtime, db: str
) -> None:
    """A plain step whose executor lost the execution while it ran commits nothing, and
    no later step runs, even when the workflow swallows OwnershipLost."""
    f = flavour
    ran: list[str] = []

    @f.step("slow")
    def slow() -> int:
        ran.append("slow")
        bump_epoch(db, "e-fence")
        return 1

    @f.step("later")
    def later() -> None:
        ran.append("later")

    @f.workflow("swallowing")
    def swallowing() -> Any:
        try:
            yield slow()
        except OwnershipLost:
            ran.append("caught")
        yield later()
        return "finished"

    handle = f.start(swallowing, workflow_id="e-fence")
    with pytest.raises(ResultTimeout):
        handle.result(timeout=2)
    assert ran == ["slow", "caught"]
    assert rt.store.list_steps("e-fence") == []
    row = rt.store.get_execution("e-fence")
    assert row is not None
    assert (row.status, row.owner, row.epoch) == ("RUNNING", "thief", 2)


def test_a_step_running_at_the_deadline_is_not_recorded(flavour: Flavour, rt: Runtime) -> None:
    """A step body still running when the execution's deadline passes finishes, but its
    result is not recorded and no later step body runs; the caller gets WorkflowTimedOut
    and the execution is CANCELLED."""
    f = flavour
    bodies: list[str] = []

    @f.step("long")
    def long() -> str:
        bodies.append("long")
        time.sleep(1.5)
        return "done"

    @f.step("after")
    def after() -> None:
        bodies.append("after")

    @f.workflow("racing")
    def racing() -> Any:
        yield long()
        yield after()

    with pytest.raises(WorkflowTimedOut):
        f.call(racing, workflow_id="e-deadline", timeout=0.5)
    assert bodies == ["long"]
    assert rt.store.list_steps("e-deadline") == []
    assert rt.handle("e-deadline").status() == "CANCELLED"


def test_a_workflow_cancelled_during_a_step_stops_before_the_next(
    flavour: Flavour, rt: Runtime
) -> None:
    """rt.cancel() while a step body runs ends the execution CANCELLED at once; the step's
    result is not recorded, no later step body runs, and the caller gets
    WorkflowCancelled."""
    f = flavour
    bodies: list[str] = []

    @f.step("cancelling")
    def cancelling() -> str:
        bodies.append("cancelling")
        rt.cancel("e-cancel")
        return "done"

    @f.step("after")
    def after() -> None:
        bodies.append("after")

    @f.workflow("cancelled")
    def cancelled() -> Any:
        yield cancelling()
        yield after()

    with pytest.raises(WorkflowCancelled):
        f.call(cancelled, workflow_id="e-cancel")
    assert bodies == ["cancelling"]
    assert rt.store.list_steps("e-cancel") == []
    assert rt.handle("e-cancel").status() == "CANCELLED"


@dataclasses.dataclass(frozen=True)
class Parcel:
    sku: str
    weight: decimal.Decimal
    sent: dt.date


def test_inputs_and_results_are_rebuilt_by_their_annotations_on_replay(
    flavour: Flavour, rt: Runtime
) -> None:
    """Recorded inputs and step results come back as the types their functions declare
    (a dataclass, a Decimal, a datetime), the same when run and when replayed."""
    f = flavour
    crash = {"now": True}
    seen: list[Any] = []

    @f.step("weigh")
    def weigh(parcel: Parcel) -> decimal.Decimal:
        return parcel.weight * 2

    @f.step("stamp")
    def stamp() -> dt.datetime:
        return dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

    @f.step("stop")
    def stop() -> None:
        if crash["now"]:
            raise Crash

    @f.workflow("shipping")
    def shipping(parcel: Parcel) -> Any:
        weight = yield weigh(parcel)
        when = yield stamp()
        seen.append((parcel, weight, when))
        yield stop()
        return str(weight)

    parcel = Parcel("sku-1", decimal.Decimal("1.25"), dt.date(2026, 1, 1))
    with pytest.raises(Crash):
        f.call(shipping, parcel, workflow_id="e-typed")
    crash["now"] = False
    assert f.call(shipping, parcel, workflow_id="e-typed") == "2.50"
    expected = (parcel, decimal.Decimal("2.50"), dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC))
    assert seen == [expected, expected]
    assert [type(v) for v in seen[1]] == [Parcel, decimal.Decimal, dt.datetime]
