"""Control flow of the engine: a child's outcome reaches its parent as an ordinary error, a
workflow waiting for another execution holds no worker, what a BaseException in a step
does, steps from other threads, and cancellations that stop bodies before they run."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

import stepstone
from stepstone import Runtime, UsageError, WorkflowCancelled, WorkflowFailed
from stepstone.persistence import StartRequest, Store
from tests.support.runtime import FAST, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


def _row(db: str, workflow_id: str) -> tuple[Any, ...]:
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT status, owner, recoveries FROM stepstone.executions WHERE id = %s",
            [workflow_id],
        ).fetchone()
    assert row is not None
    return tuple(row)


def _ghost(db: str, workflow_id: str, name: str, *, expired: bool) -> None:
    """An execution of `name` left RUNNING by executor 'ghost' (alive, or its lease expired)."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO stepstone.executors (id, hostname, pid, lease_seconds, heartbeat_at) "
            "VALUES ('ghost', 'elsewhere', 1, 1, now() - %s::interval) "
            "ON CONFLICT (id) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at",
            ["1 hour" if expired else "0 seconds"],
        )
    store = Store(db)
    store.open(migrate=False)
    try:
        inputs = store.encode({"args": [], "kwargs": {}}, "inputs")
        store.start_execution(StartRequest(workflow_id, name, "1", inputs, "ghost"))
    finally:
        store.close()


def _expire_ghost(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "UPDATE stepstone.executors SET heartbeat_at = now() - interval '1 hour' "
            "WHERE id = 'ghost'"
        )


@pytest.fixture
def solo(db: str) -> Iterator[Runtime]:
    """A Runtime with one worker thread and short leases."""
    runtime = Runtime(db, executor_id="solo", workers=1, **FAST)
    yield runtime
    runtime.shutdown()


# -- 1. a child's outcome is the parent's ordinary exception -------------------------------


def test_a_cancelled_child_reaches_its_parent_as_an_error_it_catches(rt: Runtime) -> None:
    """A child cancelled while its parent runs it raises WorkflowCancelled in the parent,
    which catches it and ends SUCCEEDED; the parent is not left RUNNING."""
    inside, go = threading.Event(), threading.Event()

    @rt.step()
    def slow() -> str:
        inside.set()
        go.wait(10)
        return "done"

    @rt.workflow()
    def child() -> str:
        return slow()

    @rt.workflow()
    def parent() -> str:
        try:
            return child.with_options(workflow_id="kid-1")()
        except WorkflowCancelled as exc:
            return f"child cancelled: {exc.workflow_id}"

    rt.launch()
    handle = rt.start(parent.with_options(workflow_id="mom-1"))
    assert inside.wait(10)
    rt.cancel("kid-1")
    go.set()
    assert handle.result(timeout=10) == "child cancelled: kid-1"
    assert handle.status() == "SUCCEEDED"
    assert rt.handle("kid-1").status() == "CANCELLED"
    child_step = rt.store.list_steps("mom-1")[0]
    assert child_step.error is not None
    assert child_step.error["type"] == "stepstone.errors:WorkflowCancelled"


def test_an_uncaught_cancelled_child_fails_its_parent(rt: Runtime) -> None:
    """A parent that does not catch its child's cancellation ends FAILED with it, recorded,
    instead of staying RUNNING with nobody running it."""
    inside, go = threading.Event(), threading.Event()

    @rt.step()
    def slow() -> None:
        inside.set()
        go.wait(10)

    @rt.workflow()
    def child() -> None:
        slow()

    @rt.workflow()
    def parent() -> None:
        child.with_options(workflow_id="kid-2")()

    rt.launch()
    handle = rt.start(parent.with_options(workflow_id="mom-2"))
    assert inside.wait(10)
    rt.cancel("kid-2")
    go.set()
    with pytest.raises(WorkflowFailed, match="WorkflowCancelled") as info:
        handle.result(timeout=10)
    assert isinstance(info.value.__cause__, WorkflowCancelled)
    assert handle.status() == "FAILED"


