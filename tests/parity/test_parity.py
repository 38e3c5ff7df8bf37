"""The same behaviour, and the same records in the database, for sync and async workflows:
replay, retries, transaction steps, fencing and state. Each test runs once per flavour
(see flavours.py) with the same assertions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql

import stepstone
from stepstone import (
    NonDeterminismError,
    OwnershipLost,
    ResultTimeout,
    RetryPolicy,
    Runtime,
    WorkflowFailed,
)
from tests.parity import flavours
from tests.parity.flavours import FLAVOURS, bump_epoch, flavour_of
from tests.support import databases
from tests.support.runtime import Crash

if TYPE_CHECKING:
    from tests.parity.flavours import Flavour


def _steps(rt: Runtime, workflow_id: str) -> list[tuple[int, str, str, int, str | None]]:
    """Each recorded step: position, name, kind, attempts, recorded error type."""
    return [
        (s.seq, s.name, s.kind, s.attempts, s.error["type"] if s.error else None)
        for s in rt.store.list_steps(workflow_id)
    ]


def _events(rt: Runtime, workflow_id: str) -> list[str]:
    return [log.event for log in rt.store.list_logs(workflow_id)]


def _marks(rt: Runtime) -> list[str]:
    with rt.store.connection() as conn:
        return [str(r[0]) for r in conn.execute("SELECT note FROM marks ORDER BY note")]


@pytest.fixture
def marks(db: str) -> None:
    """A table `marks (note text PRIMARY KEY)` for transaction steps to write."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE marks (note text PRIMARY KEY)")


# -- replay --------------------------------------------------------------------------------


def test_replay_returns_recorded_steps_and_errors_without_running_them(
    flavour: Flavour, rt: Runtime
) -> None:
    """Called again after an interruption, a workflow gets its recorded results and
    recorded errors without running those steps, runs the interrupted step, and goes on
    with its recorded inputs."""
    f = flavour
    bodies: list[str] = []
    crash = {"at": "ship"}

    @f.step("price")
    def price(sku: str) -> float:
        bodies.append("price")
        return 9.5

    @f.step("fail_once")
    def fail_once() -> None:
        bodies.append("fail_once")
        raise KeyError("recorded failure")

    @f.step("ship")
    def ship(sku: str) -> str:
        bodies.append("ship")
        if crash["at"] == "ship":
            raise Crash
        return f"shipped {sku}"

    @f.workflow("order")
    def order(sku: str) -> Any:
        amount = yield price(sku)
        try:
            yield fail_once()
        except KeyError as exc:
            note = str(exc)
        stepstone.current().state["replaying_at_ship"] = stepstone.current().replaying
        shipped = yield ship(sku)
        return [amount, note, shipped]

    with pytest.raises(Crash):
        f.call(order, "sku-1", workflow_id="p-replay")
    assert bodies == ["price", "fail_once", "ship"]
    assert rt.handle("p-replay").status() == "RUNNING"
    assert _steps(rt, "p-replay") == [
        (0, "price", "step", 1, None),
        (1, "fail_once", "step", 1, "builtins:KeyError"),
    ]

    crash["at"] = ""
    bodies.clear()
    result = f.call(order, "ignored: inputs are recorded", workflow_id="p-replay")
    assert result == [9.5, "'recorded failure'", "shipped sku-1"]
    assert bodies == ["ship"]
    assert _steps(rt, "p-replay") == [
        (0, "price", "step", 1, None),
        (1, "fail_once", "step", 1, "builtins:KeyError"),
        (2, "ship", "step", 1, None),
    ]
    assert rt.get_state("p-replay") == {"replaying_at_ship": False}
    assert rt.handle("p-replay").status() == "SUCCEEDED"
    assert _events(rt, "p-replay") == [
        "execution_started",
        "step_failed",
        "execution_resumed",
        "execution_succeeded",
    ]


