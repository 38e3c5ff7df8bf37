"""Durable waits: sleeps and receives record themselves, free their thread, and resume by
replay when due; messages are kept, ordered, deduplicated and received exactly once."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

import stepstone
from stepstone import (
    RecvTimeout,
    Runtime,
    SerializationError,
    StepOutsideWorkflow,
    UsageError,
    WorkflowCancelled,
    WorkflowNotFound,
)
from tests.support.runtime import FAST, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def waiter(db: str) -> Iterator[Runtime]:
    """A Runtime with one worker and a long sweep interval: what wakes a wait here is its
    own timer or a notification, not a periodic sweep."""
    runtime = Runtime(
        db,
        executor_id="waiter",
        workers=1,
        sweep_interval=30,
        lease_seconds=60,
        heartbeat_interval=5,
    )
    yield runtime
    runtime.shutdown()


def _row(db: str, workflow_id: str) -> tuple[Any, ...]:
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT status, owner, recoveries FROM stepstone.executions WHERE id = %s",
            [workflow_id],
        ).fetchone()
    assert row is not None
    return tuple(row)


def _events(rt: Runtime, workflow_id: str) -> list[str]:
    return [log.event for log in rt.store.list_logs(workflow_id)]


def _messages(db: str, workflow_id: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db) as conn:
        return conn.execute(
            "SELECT topic, payload, received_seq FROM stepstone.messages "
            "WHERE execution_id = %s ORDER BY id",
            [workflow_id],
        ).fetchall()


# -- sleeping -------------------------------------------------------------------------------


def test_a_sleeping_workflow_holds_no_worker_and_wakes_on_time(waiter: Runtime, db: str) -> None:
    """With one worker, a workflow sleeping 1 s is WAITING with no owner, another workflow
    runs meanwhile, and the sleeper finishes after its time, by its own timer (no periodic
    sweep runs in that time); a wake is not a recovery."""
    after: list[float] = []

    @waiter.workflow()
    def sleeper() -> str:
        stepstone.sleep(1.0)
        after.append(time.monotonic())
        return "rested"

    @waiter.workflow()
    def quick() -> str:
        return "quick"

    waiter.launch()
    started = time.monotonic()
    handle = waiter.start(sleeper.with_options(workflow_id="sleeper-1"))
    wait_for(lambda: handle.status() == "WAITING")
    assert _row(db, "sleeper-1") == ("WAITING", None, 0)
    assert waiter.start(quick.with_options(workflow_id="quick-1")).result(timeout=5) == "quick"
    assert handle.result(timeout=10) == "rested"
    assert 1.0 <= after[0] - started < 5
    assert _row(db, "sleeper-1") == ("SUCCEEDED", "waiter", 0)
    assert _events(waiter, "sleeper-1") == [
        "execution_started",
        "execution_waiting",
        "execution_woken",
        "execution_succeeded",
    ]
    (step,) = waiter.store.list_steps("sleeper-1")
    assert (step.name, step.kind, step.output) == ("sleep", "sleep", "null")


def test_a_sleep_already_over_does_not_suspend(rt: Runtime) -> None:
    """sleep(0) and sleep_until a past time complete in the same commit, without waiting."""

    @rt.workflow()
    def hurried() -> str:
        stepstone.sleep(0)
        stepstone.sleep(dt.timedelta(0))
        stepstone.sleep_until(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        return "done"

    rt.launch()
    assert hurried.with_options(workflow_id="hurried-1")() == "done"
    assert "execution_waiting" not in _events(rt, "hurried-1")
    assert [s.kind for s in rt.store.list_steps("hurried-1")] == ["sleep"] * 3


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: stepstone.sleep(-1), "duration from 0"),
        (lambda: stepstone.sleep(float("nan")), "finite number"),
        (lambda: stepstone.sleep(float("inf")), "finite number"),
        (lambda: stepstone.sleep(True), "finite number"),
        (lambda: stepstone.sleep("5"), "finite number"),  # type: ignore[arg-type]
        (lambda: stepstone.sleep(1e12), "100 years"),
        (lambda: stepstone.sleep_until(dt.datetime(2030, 1, 1)), "aware datetime"),
        (lambda: stepstone.recv(timeout=-3), "duration from 0"),
        (lambda: stepstone.recv(topic=7), "topic must be a string"),  # type: ignore[arg-type]
        (lambda: stepstone.recv(topic="a\x00b"), "NUL"),
    ],
)
def test_bad_waits_are_refused_and_write_nothing(rt: Runtime, call: Any, message: str) -> None:
    """A wait with a bad duration, deadline or topic raises UsageError naming the value;
    nothing is recorded for it."""
    seen: list[str] = []

    @rt.workflow()
    def bad() -> None:
        try:
            call()
        except UsageError as exc:
            seen.append(str(exc))

    rt.launch()
    bad.with_options(workflow_id="bad-1")()
    assert len(seen) == 1
    assert message in seen[0]
    assert rt.store.list_steps("bad-1") == []


def test_waits_outside_a_workflow_or_inside_a_step_are_refused(rt: Runtime) -> None:
    """A wait needs a workflow body: outside one StepOutsideWorkflow, in a step's body
    UsageError."""

    @rt.step()
    def napping_step() -> None:
        stepstone.sleep(1)

    @rt.workflow()
    def flow() -> str:
        try:
            napping_step()
        except UsageError as exc:
            return str(exc)
        return "slept"

    rt.launch()
    with pytest.raises(StepOutsideWorkflow):
        stepstone.sleep(1)
    with pytest.raises(StepOutsideWorkflow):
        stepstone.recv()
    assert "inside the body of a step" in flow.with_options(workflow_id="in-step")()


# -- messages -------------------------------------------------------------------------------


def test_a_message_sent_before_the_receive_is_kept_and_received_at_once(
    rt: Runtime, db: str
) -> None:
    """Messages sent before the workflow reaches its receives wait in the mailbox; they are
    received in send order, per topic, without suspending."""
    gate = threading.Event()

    @rt.workflow()
    def reader() -> list[Any]:
        gate.wait(10)
        return [stepstone.recv("b"), stepstone.recv("a"), stepstone.recv("a"), stepstone.recv("b")]

    rt.launch()
    handle = rt.start(reader.with_options(workflow_id="reader-1"))
    for topic, value in [("a", 1), ("b", "x"), ("a", None), ("b", {"k": [1, 2]})]:
        rt.send("reader-1", value, topic=topic)
    gate.set()
    assert handle.result(timeout=10) == ["x", 1, None, {"k": [1, 2]}]
    assert "execution_waiting" not in _events(rt, "reader-1")
    assert [m[2] for m in _messages(db, "reader-1")] == [1, 0, 2, 3]


def test_a_message_wakes_a_waiting_receive_at_once(waiter: Runtime, db: str) -> None:
    """A receive with nothing in its mailbox suspends (WAITING, no owner, no thread); a
    send wakes it through a notification, long before any periodic sweep."""

    @waiter.workflow()
    def approval() -> Any:
        return stepstone.recv("approval", timeout=60)

    waiter.launch()
    handle = waiter.start(approval.with_options(workflow_id="approval-1"))
    wait_for(lambda: handle.status() == "WAITING")
    sent = time.monotonic()
    waiter.send("approval-1", {"ok": True}, topic="approval")
    assert handle.result(timeout=10) == {"ok": True}
    assert time.monotonic() - sent < 5  # the sweep interval is 30 s
    assert _messages(db, "approval-1") == [("approval", '{"ok":true}', 0)]


def test_a_receive_timeout_is_recorded_and_replays_the_same(rt: Runtime) -> None:
    """A receive that times out raises RecvTimeout (distinct from a None message), records
    it, and a replay of the execution raises the same error at the same place."""

    @rt.workflow()
    def patient() -> list[Any]:
        seen: list[Any] = []
        rt.send(stepstone.current().workflow_id, None, topic="n")
        seen.append(stepstone.recv("n", timeout=0.5))
        try:
            stepstone.recv("silence", timeout=0.3)
        except RecvTimeout as exc:
            seen.append(f"timeout: {exc}")
        return seen

    rt.launch()
    expected = [None, 'timeout: no message on topic "silence" arrived within 0.3 s']
    assert patient.with_options(workflow_id="patient-1")() == expected
    steps = rt.store.list_steps("patient-1")
    assert [(s.kind, s.output) for s in steps] == [
        ("send", "null"),
        ("recv", "null"),
        ("recv", None),
    ]
    assert steps[2].error is not None
    assert steps[2].error["type"] == "stepstone.errors:RecvTimeout"
    replay = rt.fork("patient-1", len(steps), new_workflow_id="patient-2")
    assert replay.result(timeout=10) == expected


def test_the_same_idempotency_key_stores_one_message(rt: Runtime, db: str) -> None:
    """Sending twice with one idempotency key stores one message, also after it was read."""

    @rt.workflow()
    def once() -> list[Any]:
        first = stepstone.recv("pay")
        try:
            second = stepstone.recv("pay", timeout=0.5)
        except RecvTimeout:
            second = "no second message"
        return [first, second]

    rt.launch()
    handle = rt.start(once.with_options(workflow_id="once-1"))
    for _ in range(3):
        rt.send("once-1", "paid", topic="pay", idempotency_key="mail-7")
    assert handle.result(timeout=10) == ["paid", "no second message"]
    assert len(_messages(db, "once-1")) == 1


def test_sending_to_an_unknown_or_ended_execution_is_refused(rt: Runtime, db: str) -> None:
    """A message to an unknown id raises WorkflowNotFound; to an ended execution a
    UsageError naming its status; an unserializable or oversized message raises
    SerializationError; nothing is stored."""

    @rt.workflow()
    def short() -> str:
        return "over"

    rt.launch()
    short.with_options(workflow_id="short-1")()
    with pytest.raises(WorkflowNotFound, match="'nobody'"):
        rt.send("nobody", 1)
    with pytest.raises(UsageError, match=r"has ended \(SUCCEEDED\)"):
        rt.send("short-1", 1)
    with pytest.raises(SerializationError):
        rt.send("short-1", object())
    with pytest.raises(UsageError, match="topic"):
        rt.send("short-1", 1, topic="\x00")
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM stepstone.messages").fetchone() == (0,)


def test_a_send_in_a_workflow_is_sent_once_even_on_replay(rt: Runtime, db: str) -> None:
    """A workflow's send is recorded like a step: a replay does not send it again."""

    @rt.workflow()
    def inbox() -> Any:
        return stepstone.recv("note", timeout=30)

    @rt.workflow()
    def sender() -> str:
        rt.send("inbox-1", "hello", topic="note")
        return "sent"

    rt.launch()
    box = rt.start(inbox.with_options(workflow_id="inbox-1"))
    assert sender.with_options(workflow_id="sender-1")() == "sent"
    assert box.result(timeout=10) == "hello"
    (step,) = rt.store.list_steps("sender-1")
    assert (step.name, step.kind) == ("send", "send")
    assert rt.fork("sender-1", 1, new_workflow_id="sender-2").result(timeout=10) == "sent"
    assert len(_messages(db, "inbox-1")) == 1


