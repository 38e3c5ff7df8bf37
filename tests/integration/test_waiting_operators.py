"""Cancel, resume and fork of WAITING executions (sleeping, receiving, waiting for a child),
from the Runtime and from the command line.

A cancel ends a waiting execution and its waiting children at once, and nothing wakes them
afterwards. A resume runs it again from its last recorded step: the wait was never recorded
(a wait's step row is written only when it is over), so the replay reaches it again and
records it from scratch (a sleep of n seconds sleeps n seconds from the resume), and
messages sent before the cancel and not received are received then. A WAITING execution
resumes by itself when due: resuming it is refused. A fork from the pending wait's position
replays the copied steps and reaches the wait itself, with its own mailbox.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

import stepstone
from stepstone import Runtime, UsageError, WorkflowCancelled
from tests.support.cli import run_cli as _cli
from tests.support.runtime import wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator

    from stepstone.runtime.definitions import Workflow


class Flows:
    """The workflows of these tests, registered on one Runtime; `bodies` counts step body
    runs by name."""

    def __init__(self, runtime: Runtime) -> None:
        self.bodies: dict[str, int] = {}

        @runtime.step(name="prepare")
        def prepare(tag: str) -> str:
            self._ran("prepare")
            return f"prepared {tag}"

        @runtime.step(name="finish")
        def finish(value: Any) -> str:
            self._ran("finish")
            return f"finished with {value!r}"

        @runtime.workflow(name="napper")
        def napper(seconds: float) -> str:
            stepstone.current().state["stage"] = "napping"
            prepare("nap")
            stepstone.sleep(seconds)
            return finish("rested")

        @runtime.workflow(name="reader")
        def reader() -> list[Any]:
            stepstone.current().state["stage"] = "reading"
            prepare("read")
            first = stepstone.recv("first")
            second = stepstone.recv("second")
            return [first, second, finish(first)]

        @runtime.workflow(name="child")
        def child() -> Any:
            return stepstone.recv("go")

        @runtime.workflow(name="parent")
        def parent() -> str:
            prepare("parent")
            return finish(child())

        self.napper: Workflow[[float], str] = napper
        self.reader: Workflow[[], list[Any]] = reader
        self.parent: Workflow[[], str] = parent

    def _ran(self, name: str) -> None:
        self.bodies[name] = self.bodies.get(name, 0) + 1


def _runtime(db: str, executor_id: str = "waiter") -> Runtime:
    # One worker and a long sweep interval: what wakes a wait here is its own timer, a
    # notification, or the sweep a test asks for.
    return Runtime(
        db,
        executor_id=executor_id,
        workers=1,
        sweep_interval=30,
        lease_seconds=60,
        heartbeat_interval=5,
    )


@pytest.fixture
def worker(db: str) -> Iterator[Runtime]:
    """A Runtime with one worker and a 30 s sweep interval, not launched yet."""
    runtime = _runtime(db)
    yield runtime
    runtime.shutdown()


def _row(db: str, workflow_id: str) -> dict[str, Any]:
    with psycopg.connect(db) as conn:
        cursor = conn.execute(
            "SELECT status, owner, epoch, wake_at, waiting, waits_for, updated_at "
            "FROM stepstone.executions WHERE id = %s",
            [workflow_id],
        )
        row = cursor.fetchone()
        assert row is not None, workflow_id
        names = [column.name for column in cursor.description or ()]
    return dict(zip(names, row, strict=True))


def _status(db: str, workflow_id: str) -> str:
    return str(_row(db, workflow_id)["status"])


def _waiting(db: str, workflow_id: str) -> bool:
    return _status(db, workflow_id) == "WAITING"


def _events(db: str, workflow_id: str) -> list[str]:
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT event FROM stepstone.logs WHERE execution_id = %s ORDER BY id", [workflow_id]
        ).fetchall()
    return [row[0] for row in rows]


def _messages(db: str, workflow_id: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db) as conn:
        return conn.execute(
            "SELECT topic, payload, received_seq FROM stepstone.messages "
            "WHERE execution_id = %s ORDER BY id",
            [workflow_id],
        ).fetchall()


def _steps(rt: Runtime, workflow_id: str) -> list[tuple[str, str]]:
    return [(s.name, s.kind) for s in rt.store.list_steps(workflow_id)]


def _db_now(db: str) -> dt.datetime:
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def _make_due(db: str, workflow_id: str) -> None:
    """Bring a WAITING sleep's time forward to now (the tests do not sleep for real)."""
    with psycopg.connect(db) as conn:
        conn.execute(
            "UPDATE stepstone.executions SET wake_at = now() WHERE id = %s AND status = 'WAITING'",
            [workflow_id],
        )