def test_replay_calling_another_step_at_a_recorded_position_is_nondeterminism(
    flavour: Flavour, rt: Runtime
) -> None:
    """A replay calling another step than the one recorded at a position fails the
    execution with NonDeterminismError naming both and the call site; calling it again
    raises the recorded failure and runs nothing."""
    f = flavour
    code = {"first": "reserve", "crash": True}
    ran: list[str] = []

    @f.step("reserve")
    def reserve() -> str:
        ran.append("reserve")
        return "reserved"

    @f.step("charge")
    def charge() -> str:
        ran.append("charge")
        return "charged"

    @f.step("halt")
    def halt() -> None:
        if code["crash"]:
            raise Crash

    @f.workflow("checkout")
    def checkout() -> Any:
        yield (reserve() if code["first"] == "reserve" else charge())
        yield halt()
        return "done"

    with pytest.raises(Crash):
        f.call(checkout, workflow_id="p-nd")
    code.update(first="charge", crash=False)
    ran.clear()
    with pytest.raises(WorkflowFailed) as failed:
        f.call(checkout, workflow_id="p-nd")
    cause = failed.value.__cause__
    assert isinstance(cause, NonDeterminismError)
    assert (cause.workflow_id, cause.seq, cause.recorded, cause.called) == (
        "p-nd",
        0,
        "reserve",
        "charge",
    )
    # The call site is the user's line that called the step (here, the flavour's driver).
    assert cause.call_site.startswith(f"{flavours.__file__}:")
    assert ran == []
    row = rt.store.get_execution("p-nd")
    assert row is not None
    assert row.status == "FAILED"
    assert row.error is not None
    assert row.error["type"] == "stepstone.errors:NonDeterminismError"
    with pytest.raises(WorkflowFailed, match="NonDeterminismError"):
        f.call(checkout, workflow_id="p-nd")
    assert ran == []
    assert _steps(rt, "p-nd") == [(0, "reserve", "step", 1, None)]


# -- retries -------------------------------------------------------------------------------


def test_step_failing_twice_then_succeeding_is_one_record_of_three_attempts(
    flavour: Flavour, rt: Runtime
) -> None:
    """A step that fails twice then succeeds under a retry policy is recorded once, with
    attempts=3 and one step_retried audit entry listing both errors."""
    f = flavour
    attempts: list[int] = []

    @f.step("flaky", retry=RetryPolicy(max_attempts=3, initial_interval=0.01))
    def flaky() -> str:
        attempts.append(len(attempts) + 1)
        if len(attempts) < 3:
            raise ConnectionError(f"try again {len(attempts)}")
        return "done"

    @f.workflow("retrying")
    def retrying() -> Any:
        return (yield flaky())

    assert f.call(retrying, workflow_id="p-retry") == "done"
    assert attempts == [1, 2, 3]
    assert _steps(rt, "p-retry") == [(0, "flaky", "step", 3, None)]
    retried = [log for log in rt.store.list_logs("p-retry") if log.event == "step_retried"]
    assert [(log.seq, log.details["step"], log.details["attempts"]) for log in retried] == [
        (0, "flaky", 3)
    ]
    assert [("try again 1" in e, "try again 2" in e) for e in retried[0].details["errors"]] == [
        (True, False),
        (False, True),
    ]
    assert _events(rt, "p-retry") == ["execution_started", "step_retried", "execution_succeeded"]


def test_step_exhausting_its_attempts_fails_the_workflow_and_replays_the_error(
    flavour: Flavour, rt: Runtime
) -> None:
    """A step failing on each of its attempts has its last error recorded; uncaught, the
    workflow ends FAILED with WorkflowFailed; calling it again raises the same recorded
    error and runs nothing."""
    f = flavour
    attempts: list[int] = []

    @f.step("broken", retry=RetryPolicy(max_attempts=2, initial_interval=0.01))
    def broken() -> None:
        attempts.append(1)
        raise ValueError("broken for good")

    @f.workflow("failing")
    def failing() -> Any:
        yield broken()

    with pytest.raises(WorkflowFailed, match="broken for good") as first:
        f.call(failing, workflow_id="p-exhaust")
    assert attempts == [1, 1]
    assert _steps(rt, "p-exhaust") == [(0, "broken", "step", 2, "builtins:ValueError")]
    row = rt.store.get_execution("p-exhaust")
    assert row is not None
    assert row.status == "FAILED"
    assert row.error is not None
    assert (row.error["type"], row.error["message"]) == ("builtins:ValueError", "broken for good")
    assert _events(rt, "p-exhaust") == [
        "execution_started",
        "step_retried",
        "step_failed",
        "execution_failed",
    ]

    with pytest.raises(WorkflowFailed, match="broken for good") as again:
        f.call(failing, workflow_id="p-exhaust")
    assert str(again.value) == str(first.value)
    assert attempts == [1, 1]


