"""Waits, children, queues and recovery from SIGKILL, the same for sync and async
workflows: the same records, the same audit trail.

The async flavour of these needs stepstone's async waits (`sleep_async`, `recv_async`,
`wait_state_async`), `Queue.enqueue_async`, and the runtime resuming async executions
(woken, dequeued or taken over) on its event loop. A test whose async API is missing is
reported as an expected failure naming what it needs; it runs in full once that exists.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

import stepstone
from stepstone import RecvTimeout, Runtime
from tests.support.runtime import FAST, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.parity.flavours import Flavour

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def rt(db: str) -> Iterator[Runtime]:
    """A Runtime with short leases and sweeps, so that what is due is found at once."""
    runtime = Runtime(
        db,
        executor_id="test-executor",
        workers=4,
        pool_max_size=6,
        lease_seconds=FAST["lease_seconds"],
        heartbeat_interval=FAST["heartbeat_interval"],
        sweep_interval=FAST["sweep_interval"],
    )
    yield runtime
    runtime.shutdown()


def _steps(rt: Runtime, workflow_id: str) -> list[tuple[int, str, str, str | None]]:
    """Each recorded step: position, name, kind, recorded output."""
    return [(s.seq, s.name, s.kind, s.output) for s in rt.store.list_steps(workflow_id)]


def _events(rt: Runtime, workflow_id: str) -> list[str]:
    return [log.event for log in rt.store.list_logs(workflow_id)]


def _row(rt: Runtime, workflow_id: str) -> tuple[Any, ...]:
    row = rt.store.get_execution(workflow_id)
    assert row is not None
    return (row.status, row.owner, row.parent_id)


# -- waits ---------------------------------------------------------------------------------


def test_a_sleep_already_over_completes_in_its_one_commit(flavour: Flavour, rt: Runtime) -> None:
    """sleep(0) is recorded as a sleep step in one commit, without suspending."""
    f = flavour

    @f.step("after")
    def after() -> str:
        return "after"

    @f.workflow("hurried")
    def hurried() -> Any:
        yield f.sleep(0)
        return (yield after())

    assert f.call(hurried, workflow_id="w-over") == "after"
    assert _steps(rt, "w-over") == [(0, "sleep", "sleep", "null"), (1, "after", "step", '"after"')]
    assert _events(rt, "w-over") == ["execution_started", "execution_succeeded"]


def test_a_sleep_suspends_the_execution_and_the_call_returns_after_it(
    flavour: Flavour, rt: Runtime
) -> None:
    """A sleep not over suspends the execution (WAITING, recorded); when it is due the
    execution is woken and resumed by replay, and the caller gets its result."""
    f = flavour
    bodies: list[str] = []

    @f.step("before")
    def before() -> str:
        bodies.append("before")
        return "before"

    @f.workflow("napper")
    def napper() -> Any:
        first = yield before()
        yield f.sleep(0.5)
        return [first, "rested"]

    assert f.call(napper, workflow_id="w-nap") == ["before", "rested"]
    assert bodies == ["before"]
    assert _steps(rt, "w-nap") == [(0, "before", "step", '"before"'), (1, "sleep", "sleep", "null")]
    assert _events(rt, "w-nap") == [
        "execution_started",
        "execution_waiting",
        "execution_woken",
        "execution_succeeded",
    ]
    assert _row(rt, "w-nap")[0] == "SUCCEEDED"


def test_a_message_wakes_a_waiting_receive(flavour: Flavour, rt: Runtime, db: str) -> None:
    """A receive with an empty mailbox suspends the execution; a send wakes it, and the
    message is its recorded outcome, consumed at its position."""
    f = flavour

    @f.workflow("approval")
    def approval() -> Any:
        return (yield f.recv("approval", timeout=60))

    handle = f.start(approval, workflow_id="w-recv")
    wait_for(lambda: handle.status() == "WAITING")
    rt.send("w-recv", {"ok": True}, topic="approval")
    assert handle.result(timeout=15) == {"ok": True}
    assert _steps(rt, "w-recv") == [(0, "recv", "recv", '{"ok":true}')]
    with psycopg.connect(db) as conn:
        messages = conn.execute(
            "SELECT topic, payload, received_seq FROM stepstone.messages WHERE execution_id = %s",
            ["w-recv"],
        ).fetchall()
    assert messages == [("approval", '{"ok":true}', 0)]


def test_a_receive_timeout_is_recorded_and_raised_in_the_workflow(
    flavour: Flavour, rt: Runtime
) -> None:
    """A receive that gets nothing in its timeout raises RecvTimeout in the workflow,
    recorded as the wait's error."""
    f = flavour

    @f.workflow("impatient")
    def impatient() -> Any:
        try:
            yield f.recv("never", timeout=0.3)
        except RecvTimeout:
            return "timed out"
        return "received"

    assert f.call(impatient, workflow_id="w-timeout") == "timed out"
    (step,) = rt.store.list_steps("w-timeout")
    assert (step.kind, step.error["type"] if step.error else None) == (
        "recv",
        "stepstone.errors:RecvTimeout",
    )


