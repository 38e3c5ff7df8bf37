"""Races between recovery and executions running in this process, and what must never
strand an execution: each test pins one way an execution could be left RUNNING forever."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

import stepstone
from stepstone import Runtime, UsageError, WorkflowFailed
from tests.support.runtime import FAST, Crash, wait_for


def _owner(rt: Runtime, workflow_id: str) -> str | None:
    row = rt.store.get_execution(workflow_id)
    assert row is not None
    return row.owner


def _status(db: str, workflow_id: str) -> tuple[Any, ...] | None:
    with psycopg.connect(db) as conn:
        return conn.execute(
            "SELECT status, owner, epoch FROM stepstone.executions WHERE id = %s", [workflow_id]
        ).fetchone()


def test_claimed_execution_runs_even_while_a_local_caller_waits_for_it(db: str) -> None:
    """A caller here waits for an id another executor owns; when that owner's lease expires
    and this executor's sweep claims it, it runs here and the caller gets the result."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO stepstone.executors (id, hostname, pid, lease_seconds) VALUES ('dead', 'h', 1, 1)"
        )
        conn.execute(
            "INSERT INTO stepstone.executions (id, workflow_name, workflow_version, status, inputs, owner, epoch) "
            "VALUES ('x1', 'flow', '1', 'RUNNING', %s, 'dead', 1)",
            ['{"args": [], "kwargs": {}}'],
        )
    rt = Runtime(db, executor_id="alive", **FAST)

    @rt.workflow()
    def flow() -> str:
        return "ran here"

    rt.launch()
    try:
        result: list[Any] = []
        caller = threading.Thread(
            target=lambda: result.append(flow.with_options(workflow_id="x1")())
        )
        caller.start()  # "dead" is not expired yet: the caller waits for its outcome
        caller.join(15)
        assert result == ["ran here"]
        assert _status(db, "x1") == ("SUCCEEDED", "alive", 2)
    finally:
        rt.shutdown()


def test_child_taken_over_by_another_executor_does_not_strand_its_parent(db: str) -> None:
    """When a child's ownership moves elsewhere mid-run, the parent waits for the child's
    outcome and finishes, instead of stopping with the child's OwnershipLost."""
    here = Runtime(db, executor_id="here", **FAST)
    there = Runtime(db, executor_id="there", **FAST)

    def define(rt: Runtime, release: bool) -> Any:
        @rt.step(name="give_away")
        def give_away() -> str:
            if release:  # as if this executor had released the child (owner NULL, new epoch)
                wid = stepstone.current().workflow_id
                with psycopg.connect(db, autocommit=True) as conn:
                    conn.execute(
                        "UPDATE stepstone.executions SET owner = NULL, epoch = epoch + 1 WHERE id = %s",
                        [wid],
                    )
            return "child done"

        @rt.workflow(name="child")
        def child() -> str:
            return give_away()

        @rt.workflow(name="parent")
        def parent() -> str:
            return "parent got " + child()

        return parent

    parent = define(here, release=True)
    define(there, release=False)
    here.launch()
    there.launch()
    try:
        handle = here.start(parent.with_options(workflow_id="p1"))
        assert handle.result(timeout=15) == "parent got child done"
        # "here" gives the child away whenever it runs it, so only "there" can finish it.
        status = _status(db, "p1/0")
        assert status is not None
        assert status[:2] == ("SUCCEEDED", "there")
    finally:
        here.shutdown()
        there.shutdown()