def test_a_send_in_the_callers_transaction_follows_its_commit(rt: Runtime, db: str) -> None:
    """With conn=, a message is sent if the caller commits and not at all if it rolls back."""

    @rt.workflow()
    def inbox() -> Any:
        return stepstone.recv(timeout=30)

    rt.launch()
    handle = rt.start(inbox.with_options(workflow_id="tx-inbox"))
    with psycopg.connect(db) as conn:
        rt.send("tx-inbox", "rolled back", conn=conn)
        conn.rollback()
        rt.send("tx-inbox", "committed", conn=conn)
        conn.commit()
    assert handle.result(timeout=10) == "committed"
    assert [m[1] for m in _messages(db, "tx-inbox")] == ['"committed"']


def test_cancelling_a_waiting_execution_ends_it(waiter: Runtime, db: str) -> None:
    """A WAITING execution can be cancelled: it ends CANCELLED and its callers get
    WorkflowCancelled; it is never woken."""

    @waiter.workflow()
    def forever() -> None:
        stepstone.recv("never")

    waiter.launch()
    handle = waiter.start(forever.with_options(workflow_id="forever-1"))
    wait_for(lambda: handle.status() == "WAITING")
    waiter.cancel("forever-1")
    with pytest.raises(WorkflowCancelled):
        handle.result(timeout=10)
    with pytest.raises(UsageError, match="CANCELLED"):
        waiter.send("forever-1", "late")
    assert _row(db, "forever-1")[0] == "CANCELLED"