def _sweep(rt: Runtime) -> None:
    sweeper = rt._sweeper
    assert sweeper is not None
    sweeper.sweep_once()


def _swept(rt: Runtime) -> bool:
    _sweep(rt)
    return True


# -- cancel -----------------------------------------------------------------------------------


def test_cancel_of_a_sleeping_execution_ends_it_and_its_timer_wakes_nothing(
    worker: Runtime, db: str
) -> None:
    """A sleeping execution cancelled ends CANCELLED at once (no due time, nothing it waits
    for), its callers get WorkflowCancelled, and once its sleep would have ended a sweep
    wakes nothing: no step after the sleep runs."""
    flows = Flows(worker)
    worker.launch()
    handle = worker.start(flows.napper.with_options(workflow_id="nap-1"), 0.5)
    wait_for(lambda: _waiting(db, "nap-1"))
    due = _row(db, "nap-1")["wake_at"]
    worker.cancel("nap-1")
    row = _row(db, "nap-1")
    assert (row["status"], row["wake_at"], row["waiting"]) == ("CANCELLED", None, None)
    with pytest.raises(WorkflowCancelled):
        handle.result(timeout=10)
    wait_for(lambda: _db_now(db) > due)
    _sweep(worker)
    assert _status(db, "nap-1") == "CANCELLED"
    assert flows.bodies == {"prepare": 1}
    assert _steps(worker, "nap-1") == [("prepare", "step")]
    assert "execution_woken" not in _events(db, "nap-1")


def test_cancel_of_a_receiving_execution_refuses_later_messages(worker: Runtime, db: str) -> None:
    """A receiving execution cancelled ends CANCELLED; a later send raises UsageError saying
    it has ended and stores nothing; a message it had not received yet stays unread."""
    flows = Flows(worker)
    worker.launch()
    handle = worker.start(flows.reader.with_options(workflow_id="read-1"))
    wait_for(lambda: _waiting(db, "read-1"))
    worker.send("read-1", "early", topic="second")
    worker.cancel("read-1")
    with pytest.raises(WorkflowCancelled):
        handle.result(timeout=10)
    with pytest.raises(UsageError, match=r"has ended \(CANCELLED\)"):
        worker.send("read-1", "late", topic="first")
    _sweep(worker)
    assert _status(db, "read-1") == "CANCELLED"
    assert _messages(db, "read-1") == [("second", '"early"', None)]
    assert "execution_woken" not in _events(db, "read-1")


def test_cancel_of_a_parent_waiting_for_its_child_cancels_both(worker: Runtime, db: str) -> None:
    """A parent WAITING for its child (itself WAITING in a receive) cancelled: both end
    CANCELLED at once, callers of either get WorkflowCancelled, a message to the child is
    refused, and neither is woken."""
    flows = Flows(worker)
    worker.launch()
    handle = worker.start(flows.parent.with_options(workflow_id="p-1"))
    wait_for(lambda: _waiting(db, "p-1") and _waiting(db, "p-1/1"))
    assert _row(db, "p-1")["waits_for"] == "p-1/1"
    worker.cancel("p-1")
    for workflow_id in ("p-1", "p-1/1"):
        row = _row(db, workflow_id)
        assert (row["status"], row["wake_at"], row["waiting"], row["waits_for"]) == (
            "CANCELLED",
            None,
            None,
            None,
        )
    with pytest.raises(WorkflowCancelled):
        handle.result(timeout=10)
    with pytest.raises(WorkflowCancelled):
        worker.handle("p-1/1").result(timeout=10)
    with pytest.raises(UsageError, match=r"has ended \(CANCELLED\)"):
        worker.send("p-1/1", "too late", topic="go")
    _sweep(worker)
    assert (_status(db, "p-1"), _status(db, "p-1/1")) == ("CANCELLED", "CANCELLED")
    assert flows.bodies == {"prepare": 1}
    assert "execution_woken" not in _events(db, "p-1")