@pytest.mark.parametrize("catches", [True, False])
def test_waiting_on_a_cancelled_execution_raises_in_the_waiter(rt: Runtime, catches: bool) -> None:
    """A workflow that waits for the result of another execution that gets cancelled sees
    WorkflowCancelled as an ordinary exception: it may catch it; if it does not, it ends
    FAILED with it (it is not taken for its own cancellation and left RUNNING)."""
    inside, go = threading.Event(), threading.Event()

    @rt.step()
    def slow() -> None:
        inside.set()
        go.wait(10)

    @rt.workflow()
    def other() -> None:
        slow()

    @rt.workflow()
    def waiter() -> str:
        handle = rt.start(other.with_options(workflow_id="other-1"))
        try:
            handle.result()
        except WorkflowCancelled:
            if catches:
                return "saw it cancelled"
            raise
        return "finished"

    rt.launch()
    handle = rt.start(waiter.with_options(workflow_id="waiter-1"))
    assert inside.wait(10)
    rt.cancel("other-1")
    go.set()
    if catches:
        assert handle.result(timeout=10) == "saw it cancelled"
    else:
        with pytest.raises(WorkflowFailed, match="WorkflowCancelled"):
            handle.result(timeout=10)
        assert handle.status() == "FAILED"


# -- 2. waiting for another execution holds no worker ---------------------------------------


def test_a_pool_workflow_waiting_for_a_child_its_executor_claims_does_not_deadlock(
    solo: Runtime, db: str
) -> None:
    """With one worker, a parent running in the pool waits for a child owned by a dead
    executor; this executor's sweep claims the child, which runs in the worker the parent
    does not hold while it waits; then the parent finishes."""

    @solo.workflow(name="child")
    def child() -> str:
        return "child done"

    @solo.workflow()
    def parent() -> str:
        return "parent saw " + child.with_options(workflow_id="orphan-child")()

    _ghost(db, "orphan-child", "child", expired=False)
    solo.launch()
    handle = solo.start(parent.with_options(workflow_id="waiting-parent"))
    time.sleep(0.5)  # the parent reaches its wait for the child
    _expire_ghost(db)  # now this executor's sweep claims the child
    assert handle.result(timeout=20) == "parent saw child done"
    assert _row(db, "waiting-parent") == ("SUCCEEDED", "solo", 0)  # a wake is no recovery


def test_start_then_result_inside_a_pool_workflow_does_not_starve_the_pool(
    solo: Runtime,
) -> None:
    """With one worker, a workflow that starts another and waits for its result gets it:
    the queued execution runs in the waiting thread."""

    @solo.workflow()
    def inner(n: int) -> int:
        return n * 2

    @solo.workflow()
    def outer() -> int:
        return solo.start(inner.with_options(workflow_id="inner-1"), 21).result()

    solo.launch()
    assert solo.start(outer.with_options(workflow_id="outer-1")).result(timeout=15) == 42


def test_a_workflow_waiting_for_a_running_execution_frees_its_worker(solo: Runtime) -> None:
    """With one worker, a workflow waiting for an execution that another (caller) thread
    runs does not hold the worker: a third workflow runs meanwhile."""
    inside, go = threading.Event(), threading.Event()

    @solo.step()
    def blocking() -> str:
        inside.set()
        go.wait(10)
        return "slow done"

    @solo.workflow()
    def slow() -> str:
        return blocking()

    @solo.workflow()
    def waiting() -> str:
        return solo.handle("slow-1").result()

    @solo.workflow()
    def quick() -> str:
        return "quick"

    solo.launch()
    caller = threading.Thread(target=slow.with_options(workflow_id="slow-1"))
    caller.start()
    assert inside.wait(10)
    waiter = solo.start(waiting.with_options(workflow_id="waiting-1"))
    assert solo.start(quick.with_options(workflow_id="quick-1")).result(timeout=10) == "quick"
    go.set()
    caller.join(10)
    assert waiter.result(timeout=10) == "slow done"