def test_two_executors_wake_each_due_execution_once(db: str) -> None:
    """Two executors sweeping the same due executions: each is woken and finished by one
    of them; no body after the wait runs twice."""
    runs: list[str] = []
    lock = threading.Lock()
    runtimes = [Runtime(db, executor_id=f"pair-{i}", workers=4, **FAST) for i in range(2)]
    for runtime in runtimes:

        @runtime.step(name="after")
        def after(workflow_id: str) -> None:
            with lock:
                runs.append(workflow_id)

        @runtime.workflow(name="nap")
        def nap() -> None:
            stepstone.sleep(0.5)
            after(stepstone.current().workflow_id)

    for runtime in runtimes:
        runtime.launch()
    try:
        first = runtimes[0]
        nap_workflow = first._engine.registry.find("nap", "1")
        assert nap_workflow is not None
        handles = [
            first.start(nap_workflow.with_options(workflow_id=f"nap-{i}")) for i in range(12)
        ]
        for handle in handles:
            handle.result(timeout=20)
        assert sorted(runs) == sorted(h.workflow_id for h in handles)
        with psycopg.connect(db) as conn:
            owners = conn.execute(
                "SELECT DISTINCT owner FROM stepstone.executions WHERE id LIKE 'nap-%%'"
            ).fetchall()
        assert {o[0] for o in owners} <= {"pair-0", "pair-1"}
    finally:
        for runtime in runtimes:
            runtime.shutdown()