# -- resume -----------------------------------------------------------------------------------


def test_resume_after_a_cancelled_sleep_sleeps_again_from_the_start(
    worker: Runtime, db: str
) -> None:
    """A sleep cancelled and resumed: the replay reuses the recorded step and records the
    sleep again from scratch (its full length from the resume, a new due time), WAITING
    again; when due it finishes, every step body having run once."""
    flows = Flows(worker)
    worker.launch()
    worker.start(flows.napper.with_options(workflow_id="nap-2"), 3600)
    wait_for(lambda: _waiting(db, "nap-2"))
    first = _row(db, "nap-2")
    worker.cancel("nap-2")
    handle = worker.resume("nap-2")
    wait_for(lambda: _waiting(db, "nap-2"))
    again = _row(db, "nap-2")
    assert again["wake_at"] > first["wake_at"]
    assert again["waiting"]["seq"] == first["waiting"]["seq"] == 1
    assert again["waiting"]["started_at"] > first["waiting"]["started_at"]
    assert again["wake_at"] - dt.datetime.fromisoformat(again["waiting"]["started_at"]) >= (
        dt.timedelta(hours=1)
    )
    assert again["epoch"] > first["epoch"]
    _make_due(db, "nap-2")
    _sweep(worker)
    assert handle.result(timeout=10) == "finished with 'rested'"
    assert flows.bodies == {"prepare": 1, "finish": 1}
    assert _steps(worker, "nap-2") == [("prepare", "step"), ("sleep", "sleep"), ("finish", "step")]
    assert _events(db, "nap-2") == [
        "execution_started",
        "execution_waiting",
        "execution_cancelled",
        "execution_resumed",
        "execution_resumed",
        "execution_waiting",
        "execution_woken",
        "execution_succeeded",
    ]


def test_resume_after_a_cancelled_receive_receives_what_was_sent_before_the_cancel(
    db: str,
) -> None:
    """Messages sent to a receiving execution before it was cancelled and not received (on
    the topic it waited on, and on a later one) are received after a resume, at once,
    without waiting again."""
    first = _runtime(db)
    Flows(first)
    first.launch()
    reader = first._engine.registry.find("reader", "1")
    assert reader is not None
    first.start(reader.with_options(workflow_id="read-2"))
    wait_for(lambda: _waiting(db, "read-2"))
    first.shutdown()  # nothing runs the reader while it is made due and cancelled
    with _runtime(db, "operator") as operator:
        operator.send("read-2", "a", topic="first")
        operator.send("read-2", "b", topic="second")
        operator.cancel("read-2")
    assert _messages(db, "read-2") == [("first", '"a"', None), ("second", '"b"', None)]
    second = _runtime(db, "waiter-2")
    flows = Flows(second)
    with second:
        assert second.resume("read-2").result(timeout=10) == ["a", "b", "finished with 'a'"]
    assert flows.bodies == {"finish": 1}
    assert _messages(db, "read-2") == [("first", '"a"', 1), ("second", '"b"', 2)]
    assert _events(db, "read-2").count("execution_waiting") == 1


