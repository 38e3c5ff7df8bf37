"""Async executions resumed, woken, dequeued or started from sync code by a runtime run as
tasks on that runtime's one event loop thread; a cancelled one is handed back, never
failed. Processes that really die are in tests/crash/test_async_crash.py; here an execution
is left RUNNING by a Crash (nothing is recorded for it, as when a process dies)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg
import pytest

from stepstone import Runtime, WorkflowCancelled, WorkflowFailed
from tests.support.runtime import FAST, Crash, wait_for

LOOP_THREAD = "stepstone-loop"


def _define(rt: Runtime, crash: dict[str, bool], ran: list[tuple[str, int, str]]) -> Any:
    """An async workflow of two steps; each step notes its name and the thread it ran in."""

    def note(name: str) -> None:
        thread = threading.current_thread()
        ran.append((name, thread.ident or 0, thread.name))

    @rt.step(name="first")
    async def first(n: int) -> int:
        note("first")
        await asyncio.sleep(0)
        return n

    @rt.step(name="second")
    async def second(n: int) -> int:
        note("second")
        if crash.get("now"):
            raise Crash
        await asyncio.sleep(0)
        return n + 1

    @rt.workflow(name="flow")
    async def flow(n: int) -> int:
        return await first(n) + await second(n)

    return flow


def _interrupt(db: str, executor_id: str, workflow_id: str) -> None:
    """Leave `workflow_id` RUNNING with its first step recorded, owned by `executor_id`."""
    rt = Runtime(db, executor_id=executor_id, **FAST)
    flow = _define(rt, {"now": True}, [])

    async def main() -> None:
        async with rt:
            with pytest.raises(Crash):
                await flow.with_options(workflow_id=workflow_id)(20)

    asyncio.run(main())


def _expire(db: str, executor_id: str) -> None:
    """What a dead executor looks like once its lease ran out."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "UPDATE stepstone.executors SET heartbeat_at = now() - interval '1 hour' WHERE id = %s",
            [executor_id],
        )


def _row(db: str, workflow_id: str) -> tuple[Any, ...]:
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT status, owner, epoch, recoveries FROM stepstone.executions WHERE id = %s",
            [workflow_id],
        ).fetchone()
    assert row is not None
    return tuple(row)


def _step_names(db: str, workflow_id: str) -> list[str]:
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT name FROM stepstone.steps WHERE execution_id = %s ORDER BY seq", [workflow_id]
        ).fetchall()
    return [name for (name,) in rows]


@pytest.mark.parametrize("launch", ["sync", "async"])
def test_async_execution_of_a_dead_owner_resumes_on_the_loop_thread(db: str, launch: str) -> None:
    """An async execution whose owner's lease expired is claimed by a `launch()` runtime
    and by a `launch_async()` one alike: its recorded first step is not run again, and
    its second runs on the runtime's event loop thread (not the caller's, not a worker)."""
    _interrupt(db, "worker-a", "flow-1")
    assert _row(db, "flow-1") == ("RUNNING", "worker-a", 1, 0)
    _expire(db, "worker-a")
    ran: list[tuple[str, int, str]] = []
    rt = Runtime(db, executor_id="worker-b", **FAST)
    _define(rt, {}, ran)
    if launch == "sync":
        with rt:
            assert rt.handle("flow-1").result(timeout=15) == 41
        caller = threading.get_ident()
    else:

        async def main() -> tuple[Any, int]:
            async with rt:
                found = await rt.handle("flow-1").result_async(timeout=15)
                return found, threading.get_ident()

        result, caller = asyncio.run(main())
        assert result == 41
    ((name, ident, thread_name),) = ran
    assert name == "second"
    assert thread_name == LOOP_THREAD
    assert ident != caller
    assert _row(db, "flow-1") == ("SUCCEEDED", "worker-b", 2, 1)
    assert _step_names(db, "flow-1") == ["first", "second"]


def test_own_async_execution_is_resumed_at_launch_on_the_loop_thread(db: str) -> None:
    """A restart with the same executor id resumes its interrupted async execution in
    launch(), on the loop thread, without running its recorded step again."""
    _interrupt(db, "worker-a", "flow-2")
    ran: list[tuple[str, int, str]] = []
    rt = Runtime(db, executor_id="worker-a", **FAST)
    _define(rt, {}, ran)
    with rt:
        assert rt.handle("flow-2").result(timeout=15) == 41
    assert [(name, thread) for name, _, thread in ran] == [("second", LOOP_THREAD)]
    assert _row(db, "flow-2") == ("SUCCEEDED", "worker-a", 2, 1)