# -- transaction steps ---------------------------------------------------------------------


@pytest.mark.usefixtures("marks")
def test_transaction_step_commits_its_sql_with_its_record_or_rolls_both_back(
    flavour: Flavour, rt: Runtime
) -> None:
    """A transaction step's SQL commits with its record; a failing body rolls its SQL
    back and records its error, which the workflow can catch."""
    f = flavour

    @f.transaction("mark")
    def mark(note: str) -> Any:
        yield f.sql("INSERT INTO marks VALUES (%s)", note)
        (count,) = yield f.sql("SELECT count(*) FROM marks")
        if note == "bad":
            raise ValueError(f"refused {note} after {count[0]} rows")
        return note

    @f.workflow("marking")
    def marking() -> Any:
        try:
            yield mark("bad")
        except ValueError as exc:
            caught = str(exc)
        good = yield mark("good")
        return [caught, good]

    assert f.call(marking, workflow_id="p-tx") == ["refused bad after 1 rows", "good"]
    assert _marks(rt) == ["good"]
    assert _steps(rt, "p-tx") == [
        (0, "mark", "transaction", 1, "builtins:ValueError"),
        (1, "mark", "transaction", 1, None),
    ]
    assert _events(rt, "p-tx") == ["execution_started", "step_failed", "execution_succeeded"]


@pytest.mark.usefixtures("marks")
def test_fenced_out_transaction_step_rolls_back_the_users_sql(
    flavour: Flavour, rt: Runtime, db: str
) -> None:
    """A claim by another executor committed while a transaction step runs makes its
    commit fail in the database (OwnershipLost, even caught): the user's write, the step
    record and the state change roll back, nothing more runs here, and the caller waits
    for the outcome of the executor that claimed it."""
    f = flavour
    ran: list[str] = []

    @f.step("first")
    def first() -> str:
        return "first"

    @f.transaction("write")
    def write(note: str) -> Any:
        yield f.sql("INSERT INTO marks VALUES (%s)", note)
        bump_epoch(db, "p-fence")
        return note

    @f.step("after")
    def after() -> None:
        ran.append("after")

    @f.workflow("fenced")
    def fenced() -> Any:
        yield first()
        stepstone.current().state["stage"] = "writing"
        try:
            yield write("fenced-note")
        except OwnershipLost:
            ran.append("caught")  # swallowed: the workflow stops all the same
        yield after()

    handle = f.start(fenced, workflow_id="p-fence")
    with pytest.raises(ResultTimeout):
        handle.result(timeout=2)
    assert _marks(rt) == []
    assert ran == ["caught"]
    assert _steps(rt, "p-fence") == [(0, "first", "step", 1, None)]
    assert rt.get_state("p-fence") == {}
    row = rt.store.get_execution("p-fence")
    assert row is not None
    assert (row.status, row.owner, row.epoch) == ("RUNNING", "thief", 2)


# -- state ---------------------------------------------------------------------------------


def test_state_is_durable_with_the_next_step_commit_and_with_completion(
    flavour: Flavour, rt: Runtime
) -> None:
    """State set by a workflow becomes readable by rt.get_state with the next step's
    commit, not before; the last changes (deletions too) commit with its completion."""
    f = flavour
    seen: list[dict[str, Any]] = []

    @f.step("peek")
    def peek() -> None:
        seen.append(rt.get_state("p-state"))

    @f.workflow("stateful")
    def stateful() -> Any:
        state = stepstone.current().state
        state["stage"] = "one"
        state["scratch"] = [1, 2]
        yield peek()
        state["stage"] = "two"
        del state["scratch"]
        yield peek()
        state["done"] = True
        return dict(state)

    assert f.call(stateful, workflow_id="p-state") == {"stage": "two", "done": True}
    assert seen == [{}, {"stage": "one", "scratch": [1, 2]}]
    assert rt.get_state("p-state") == {"stage": "two", "done": True}


# -- the same records ----------------------------------------------------------------------