def test_a_state_wait_is_woken_by_the_commit_of_the_key(flavour: Flavour, rt: Runtime) -> None:
    """A workflow waiting for another execution's state key is woken by the commit that
    sets it, and the value is the wait's recorded outcome."""
    f = flavour

    @f.workflow("stager")
    def stager(stage: str) -> Any:
        yield f.recv("go")
        stepstone.current().state["stage"] = stage
        yield f.recv("done")
        return "staged"

    @f.workflow("watcher")
    def watcher(target: str) -> Any:
        return ["saw", (yield f.wait_state(target, "stage", timeout=600))]

    order = f.start(stager, "shipped", workflow_id="w-stager")
    watch = f.start(watcher, "w-stager", workflow_id="w-watcher")
    wait_for(lambda: watch.status() == "WAITING" and order.status() == "WAITING")
    rt.send("w-stager", None, topic="go")
    assert watch.result(timeout=15) == ["saw", "shipped"]
    assert _steps(rt, "w-watcher") == [(0, "wait_state", "wait_state", '"shipped"')]
    rt.send("w-stager", None, topic="done")
    assert order.result(timeout=15) == "staged"


# -- children ------------------------------------------------------------------------------


def test_a_child_workflow_is_an_execution_of_its_own_recorded_in_the_parent(
    flavour: Flavour, rt: Runtime
) -> None:
    """A workflow called from a workflow runs as a child execution (its parent_id set);
    the parent records the call as a step of kind workflow, and replays it."""
    f = flavour

    @f.step("add")
    def add(n: int) -> int:
        return n + 1

    @f.workflow("kid")
    def kid(n: int) -> Any:
        return (yield add(n))

    @f.workflow("parent")
    def parent(n: int) -> Any:
        return (yield f.child(kid)(n)) * 10

    assert f.call(parent, 1, workflow_id="w-parent") == 20
    steps = rt.store.list_steps("w-parent")
    assert [(s.seq, s.kind, s.output) for s in steps] == [(0, "workflow", "2")]
    children = [e for e in rt.store.list_executions().items if e.parent_id == "w-parent"]
    assert [(c.workflow_name, c.status) for c in children] == [("kid", "SUCCEEDED")]
    assert f.call(parent, 1, workflow_id="w-parent") == 20


# -- queues --------------------------------------------------------------------------------


def test_an_enqueued_execution_runs_once_on_a_worker_of_its_queue(
    flavour: Flavour, rt: Runtime
) -> None:
    """An execution enqueued from outside is ENQUEUED, then started by the dispatcher of
    this process; the handle gets its result; the audit log says enqueued, dequeued."""
    f = flavour
    queue = rt.queue("parity")
    ran: list[str] = []

    @f.step("greet")
    def greet(name: str) -> str:
        ran.append(name)
        return f"hello {name}"

    @f.workflow("greeting")
    def greeting(name: str) -> Any:
        return (yield greet(name))

    handle = f.submit(queue, greeting, "ann", workflow_id="q-1")
    assert handle.result(timeout=15) == "hello ann"
    assert ran == ["ann"]
    events = _events(rt, "q-1")
    assert events[:2] == ["execution_enqueued", "execution_dequeued"]
    assert events[-1] == "execution_succeeded"