def test_shutdown_does_not_hang_on_a_workflow_waiting_for_a_claim(solo: Runtime, db: str) -> None:
    """A parent waiting for a child owned by another live executor does not keep shutdown
    waiting: the parent is WAITING in the database (no owner, no thread, not a recovery)
    and shutdown returns at once."""

    @solo.workflow(name="child")
    def child() -> str:
        return "never here"

    @solo.workflow()
    def parent() -> str:
        return child.with_options(workflow_id="held-child")()

    _ghost(db, "held-child", "child", expired=False)
    solo.launch()
    solo.start(parent.with_options(workflow_id="held-parent"))
    # The WAITING row commits before the run unwinds here: wait for both.
    wait_for(lambda: _row(db, "held-parent")[0] == "WAITING" and not solo._engine.runs.active_ids())
    stopper = threading.Thread(target=solo.shutdown)
    stopper.start()
    stopper.join(15)
    assert not stopper.is_alive(), "shutdown hung"
    assert _row(db, "held-parent") == ("WAITING", None, 0)


# -- 3. a BaseException inside a step -------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: SystemExit(3), id="SystemExit"),
        pytest.param(KeyboardInterrupt, id="KeyboardInterrupt"),
        pytest.param(asyncio.CancelledError, id="CancelledError"),
    ],
)
def test_a_base_exception_in_a_pool_step_hands_the_execution_back(
    db: str, make: Callable[[], BaseException]
) -> None:
    """A step of a pool workflow that raises SystemExit, KeyboardInterrupt or CancelledError
    records nothing; the execution is handed back at once (no owner, one recovery), taken up
    again by a sweep, and finishes; the handle never raises the BaseException."""
    runtime = Runtime(db, executor_id="handback", **FAST)
    attempts: list[int] = []

    @runtime.step()
    def fragile() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise make()
        return "second time lucky"

    @runtime.workflow()
    def flow() -> str:
        return fragile()

    runtime.launch()
    try:
        handle = runtime.start(flow.with_options(workflow_id="hb-1"))
        assert handle.result(timeout=15) == "second time lucky"
        assert len(attempts) == 2
        assert _row(db, "hb-1") == ("SUCCEEDED", "handback", 1)
        events = [log.event for log in runtime.store.list_logs("hb-1")]
        assert "execution_released" in events
        assert [s.error for s in runtime.store.list_steps("hb-1")] == [None]
    finally:
        runtime.shutdown()


def test_asyncio_run_cancelled_inside_a_step_is_handed_back(db: str) -> None:
    """`asyncio.run` of a coroutine that gets cancelled raises CancelledError out of the
    step: an interruption, handed back and resumed, never a stranded RUNNING row."""
    runtime = Runtime(db, executor_id="aio", **FAST)
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise asyncio.CancelledError
        return "ok"

    @runtime.step()
    def run_async() -> str:
        return asyncio.run(flaky())

    @runtime.workflow()
    def flow() -> str:
        return run_async()

    runtime.launch()
    try:
        assert runtime.start(flow.with_options(workflow_id="aio-1")).result(timeout=15) == "ok"
    finally:
        runtime.shutdown()


def test_keyboard_interrupt_in_a_direct_call_reaches_the_caller_and_the_run_resumes(
    db: str,
) -> None:
    """Ctrl-C while a workflow runs in the caller's thread raises KeyboardInterrupt there,
    after handing the execution back; this executor's sweep then finishes it."""
    runtime = Runtime(db, executor_id="ctrl-c", **FAST)
    seen: list[int] = []

    @runtime.step()
    def work() -> str:
        seen.append(1)
        if len(seen) == 1:
            raise KeyboardInterrupt
        return "resumed"

    @runtime.workflow()
    def flow() -> str:
        return work()

    runtime.launch()
    try:
        with pytest.raises(KeyboardInterrupt):
            flow.with_options(workflow_id="kb-1")()
        assert runtime.handle("kb-1").result(timeout=15) == "resumed"
    finally:
        runtime.shutdown()