_TABLES = (
    ("workflows", "name, version"),
    ("executions", "id"),
    ("steps", "execution_id, seq"),
    ("states", "execution_id, key"),
    ("checkpoints", "execution_id, seq"),
    ("logs", "execution_id, id"),
    ("messages", "execution_id, topic, id"),
)
# What differs between two runs of the same code by nature: clocks, generated ids and
# tracebacks. (Both flavours' functions declare their description's source, so the code
# fingerprints are compared too.)
_UNCOMPARED = {
    "first_seen",
    "last_seen",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "at",
    "sent_at",
}


def _records(dsn: str) -> dict[str, list[dict[str, Any]]]:
    """Every row stepstone wrote for executions, minus what differs by nature."""
    found: dict[str, list[dict[str, Any]]] = {}
    with psycopg.connect(dsn) as conn:
        for table, order in _TABLES:
            query = sql.SQL("SELECT to_jsonb(t) FROM stepstone.{} t ORDER BY {}").format(
                sql.Identifier(table), sql.SQL(order)
            )
            rows = []
            for (row,) in conn.execute(query):
                kept = {k: v for k, v in row.items() if k not in _UNCOMPARED}
                if table in ("logs", "messages"):
                    kept.pop("id")
                if kept.get("error"):
                    kept["error"] = {k: v for k, v in kept["error"].items() if k != "traceback"}
                rows.append(kept)
            found[table] = rows
    return found


def _order_records(f: Flavour, dsn: str) -> dict[str, list[dict[str, Any]]]:
    """Run one workflow touching every kind of record (steps, a recorded error, retries,
    a transaction step, state, an interruption and its replay) in flavour `f`; what it
    wrote."""
    crash = {"at": "ship"}
    tries: list[int] = []

    @f.step("price")
    def price(sku: str) -> float:
        return 9.5

    @f.step("flaky", retry=RetryPolicy(max_attempts=3, initial_interval=0.01))
    def flaky(sku: str) -> str:
        tries.append(1)
        if len(tries) < 2:
            raise ConnectionError("try again")
        return f"reserved {sku}"

    @f.step("refuse")
    def refuse() -> None:
        raise KeyError("refused")

    @f.transaction("record")
    def record(sku: str, amount: float) -> Any:
        yield f.sql("INSERT INTO marks VALUES (%s)", f"{sku} at {amount}")
        return amount

    @f.step("ship")
    def ship(sku: str) -> str:
        if crash["at"] == "ship":
            raise Crash
        return f"shipped {sku}"

    @f.workflow("order")
    def order(sku: str) -> Any:
        state = stepstone.current().state
        amount = yield price(sku)
        state["amount"] = amount
        reserved = yield flaky(sku)
        try:
            yield refuse()
        except KeyError:
            state["refused"] = True
        yield record(sku, amount)
        state["stage"] = "shipping"
        shipped = yield ship(sku)
        del state["refused"]
        return [reserved, shipped]

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE marks (note text PRIMARY KEY)")
    try:
        with pytest.raises(Crash):
            f.call(order, "sku-1", workflow_id="p-same")
        crash["at"] = ""
        assert f.call(order, "sku-1", workflow_id="p-same") == ["reserved sku-1", "shipped sku-1"]
    finally:
        f.close()
    return _records(dsn)


def test_the_same_workflow_writes_the_same_records_in_both_flavours(
    template_db: str,
) -> None:
    """One workflow run as sync code on one database and as async code on another leaves
    the same rows in workflows, executions, steps, states, checkpoints, logs and messages
    (clocks, generated ids and tracebacks aside)."""
    names = [databases.create_database(template=template_db) for _ in FLAVOURS]
    try:
        found = {}
        for flavour, name in zip(FLAVOURS, names, strict=True):
            dsn = databases.dsn_for(name)
            rt = Runtime(dsn, executor_id="test-executor", workers=4, pool_max_size=6)
            found[flavour] = _order_records(flavour_of(flavour, rt), dsn)
    finally:
        for name in names:
            databases.drop_database(name)
    assert found["sync"]["steps"], "the workflow recorded nothing"
    assert found["sync"]["workflows"][0]["fingerprint"]
    for table, _ in _TABLES:
        assert found["async"][table] == found["sync"][table], table