def test_a_workflow_enqueues_with_an_id_once_even_on_replay(flavour: Flavour, rt: Runtime) -> None:
    """Enqueuing from a workflow body with an explicit id enqueues one execution; doing
    it again (a replay) returns the same one."""
    f = flavour
    queue = rt.queue("inner")

    @f.workflow("inner")
    def inner(n: int) -> int:
        return n + 1

    @f.workflow("outer")
    def outer() -> Any:
        first = yield f.enqueue(queue, inner.with_options(workflow_id="q-inner"), 1)
        second = yield f.enqueue(queue, inner.with_options(workflow_id="q-inner"), 1)
        return [first, second]

    assert f.call(outer, workflow_id="q-outer") == ["q-inner", "q-inner"]
    assert rt.handle("q-inner").result(timeout=15) == 2
    assert [e.id for e in rt.store.list_executions().items if e.id == "q-inner"] == ["q-inner"]


# -- recovery from SIGKILL -----------------------------------------------------------------


def _worker(flavour: str, db: str, executor_id: str, mode: str, notes: Path) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "tests.parity.worker", flavour, db, executor_id, mode, str(notes)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_an_execution_killed_mid_step_is_taken_over_and_finished(
    flavour: Flavour, rt: Runtime, db: str, tmp_path: Path
) -> None:
    """A process killed with SIGKILL inside a step leaves its execution RUNNING; another
    executor takes it over once the lease expired, replays the committed step without
    running it, runs the interrupted one again, and finishes it."""
    killed = _worker(flavour.name, db, "worker-1", "run", tmp_path)
    assert killed.returncode == -9, killed.stderr
    served = _worker(flavour.name, db, "worker-2", "serve", tmp_path)
    assert served.stdout.strip() == "served", served.stderr
    effects = (tmp_path / "effects").read_text().splitlines()
    assert effects == ["one", "two", "two", "three"]
    rt.store.open(migrate=False)
    assert _steps(rt, "killed-7") == [
        (0, "one", "step", '"one"'),
        (1, "two", "step", '"two"'),
        (2, "three", "step", '"three"'),
    ]
    row = rt.store.get_execution("killed-7")
    assert row is not None
    assert (row.status, row.owner, row.output) == (
        "SUCCEEDED",
        "worker-2",
        '["one","two","three"]',
    )
    resumed = [
        (log.actor, log.details.get("reason"))
        for log in rt.store.list_logs("killed-7")
        if log.event == "execution_resumed"
    ]
    assert resumed == [("worker-2", "expired_lease")]


def test_a_transaction_step_killed_before_its_commit_writes_once(
    flavour: Flavour, rt: Runtime, db: str, tmp_path: Path
) -> None:
    """A process killed with SIGKILL inside a transaction step, after its INSERT and
    before its commit, leaves neither the row nor the step record; the executor that takes
    the execution over runs the step again, and the row and the record commit once."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE ledger (entry text NOT NULL)")
    killed = _worker(flavour.name, db, "worker-1", "run-tx", tmp_path)
    assert killed.returncode == -9, killed.stderr
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM ledger").fetchone() == (0,)
    served = _worker(flavour.name, db, "worker-2", "serve", tmp_path)
    assert served.stdout.strip() == "served", served.stderr
    assert (tmp_path / "effects").read_text().splitlines() == ["book", "book"]
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT entry FROM ledger").fetchall() == [("entry-1",)]
    rt.store.open(migrate=False)
    assert _steps(rt, "ledger-7") == [(0, "book", "transaction", "1")]
    row = rt.store.get_execution("ledger-7")
    assert row is not None
    assert (row.status, row.owner, row.output) == ("SUCCEEDED", "worker-2", "1")