def test_parent_and_child_resumed_together_cannot_deadlock_one_worker(db: str) -> None:
    """With one worker, a resumed parent that reaches its queued, resumed child runs the
    child itself rather than waiting for the worker it occupies."""
    crash = {"now": True}
    first = Runtime(db, executor_id="solo", workers=1, **FAST)

    def define(rt: Runtime) -> Any:
        @rt.step(name="leaf")
        def leaf() -> int:
            if crash["now"]:
                raise Crash
            return 7

        @rt.workflow(name="child")
        def child() -> int:
            return leaf()

        @rt.workflow(name="parent")
        def parent() -> int:
            return child() * 6

        return parent

    parent = define(first)
    first.launch()
    with pytest.raises(Crash):
        parent.with_options(workflow_id="pp")()
    first.shutdown()
    crash["now"] = False
    with psycopg.connect(db, autocommit=True) as conn:  # keep the sweep away from them
        conn.execute(
            "UPDATE stepstone.executors SET heartbeat_at = now() + interval '1 hour', "
            "lock_key = NULL WHERE id = 'solo'"
        )

    again = Runtime(db, executor_id="solo-2", workers=1, **FAST)
    define(again)
    again.launch()
    try:
        # Claim both and hand them to the engine parent first: the order that used to deadlock.
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(
                "UPDATE stepstone.executions SET owner = 'solo-2' WHERE id IN ('pp', 'pp/0')"
            )
        records = [again.store.claim_own(i, "solo-2", reason="test") for i in ("pp", "pp/0")]
        for record in records:
            assert record is not None
            assert again._engine.resume(record)
        assert again.handle("pp").result(timeout=15) == 42
    finally:
        again.shutdown()


def test_state_cannot_be_changed_inside_a_step_body(rt: Runtime) -> None:
    """A replay skips step bodies, so state changed there would vanish on recovery: refused."""

    @rt.step()
    def sneaky() -> None:
        stepstone.current().state["paid"] = True

    @rt.workflow()
    def paying() -> None:
        sneaky()

    rt.launch()
    with pytest.raises(WorkflowFailed, match="changed inside a step's body") as info:
        paying.with_options(workflow_id="sneaky-1")()
    assert isinstance(info.value.__cause__, UsageError)
    assert rt.get_state("sneaky-1") == {}


def test_unreadable_inputs_are_refused_here_and_the_others_resume(db: str) -> None:
    """An execution whose inputs this process cannot decode is refused (left unowned for
    another executor, counted as unclaimable by health), not failed; the other executions
    claimed with it still run."""
    crash = {"now": True}
    first = Runtime(db, executor_id="reader", **FAST)

    def define(rt: Runtime) -> Any:
        @rt.step(name="halt")
        def halt() -> None:
            if crash["now"]:
                raise Crash

        @rt.workflow(name="job")
        def job(n: int) -> int:
            halt()
            return n

        return job

    job = define(first)
    first.launch()
    for n in range(3):
        with pytest.raises(Crash):
            job.with_options(workflow_id=f"job-{n}")(n)
    first.shutdown()
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE stepstone.executions SET inputs = 'not json' WHERE id = 'job-1'")
    crash["now"] = False
    again = Runtime(db, executor_id="reader", **FAST)
    define(again)
    again.launch()
    try:
        assert again.handle("job-0").result(timeout=10) == 0
        assert again.handle("job-2").result(timeout=10) == 2
        wait_for(lambda: _owner(again, "job-1") is None)
        assert again.handle("job-1").status() == "RUNNING"
        assert again.health_status().unclaimable == 1
        refused = [e for e in again.store.list_logs("job-1") if e.event == "execution_refused"]
        assert "JSONDecodeError" in refused[0].details["reason"]
    finally:
        again.shutdown()


def test_transaction_step_at_repeatable_read_is_still_fenced(rt: Runtime, db: str) -> None:
    """A step that raises its isolation level reads an old snapshot: a claim committed since
    must still stop its commit (serialization failure), and its SQL must not persist."""
    rt.launch()
    with rt.store.connection() as conn:
        conn.execute("CREATE TABLE marks (note text)")

    @rt.transaction()
    def late(conn: psycopg.Connection[Any]) -> None:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.execute("SELECT count(*) FROM marks").fetchone()  # the snapshot is taken here
        with psycopg.connect(db, autocommit=True) as other:
            other.execute("SELECT * FROM stepstone.claim_v1('thief', ARRAY['rr-1'], 'test')")
        conn.execute("INSERT INTO marks VALUES ('late')")

    @rt.workflow()
    def isolated() -> None:
        late()

    # The executor stops running it; the caller waits for the thief's outcome.
    with pytest.raises(stepstone.ResultTimeout):
        rt.start(isolated.with_options(workflow_id="rr-1")).result(timeout=2)
    with rt.store.connection() as conn:
        assert conn.execute("SELECT count(*) FROM marks").fetchone() == (0,)
    assert rt.store.list_steps("rr-1") == []