def test_a_step_that_always_exits_ends_at_the_recovery_limit(db: str) -> None:
    """A step whose body always raises SystemExit cannot loop forever: each hand-back counts
    as a recovery, and past max_recoveries the execution ends FAILED."""
    runtime = Runtime(db, executor_id="loop", max_recoveries=2, **FAST)

    @runtime.step()
    def exits() -> None:
        raise SystemExit(1)

    @runtime.workflow()
    def flow() -> None:
        exits()

    runtime.launch()
    try:
        with pytest.raises(WorkflowFailed, match="RecoveryLimitExceeded"):
            runtime.start(flow.with_options(workflow_id="exit-loop")).result(timeout=20)
    finally:
        runtime.shutdown()


# -- 12. steps from other threads -----------------------------------------------------------


def test_a_step_called_from_a_context_copying_thread_is_refused(rt: Runtime) -> None:
    """A step called from another thread that carries the workflow's context (copy_context,
    asyncio.to_thread) raises UsageError there and records nothing."""
    ran: list[str] = []

    @rt.step()
    def side() -> str:
        ran.append("side")
        return "side"

    @rt.workflow()
    def threaded() -> str:
        errors: list[BaseException] = []
        context = contextvars.copy_context()

        def call() -> None:
            try:
                context.run(side)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=call)
        thread.start()
        thread.join()

        async def via_to_thread() -> str:
            return await asyncio.to_thread(side)

        try:
            asyncio.run(via_to_thread())
        except UsageError as exc:
            errors.append(exc)
        assert all(isinstance(e, UsageError) for e in errors), errors
        return f"{len(errors)} refused"

    rt.launch()
    assert threaded.with_options(workflow_id="threads-1")() == "2 refused"
    assert ran == []
    assert rt.store.list_steps("threads-1") == []


# -- 17. a cancelled execution never runs another body --------------------------------------


def test_cancelling_queued_executions_runs_none_of_their_bodies(db: str) -> None:
    """20 started with two workers, 16 of the queued ones cancelled (8 from this runtime, 8
    from another process's connection): none of the 16 runs a step body."""
    runtime = Runtime(db, executor_id="busy", workers=2, **FAST)
    gate = threading.Event()
    bodies: list[str] = []
    lock = threading.Lock()

    @runtime.step()
    def charge() -> None:
        with lock:
            bodies.append(stepstone.current().workflow_id)
        gate.wait(20)

    @runtime.workflow()
    def order() -> None:
        charge()

    runtime.launch()
    other = Store(db)
    other.open(migrate=False)
    try:
        handles = [runtime.start(order.with_options(workflow_id=f"order-{i}")) for i in range(20)]
        wait_for(lambda: len(bodies) == 2)
        queued = [h.workflow_id for h in handles if h.workflow_id not in bodies]
        cancelled = queued[:16]
        for i, workflow_id in enumerate(cancelled):
            if i % 2:
                runtime.cancel(workflow_id)
            else:
                other.cancel_execution(workflow_id, "operator")
        gate.set()
        for handle in handles:
            if handle.workflow_id in cancelled:
                with pytest.raises(WorkflowCancelled):
                    handle.result(timeout=20)
            else:
                handle.result(timeout=20)
        assert not set(bodies) & set(cancelled)
        assert len(bodies) == 4
    finally:
        other.close()
        runtime.shutdown()


def test_a_cancel_from_another_process_stops_the_next_step_body(rt: Runtime, db: str) -> None:
    """Cancelled from another connection between two steps, a running workflow does not run
    its next step body (the notification makes it check first)."""
    between, go = threading.Event(), threading.Event()
    ran: list[str] = []

    @rt.step()
    def first() -> None:
        ran.append("first")

    @rt.step()
    def second() -> None:
        ran.append("second")

    @rt.workflow()
    def two() -> None:
        first()
        between.set()
        go.wait(10)
        second()

    rt.launch()
    handle = rt.start(two.with_options(workflow_id="two-1"))
    assert between.wait(10)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SELECT stepstone.cancel_execution_v1('two-1', 'operator')")
    time.sleep(0.5)  # the notification arrives
    go.set()
    with pytest.raises(WorkflowCancelled):
        handle.result(timeout=10)
    assert ran == ["first"]