# -- notifications ----------------------------------------------------------------------------


def _listening(db: str) -> list[int]:
    """The server process ids of the sessions LISTENing in this test's database."""
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND query = 'LISTEN stepstone'"
        ).fetchall()
    return [int(row[0]) for row in rows]


def test_without_notify_no_session_listens_and_the_sweep_wakes_a_receive(db: str) -> None:
    """With notify=False (PgBouncer transaction pooling) the executor opens no LISTEN
    session, and a message to a waiting receive still wakes it, found by the sweep's poll."""
    runtime = Runtime(db, executor_id="poller", workers=1, notify=False, **FAST)

    @runtime.workflow()
    def approval() -> Any:
        return stepstone.recv("approval")

    with runtime:
        handle = runtime.start(approval.with_options(workflow_id="polled-1"))
        wait_for(lambda: handle.status() == "WAITING")
        runtime.send("polled-1", "yes", topic="approval")
        assert handle.result(timeout=30) == "yes"
        assert _listening(db) == []


def test_after_the_listener_reconnects_due_work_is_fetched_at_once(db: str) -> None:
    """A message sent while the LISTEN session is down (its notification lost) wakes the
    receive once the listener is back, by the sweep it starts, not at the next periodic
    sweep (600 s away)."""
    runtime = Runtime(
        db,
        executor_id="relistener",
        workers=1,
        sweep_interval=600,
        lease_seconds=60,
        heartbeat_interval=5,
    )

    @runtime.workflow()
    def approval() -> Any:
        return stepstone.recv("approval")

    with runtime:
        handle = runtime.start(approval.with_options(workflow_id="relisten-1"))
        wait_for(lambda: handle.status() == "WAITING")
        (listener,) = _listening(db)
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", [listener])
        wait_for(lambda: listener not in _listening(db))
        runtime.send("relisten-1", "yes", topic="approval")  # its NOTIFY reaches no one
        assert handle.result(timeout=60) == "yes"
        (again,) = _listening(db)
        assert again != listener