def test_hundreds_of_waiting_async_executions_share_one_thread(db: str) -> None:
    """rt.start() of an async workflow from sync code runs it on the loop thread: 300
    executions whose steps all wait at once (none can finish until every one has begun)
    run on that one thread, and handle.result() returns each result."""
    count = 300
    arrived: list[int] = []

    rt = Runtime(db, executor_id="many", workers=2)

    @rt.step()
    async def gather_all(i: int) -> int:
        arrived.append(threading.get_ident())
        while len(arrived) < count:  # every execution is inside this step at once
            await asyncio.sleep(0.01)
        return i

    @rt.workflow()
    async def waiting(i: int) -> int:
        return await gather_all(i) * 2

    with rt:
        handles = [rt.start(waiting, i) for i in range(count)]
        assert [h.result(timeout=120) for h in handles] == [2 * i for i in range(count)]
    assert len(arrived) == count
    assert len(set(arrived)) == 1
    assert threading.get_ident() not in arrived


def test_dequeued_async_workflow_runs_on_the_loop_thread(db: str) -> None:
    """An async workflow enqueued from sync code is dequeued by the dispatcher and runs on
    the runtime's loop thread; its handle's result() returns its result."""
    ran: list[tuple[str, int, str]] = []
    rt = Runtime(db, executor_id="queued", **FAST)
    flow = _define(rt, {}, ran)
    queue = rt.queue("async-jobs")
    with rt:
        handle = queue.enqueue(flow.with_options(workflow_id="flow-q"), 5)
        assert handle.result(timeout=15) == 11
    assert [(name, thread) for name, _, thread in ran] == [
        ("first", LOOP_THREAD),
        ("second", LOOP_THREAD),
    ]
    assert _row(db, "flow-q")[0] == "SUCCEEDED"


def test_cancelled_at_shutdown_async_execution_is_handed_back_and_finished_elsewhere(
    db: str,
) -> None:
    """An async execution on the loop thread still inside a step when shutdown_async's
    grace ends is cancelled and handed back: RUNNING, no owner, nothing failed, no recovery
    counted; another runtime then finishes it without running its first step again."""
    bodies: list[str] = []
    rt = Runtime(db, executor_id="leaving", **FAST)

    @rt.step(name="quick")
    async def quick() -> str:
        bodies.append("quick")
        return "one"

    @rt.step(name="hang")
    async def hang() -> str:
        bodies.append("hang")
        if bodies.count("hang") == 1:
            await asyncio.sleep(3600)
        return "two"

    @rt.workflow(name="long")
    async def long() -> list[str]:
        return [await quick(), await hang()]

    async def main() -> None:
        await rt.launch_async()
        await asyncio.to_thread(rt.start, long.with_options(workflow_id="long-1"))
        while "hang" not in bodies:
            await asyncio.sleep(0.01)
        await rt.shutdown_async(grace=0.2)

    asyncio.run(main())
    assert _row(db, "long-1") == ("RUNNING", None, 2, 0)
    assert _step_names(db, "long-1") == ["quick"]

    other = Runtime(db, executor_id="staying", **FAST)
    other.step(name="quick")(quick.fn)
    other.step(name="hang")(hang.fn)
    other.workflow(name="long")(long.fn)
    with other:
        assert other.handle("long-1").result(timeout=15) == ["one", "two"]
    assert bodies == ["quick", "hang", "hang"]
    assert _row(db, "long-1") == ("SUCCEEDED", "staying", 3, 0)


def test_second_cancel_during_the_hand_back_leaves_it_to_the_sweep(db: str) -> None:
    """A task cancelled again while its hand-back waits on the database loses nothing:
    the execution stays RUNNING and owned here, and this executor's sweep resumes it on
    the loop thread, which finishes it."""
    bodies: list[str] = []
    rt = Runtime(db, executor_id="twice", **FAST)

    @rt.step(name="quick")
    async def quick() -> str:
        bodies.append("quick")
        return "one"

    @rt.step(name="hang")
    async def hang() -> str:
        bodies.append(f"hang {threading.current_thread().name}")
        if len(bodies) == 2:
            await asyncio.sleep(3600)
        return "two"

    @rt.workflow(name="long")
    async def long() -> list[str]:
        return [await quick(), await hang()]

    def release_blocked(holder_pid: int) -> bool:
        with psycopg.connect(db, autocommit=True) as watch:
            return bool(
                watch.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE %s = ANY (pg_blocking_pids(pid))",
                    [holder_pid],
                ).fetchall()
            )

    async def main() -> Any:
        task = asyncio.create_task(long.with_options(workflow_id="long-2")())
        while len(bodies) < 2:
            await asyncio.sleep(0.01)
        with psycopg.connect(db) as holder:
            # The hand-back's UPDATE waits for this lock.
            holder.execute("SELECT 1 FROM stepstone.executions WHERE id = 'long-2' FOR UPDATE")
            task.cancel()
            await asyncio.to_thread(wait_for, lambda: release_blocked(holder.info.backend_pid), 15)
            task.cancel()  # a second cancel while the release waits
            with pytest.raises(asyncio.CancelledError):
                await task
            holder.rollback()
        return await rt.handle("long-2").result_async(timeout=15)

    async def inside() -> Any:
        async with rt:
            return await main()

    assert asyncio.run(inside()) == ["one", "two"]
    assert bodies == ["quick", "hang MainThread", f"hang {LOOP_THREAD}"]
    status, owner, _, _ = _row(db, "long-2")
    assert (status, owner) == ("SUCCEEDED", "twice")
    assert _step_names(db, "long-2") == ["quick", "hang"]