def test_resume_of_a_parent_cancelled_while_waiting_for_its_child_resumes_the_child(
    worker: Runtime, db: str
) -> None:
    """A parent and its child cancelled together while waiting: resuming the parent runs
    the child again too (it was cancelled only because the parent was), so the parent
    waits for it again and both finish when the child's message comes."""
    flows = Flows(worker)
    worker.launch()
    worker.start(flows.parent.with_options(workflow_id="p-2"))
    wait_for(lambda: _waiting(db, "p-2") and _waiting(db, "p-2/1"))
    worker.cancel("p-2")
    handle = worker.resume("p-2")
    wait_for(lambda: _waiting(db, "p-2"))
    # The child is RUNNING with no owner until a sweep claims it (the fixture's own sweeps
    # are 30 s apart).
    wait_for(lambda: _swept(worker) and _waiting(db, "p-2/1"))
    assert _row(db, "p-2")["waits_for"] == "p-2/1"
    worker.send("p-2/1", "go!", topic="go")
    assert handle.result(timeout=10) == "finished with 'go!'"
    assert worker.handle("p-2/1").result(timeout=10) == "go!"
    assert flows.bodies == {"prepare": 1, "finish": 1}
    resumed = [log.details for log in worker.store.list_logs("p-2/1")]
    assert {"reason": "parent_resumed", "ancestor": "p-2"}.items() <= resumed[3].items()
    assert _row(db, "p-2/1")["epoch"] > 3  # claimed by the sweep after the resume


def test_resume_of_a_waiting_execution_is_refused_and_changes_nothing(
    worker: Runtime, db: str
) -> None:
    """Resuming a WAITING execution raises UsageError saying it is WAITING, resumes by itself
    when due, and how to restart it now (cancel, then resume); nothing changes."""
    flows = Flows(worker)
    worker.launch()
    worker.start(flows.napper.with_options(workflow_id="nap-3"), 3600)
    wait_for(lambda: _waiting(db, "nap-3"))
    before = (_row(db, "nap-3"), _events(db, "nap-3"))
    with pytest.raises(UsageError, match=r"'nap-3': it is WAITING, and resumes by itself") as exc:
        worker.resume("nap-3")
    assert "cancel it, then resume it" in str(exc.value)
    assert (_row(db, "nap-3"), _events(db, "nap-3")) == before


# -- fork -------------------------------------------------------------------------------------


def test_fork_of_a_receiving_execution_at_its_pending_wait_waits_on_its_own(
    worker: Runtime, db: str
) -> None:
    """A fork of a WAITING execution from its pending wait's position replays the copied
    step (no body runs again) with the state checkpointed there, reaches the receive itself
    and waits, with its own empty mailbox; each finishes on its own messages, and the
    source stays WAITING, untouched, meanwhile."""
    flows = Flows(worker)
    worker.launch()
    source = worker.start(flows.reader.with_options(workflow_id="read-3"))
    wait_for(lambda: _waiting(db, "read-3"))
    worker.send("read-3", "source's", topic="second")
    before = _row(db, "read-3")
    assert len(worker.store.list_steps("read-3")) == 1  # prepare; the receive is pending
    fork = worker.fork("read-3", 1, new_workflow_id="read-3-fork")
    wait_for(lambda: _waiting(db, "read-3-fork"))
    assert _row(db, "read-3-fork")["waiting"]["topic"] == "first"
    assert fork.get_state() == {"stage": "reading"}
    assert _messages(db, "read-3-fork") == []
    worker.send("read-3-fork", "f1", topic="first")
    worker.send("read-3-fork", "f2", topic="second")
    assert fork.result(timeout=10) == ["f1", "f2", "finished with 'f1'"]
    assert _row(db, "read-3") == before
    assert _messages(db, "read-3") == [("second", '"source\'s"', None)]
    worker.send("read-3", "s1", topic="first")
    assert source.result(timeout=10) == ["s1", "source's", "finished with 's1'"]
    assert flows.bodies == {"prepare": 1, "finish": 2}


def test_fork_of_a_sleeping_execution_before_its_wait_runs_from_there(
    worker: Runtime, db: str
) -> None:
    """A fork of a sleeping execution from step 0 runs the first step's body again, then
    sleeps its own full sleep; the source's sleep is not touched."""
    flows = Flows(worker)
    worker.launch()
    worker.start(flows.napper.with_options(workflow_id="nap-4"), 3600)
    wait_for(lambda: _waiting(db, "nap-4"))
    before = _row(db, "nap-4")
    worker.fork("nap-4", 0, new_workflow_id="nap-4-fork")
    wait_for(lambda: _waiting(db, "nap-4-fork"))
    assert flows.bodies == {"prepare": 2}
    assert _row(db, "nap-4-fork")["wake_at"] > before["wake_at"]
    assert _row(db, "nap-4") == before


