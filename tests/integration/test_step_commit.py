"""The step commit: one transaction per step, fenced by owner and epoch."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

import stepstone
from stepstone import OwnershipLost, ResultTimeout, RetryPolicy, Runtime, UsageError, WorkflowFailed


@pytest.fixture
def launched(rt: Runtime) -> Runtime:
    rt.launch()
    with rt.store.connection() as conn:
        conn.execute("CREATE TABLE marks (note text PRIMARY KEY)")
    return rt


def _marks(rt: Runtime) -> list[str]:
    with rt.store.connection() as conn:
        return [str(r[0]) for r in conn.execute("SELECT note FROM marks ORDER BY note").fetchall()]


def _bump_epoch(dsn: str, workflow_id: str) -> None:
    """What a concurrent claim by another executor does to the execution row."""
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute(
            "UPDATE stepstone.executions SET owner = 'thief', epoch = epoch + 1 WHERE id = %s",
            [workflow_id],
        )


def test_fenced_out_transaction_step_rolls_back_the_users_sql(launched: Runtime, db: str) -> None:
    """A claim committed mid-step makes the step's commit fail in the database: the user's
    write, the step record and the state change all roll back, nothing more runs here, and
    the caller waits for the outcome of the executor that claimed it."""
    rt = launched

    @rt.step()
    def first() -> str:
        return "first"

    @rt.transaction()
    def write(conn: psycopg.Connection[Any], note: str) -> str:
        conn.execute("INSERT INTO marks VALUES (%s)", [note])
        _bump_epoch(db, stepstone.current().workflow_id)
        return note

    @rt.step()
    def after() -> None:
        raise AssertionError("must not run once ownership is lost")

    @rt.workflow()
    def fenced() -> None:
        first()
        stepstone.current().state["stage"] = "writing"
        write("fenced-note")
        after()

    with pytest.raises(ResultTimeout):
        rt.start(fenced.with_options(workflow_id="fence-1")).result(timeout=2)
    assert _marks(rt) == []
    assert [s.name for s in rt.store.list_steps("fence-1")] == ["first"]
    assert rt.get_state("fence-1") == {}
    row = rt.store.get_execution("fence-1")
    assert row is not None
    assert (row.status, row.owner, row.epoch) == ("RUNNING", "thief", 2)


def test_fenced_out_plain_step_records_nothing_and_stops_the_workflow(
    launched: Runtime, db: str
) -> None:
    """A plain step whose owner lost the execution commits nothing, and no later step runs."""
    rt = launched
    ran: list[str] = []

    @rt.step()
    def slow() -> int:
        ran.append("slow")
        _bump_epoch(db, "fence-2")
        return 1

    @rt.step()
    def later() -> None:
        ran.append("later")

    @rt.workflow()
    def swallowing() -> str:
        try:
            slow()
        except OwnershipLost:
            pass  # user code that swallows it still cannot go on
        later()
        return "finished"

    with pytest.raises(ResultTimeout):
        rt.start(swallowing.with_options(workflow_id="fence-2")).result(timeout=2)
    assert ran == ["slow"]
    assert rt.store.list_steps("fence-2") == []
    assert rt.handle("fence-2").status() == "RUNNING"


def test_fence_makes_a_concurrent_claim_wait(launched: Runtime, db: str) -> None:
    """While a step commit holds the fence, a claim waits for it: it cannot slip in between
    the fence check and the COMMIT; once the step commits, the claim goes through."""
    rt = launched

    @rt.workflow()
    def parked() -> None:
        return None

    rt.store.start_execution(
        stepstone.persistence.StartRequest("lock-1", "parked", "1", "{}", rt.executor_id)
    )
    with psycopg.connect(db) as committer, psycopg.connect(db, autocommit=True) as claimer:
        committer.execute("SELECT stepstone.fence_v1('lock-1', %s, 1)", [rt.executor_id])
        claimer.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            claimer.execute("SELECT * FROM stepstone.claim_v1('thief', ARRAY['lock-1'], 'test')")
        committer.commit()
        claimed = claimer.execute(
            "SELECT epoch FROM stepstone.claim_v1('thief', ARRAY['lock-1'], 'test')"
        ).fetchall()
        assert claimed == [(2,)]
    with pytest.raises(OwnershipLost, match="owner thief, epoch 2"):
        rt.store.update_state("lock-1", rt.executor_id, 1, 1, {"k": 1})


def test_step_commit_takes_no_row_lock_on_the_execution(launched: Runtime, db: str) -> None:
    """The hot-path fence locks no row (no heap or WAL write for a lock, no MultiXact): a
    row lock held elsewhere on the execution does not block a step commit."""
    rt = launched
    go = threading.Event()
    holding = threading.Event()

    @rt.step()
    def step_one() -> int:
        holding.wait(10)
        return 1

    @rt.workflow()
    def locked_out() -> int:
        return step_one()

    def hold_row_lock() -> None:
        with psycopg.connect(db) as holder:
            holder.execute("SELECT 1 FROM stepstone.executions WHERE id = 'nolock-1' FOR UPDATE")
            holding.set()
            go.wait(10)

    handle = rt.start(locked_out.with_options(workflow_id="nolock-1"))
    holder = threading.Thread(target=hold_row_lock)
    holder.start()
    try:
        deadline = time.monotonic() + 10
        while not rt.store.list_steps("nolock-1"):
            assert time.monotonic() < deadline, "the step commit waited for the row lock"
            time.sleep(0.01)
    finally:
        go.set()
        holder.join()
    assert handle.result(timeout=10) == 1


def test_failing_transaction_step_is_retried_and_only_the_last_attempt_persists(
    launched: Runtime,
) -> None:
    """SQL that fails rolls back; the retry starts from a clean transaction."""
    rt = launched
    attempts: list[int] = []

    @rt.transaction(retry=RetryPolicy(max_attempts=3, initial_interval=0))
    def write(conn: psycopg.Connection[Any]) -> int:
        attempts.append(1)
        note = f"attempt-{len(attempts)}"
        conn.execute("INSERT INTO marks VALUES (%s)", [note])
        if len(attempts) < 3:
            conn.execute("INSERT INTO marks VALUES (%s)", [note])  # duplicate key on purpose
        return len(attempts)

    @rt.workflow()
    def retrying() -> int:
        return write()

    assert retrying.with_options(workflow_id="retry-tx")() == 3
    assert _marks(rt) == ["attempt-3"]
    (step,) = rt.store.list_steps("retry-tx")
    assert step.attempts == 3


def test_transaction_step_that_keeps_failing_records_its_error_and_nothing_else(
    launched: Runtime,
) -> None:
    """After the last attempt the failure is recorded; none of its SQL persists."""
    rt = launched

    @rt.transaction(retry=RetryPolicy(max_attempts=2, initial_interval=0))
    def doomed(conn: psycopg.Connection[Any]) -> None:
        conn.execute("INSERT INTO marks VALUES ('never')")
        conn.execute("SELECT 1 / 0")

    @rt.workflow()
    def failing() -> None:
        doomed()

    with pytest.raises(WorkflowFailed, match="DivisionByZero") as info:
        failing.with_options(workflow_id="tx-fail")()
    assert isinstance(info.value.__cause__, psycopg.errors.DivisionByZero)
    assert _marks(rt) == []
    (step,) = rt.store.list_steps("tx-fail")
    assert step.error is not None
    assert step.error["type"] == "psycopg.errors:DivisionByZero"
    assert step.attempts == 2
    assert rt.handle("tx-fail").status() == "FAILED"


def test_transaction_step_may_not_end_its_own_transaction(launched: Runtime) -> None:
    """commit() inside a transaction step is reported as misuse and nothing is recorded."""
    rt = launched

    @rt.transaction()
    def commits(conn: psycopg.Connection[Any]) -> None:
        conn.execute("INSERT INTO marks VALUES ('self-committed')")
        conn.commit()

    @rt.workflow()
    def misuse() -> None:
        commits()

    with pytest.raises(WorkflowFailed, match=r"ended its transaction itself") as info:
        misuse.with_options(workflow_id="misuse")()
    assert isinstance(info.value.__cause__, UsageError)
    assert rt.store.list_steps("misuse") == []


def test_transaction_step_that_swallows_an_sql_error_is_rolled_back(launched: Runtime) -> None:
    """A caught SQL error leaves an aborted transaction: stepstone rolls it back and says why."""
    rt = launched

    @rt.transaction()
    def swallows(conn: psycopg.Connection[Any]) -> None:
        conn.execute("INSERT INTO marks VALUES ('before-error')")
        with contextlib.suppress(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")

    @rt.workflow()
    def swallowing() -> None:
        swallows()

    with pytest.raises(WorkflowFailed, match="its error was caught"):
        swallowing()
    assert _marks(rt) == []


def test_connection_settings_changed_by_a_step_do_not_leak(launched: Runtime) -> None:
    """A row factory set by a transaction step is undone before the connection is reused."""
    rt = launched

    @rt.transaction()
    def dict_rows(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        conn.row_factory = dict_row  # type: ignore[assignment]
        row = conn.execute("SELECT 1 AS one").fetchone()
        assert row is not None
        return dict(row)

    @rt.step()
    def plain() -> int:
        return 2

    @rt.workflow()
    def mixed() -> tuple[dict[str, Any], int]:
        return dict_rows(), plain()

    for _ in range(3):
        assert mixed() == ({"one": 1}, 2)


def test_concurrent_workflows_commit_independently(launched: Runtime) -> None:
    """Many workflows at once, each with transaction steps, all commit exactly their rows."""
    rt = launched

    @rt.transaction()
    def put(conn: psycopg.Connection[Any], note: str) -> None:
        conn.execute("INSERT INTO marks VALUES (%s)", [note])

    @rt.workflow()
    def many(n: int) -> int:
        for i in range(3):
            put(f"{n}-{i}")
        return n

    handles = [rt.start(many, n) for n in range(20)]
    assert sorted(h.result(timeout=30) for h in handles) == list(range(20))
    assert len(_marks(rt)) == 60