def test_operator_resume_and_fork_of_an_async_execution_run_on_the_loop_thread(db: str) -> None:
    """rt.resume() of a FAILED async execution and rt.fork() of it, from sync code, run on
    the loop thread from their recorded steps: the first step is not run again."""
    ran: list[tuple[str, int, str]] = []
    broken = {"now": True}
    rt = Runtime(db, executor_id="operator", **FAST)

    @rt.step(name="first")
    async def first() -> str:
        ran.append(("first", 0, threading.current_thread().name))
        return "one"

    @rt.step(name="second")
    async def second() -> str:
        ran.append(("second", 0, threading.current_thread().name))
        if broken["now"]:
            raise ValueError("broken")
        return "two"

    @rt.workflow(name="fixable")
    async def fixable() -> str:
        return f"{await first()} {await second()}"

    with rt:
        handle = rt.start(fixable.with_options(workflow_id="fix-1"))
        with pytest.raises(WorkflowFailed):
            handle.result(timeout=15)
        broken["now"] = False
        assert rt.resume("fix-1").result(timeout=15) == "one two"
        forked = rt.fork("fix-1", 1, new_workflow_id="fix-2")
        assert forked.result(timeout=15) == "one two"
    assert [(name, thread) for name, _, thread in ran] == [
        ("first", LOOP_THREAD),
        ("second", LOOP_THREAD),
        ("second", LOOP_THREAD),
        ("second", LOOP_THREAD),
    ]
    assert _row(db, "fix-1")[0] == "SUCCEEDED"
    assert _row(db, "fix-2")[0] == "SUCCEEDED"


def test_cancel_stops_an_async_execution_on_the_loop_thread_before_its_next_step(
    db: str,
) -> None:
    """rt.cancel() of an async execution running on the loop thread ends it CANCELLED
    before its next step body; handle.result() raises WorkflowCancelled."""
    entered = threading.Event()
    release = threading.Event()
    ran: list[str] = []
    rt = Runtime(db, executor_id="canceller", **FAST)

    @rt.step(name="slow")
    async def slow() -> str:
        ran.append("slow")
        entered.set()
        await asyncio.to_thread(release.wait, 30)
        return "slow"

    @rt.step(name="after")
    async def after() -> str:
        ran.append("after")
        return "after"

    @rt.workflow(name="stoppable")
    async def stoppable() -> str:
        return f"{await slow()} {await after()}"

    with rt:
        handle = rt.start(stoppable.with_options(workflow_id="stop-1"))
        assert entered.wait(15)
        rt.cancel("stop-1")
        release.set()
        with pytest.raises(WorkflowCancelled):
            handle.result(timeout=15)
    assert ran == ["slow"]
    assert _row(db, "stop-1")[0] == "CANCELLED"


def test_shutdown_waits_for_async_executions_on_the_loop_thread(db: str) -> None:
    """rt.shutdown() (waiting, no grace) lets the async executions running on the loop
    thread finish before it closes their pool: each ends SUCCEEDED."""
    entered = threading.Event()
    rt = Runtime(db, executor_id="patient", **FAST)

    @rt.step()
    async def slow(i: int) -> int:
        entered.set()
        await asyncio.sleep(0.3)
        return i

    @rt.workflow(name="finishing")
    async def finishing(i: int) -> int:
        return await slow(i)

    rt.launch()
    for i in range(3):
        rt.start(finishing.with_options(workflow_id=f"fin-{i}"), i)
    assert entered.wait(15)
    rt.shutdown()
    assert [_row(db, f"fin-{i}")[0] for i in range(3)] == ["SUCCEEDED"] * 3