def test_fork_past_a_pending_wait_is_refused(worker: Runtime, db: str) -> None:
    """Forking a WAITING execution from past its pending wait (no step recorded there yet)
    raises UsageError naming the positions allowed, and creates nothing."""
    flows = Flows(worker)
    worker.launch()
    worker.start(flows.reader.with_options(workflow_id="read-4"))
    wait_for(lambda: _waiting(db, "read-4"))
    before = _row(db, "read-4")
    with pytest.raises(UsageError, match="'read-4' from step 2: it has 1 recorded steps"):
        worker.fork("read-4", 2, new_workflow_id="read-4-fork")
    assert _row(db, "read-4") == before
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM stepstone.executions").fetchone() == (1,)


# -- the command line -------------------------------------------------------------------------


def _parked(db: str, workflow: str, workflow_id: str, *args: Any) -> None:
    """Start `workflow` as `workflow_id`, let it reach its wait, and shut the Runtime down,
    so that nothing but the command touches it."""
    runtime = _runtime(db, "parker")
    Flows(runtime)
    with runtime:
        found = runtime._engine.registry.find(workflow, "1")
        assert found is not None
        runtime.start(found.with_options(workflow_id=workflow_id), *args)
        wait_for(lambda: _waiting(db, workflow_id))


def test_cli_cancel_of_a_sleeping_execution_ends_it(db: str) -> None:
    """`stepstone cancel` of a sleeping execution says it was WAITING and that nothing wakes
    it any more; it is CANCELLED with no due time."""
    _parked(db, "napper", "nap-5", 3600)
    done = _cli(db, "cancel", "nap-5")
    assert done.returncode == 0, done.stderr
    assert "cancelled 'nap-5' (it was WAITING): nothing wakes it any more" in done.stdout
    row = _row(db, "nap-5")
    assert (row["status"], row["wake_at"], row["waiting"]) == ("CANCELLED", None, None)


def test_cli_resume_of_a_waiting_execution_is_refused(db: str) -> None:
    """`stepstone resume` of a WAITING execution fails (exit 1) with one line saying it is
    WAITING and to cancel it first; nothing changes."""
    _parked(db, "reader", "read-5")
    before = _row(db, "read-5")
    done = _cli(db, "resume", "read-5")
    assert done.returncode == 1, done.stdout
    assert done.stderr.count("\n") == 1, done.stderr
    assert "'read-5': it is WAITING" in done.stderr
    assert "cancel it, then resume it" in done.stderr
    assert _row(db, "read-5") == before


def test_cli_resume_after_cancel_and_fork_of_a_waiting_execution_wait_again(db: str) -> None:
    """After `stepstone cancel` and `stepstone resume` of a receiving execution, and
    `stepstone fork` of another at its pending receive, both are RUNNING with no owner; an
    executor claims them, and each waits in its receive again and finishes on its message."""
    _parked(db, "reader", "read-6")
    _parked(db, "reader", "read-7")
    assert _cli(db, "cancel", "read-6").returncode == 0
    resumed = _cli(db, "resume", "read-6")
    assert resumed.returncode == 0, resumed.stderr
    forked = _cli(db, "fork", "read-7", "--from-step", "1", "--new-id", "read-7-fork")
    assert forked.returncode == 0, forked.stderr
    assert (_row(db, "read-6")["owner"], _row(db, "read-7-fork")["owner"]) == (None, None)
    assert _status(db, "read-7") == "WAITING"
    runtime = _runtime(db, "claimer")
    flows = Flows(runtime)
    with runtime:
        wait_for(lambda: _waiting(db, "read-6") and _waiting(db, "read-7-fork"))
        for workflow_id in ("read-6", "read-7-fork"):
            runtime.send(workflow_id, workflow_id, topic="first")
            runtime.send(workflow_id, 2, topic="second")
            expected = [workflow_id, 2, f"finished with {workflow_id!r}"]
            assert runtime.handle(workflow_id).result(timeout=10) == expected
    assert flows.bodies == {"finish": 2}
    assert _status(db, "read-7") == "WAITING"
