"""Running an execution again: recorded steps replay, the rest runs, divergence fails loudly."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import pytest

import stepstone
from stepstone import NonDeterminismError, Runtime, WorkflowFailed
from tests.support.runtime import Crash

if TYPE_CHECKING:
    import psycopg


def test_resumed_execution_replays_recorded_steps_without_running_them(rt: Runtime) -> None:
    """After an interruption, calling the same id again returns recorded results from the
    database, re-runs the interrupted step and continues, with the original inputs."""
    bodies: list[str] = []
    crash = {"at": "ship"}

    @rt.step()
    def price(sku: str) -> dt.datetime:
        bodies.append("price")
        return dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)

    @rt.step()
    def fail_once() -> None:
        bodies.append("fail_once")
        raise KeyError("recorded failure")

    @rt.step()
    def ship(sku: str) -> str:
        bodies.append("ship")
        if crash["at"] == "ship":
            raise Crash
        return f"shipped {sku}"

    @rt.workflow()
    def order(sku: str) -> tuple[Any, ...]:
        when = price(sku)
        try:
            fail_once()
        except KeyError as exc:
            note = str(exc)
        stepstone.current().state["replaying_at_ship"] = stepstone.current().replaying
        return when, note, ship(sku)

    rt.launch()
    with pytest.raises(Crash):
        order.with_options(workflow_id="order-1")("sku-1")
    assert bodies == ["price", "fail_once", "ship"]
    assert rt.handle("order-1").status() == "RUNNING"

    crash["at"] = ""
    bodies.clear()
    result = order.with_options(workflow_id="order-1")("ignored: inputs are the recorded ones")
    assert result == (
        dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC),
        "'recorded failure'",
        "shipped sku-1",
    )
    assert bodies == ["ship"]
    assert [s.name for s in rt.store.list_steps("order-1")] == ["price", "fail_once", "ship"]
    events = [(log.event, log.details.get("epoch")) for log in rt.store.list_logs("order-1")]
    assert ("execution_resumed", 2) in events
    assert rt.get_state("order-1") == {"replaying_at_ship": False}


def test_recorded_error_of_an_unknown_type_replays_as_step_error(rt: Runtime) -> None:
    """A recorded error whose type this process cannot rebuild is raised as a StepError
    subclass bearing the recorded type's name, with the recorded message."""
    crash = {"now": True}

    @rt.step()
    def boom() -> None:
        raise ValueError("original")

    @rt.step()
    def stop() -> None:
        if crash["now"]:
            raise Crash

    @rt.workflow()
    def flow() -> str:
        try:
            boom()
        except Exception as exc:
            seen = f"{type(exc).__name__}: {exc} ({isinstance(exc, stepstone.StepError)})"
        stop()
        return seen

    rt.launch()
    with pytest.raises(Crash):
        flow.with_options(workflow_id="unknown-type")()
    with rt.store.connection() as conn:
        conn.execute(
            "UPDATE stepstone.steps SET error = jsonb_set(error, '{type}', '\"gone_module:Vanished\"') "
            "WHERE execution_id = 'unknown-type' AND seq = 0"
        )
    crash["now"] = False
    assert flow.with_options(workflow_id="unknown-type")() == "Vanished: original (True)"


def test_changed_step_at_a_recorded_position_is_nondeterminism(db: str) -> None:
    """New code calling another step where one is recorded fails the execution with an
    error naming the id, the position, both steps and the call site; it is not retried."""
    old = Runtime(db, executor_id="same-executor")

    @old.step()
    def reserve() -> str:
        return "reserved"

    @old.step()
    def halt() -> None:
        raise Crash

    @old.workflow(name="checkout")
    def checkout_v1() -> None:
        reserve()
        halt()

    old.launch()
    with pytest.raises(Crash):
        checkout_v1.with_options(workflow_id="nd-1")()
    old.shutdown()

    new = Runtime(db, executor_id="same-executor")
    ran: list[str] = []

    @new.step()
    def charge() -> str:
        ran.append("charge")
        return "charged"

    @new.workflow(name="checkout")
    def checkout_v2() -> str:
        return charge()

    new.launch()
    try:
        with pytest.raises(WorkflowFailed) as info:
            checkout_v2.with_options(workflow_id="nd-1")()
        cause = info.value.__cause__
        assert isinstance(cause, NonDeterminismError)
        assert (cause.workflow_id, cause.seq, cause.recorded, cause.called) == (
            "nd-1",
            0,
            "reserve",
            "charge",
        )
        assert cause.call_site.startswith(__file__)
        assert "'nd-1'" in str(cause)
        assert "step 0" in str(cause)
        assert ran == []
        row = new.store.get_execution("nd-1")
        assert row is not None
        assert row.status == "FAILED"
        assert row.error is not None
        assert row.error["type"] == "stepstone.errors:NonDeterminismError"
        # Calling again returns the recorded failure; nothing runs.
        with pytest.raises(WorkflowFailed, match="NonDeterminismError"):
            checkout_v2.with_options(workflow_id="nd-1")()
        assert ran == []
    finally:
        new.shutdown()


def test_workflow_returning_before_its_recorded_steps_is_nondeterminism(db: str) -> None:
    """New code that stops short of steps already recorded is divergence too."""
    old = Runtime(db, executor_id="same-executor")

    @old.step()
    def one() -> int:
        return 1

    @old.step()
    def two() -> None:
        raise Crash

    @old.workflow(name="short")
    def short_v1() -> None:
        one()
        one()
        two()

    old.launch()
    with pytest.raises(Crash):
        short_v1.with_options(workflow_id="short-1")()
    old.shutdown()

    new = Runtime(db, executor_id="same-executor")

    @new.step(name="one")
    def one_again() -> int:
        return 1

    @new.workflow(name="short")
    def short_v2() -> int:
        return one_again()

    new.launch()
    try:
        with pytest.raises(WorkflowFailed) as info:
            short_v2.with_options(workflow_id="short-1")()
        cause = info.value.__cause__
        assert isinstance(cause, NonDeterminismError)
        assert (cause.seq, cause.recorded, cause.called) == (1, "one", None)
    finally:
        new.shutdown()


def test_transaction_step_replays_without_touching_the_database_again(rt: Runtime) -> None:
    """A committed transaction step is never re-executed on replay."""
    rt.launch()
    with rt.store.connection() as conn:
        conn.execute("CREATE TABLE counter (n int)")
        conn.execute("INSERT INTO counter VALUES (0)")

    @rt.transaction()
    def bump(conn: psycopg.Connection[Any]) -> int:
        row = conn.execute("UPDATE counter SET n = n + 1 RETURNING n").fetchone()
        assert row is not None
        return int(row[0])

    @rt.step()
    def halt(crash: bool) -> None:
        if crash:
            raise Crash

    crash = {"now": True}

    @rt.workflow()
    def counting() -> int:
        value = bump()
        halt(crash["now"])
        return value

    with pytest.raises(Crash):
        counting.with_options(workflow_id="count-1")()
    crash["now"] = False
    assert counting.with_options(workflow_id="count-1")() == 1
    with rt.store.connection() as conn:
        assert conn.execute("SELECT n FROM counter").fetchone() == (1,)
