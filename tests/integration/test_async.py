"""Async workflows and steps: run durably in the awaiting task, on the async pool, with the
semantics of the sync path (replay, retries, state, fencing, transaction steps)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import psycopg
import pytest

import stepstone
from stepstone import (
    NonDeterminismError,
    NotLaunched,
    OwnershipLost,
    ResultTimeout,
    RetryPolicy,
    Runtime,
    UsageError,
    WorkflowFailed,
)
from tests.support.runtime import Crash
from tests.support.runtime import run_async as run


def _steps(rt: Runtime, workflow_id: str) -> list[tuple[int, str, int]]:
    return [(s.seq, s.name, s.attempts) for s in rt.store.list_steps(workflow_id)]


def _bump_epoch(dsn: str, workflow_id: str) -> None:
    """What a concurrent claim by another executor does to the execution row."""
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute(
            "UPDATE stepstone.executions SET owner = 'thief', epoch = epoch + 1 WHERE id = %s",
            [workflow_id],
        )


def test_async_workflow_runs_its_steps_durably_in_the_awaiting_task(rt: Runtime) -> None:
    """`await wf(...)` runs the workflow in the caller's task, records each step, and ends
    SUCCEEDED with its result decoded by its annotation."""
    tasks: list[asyncio.Task[Any] | None] = []

    @rt.step()
    async def double(n: int) -> int:
        await asyncio.sleep(0)
        return 2 * n

    @rt.workflow()
    async def doubled(n: int) -> tuple[int, int]:
        tasks.append(asyncio.current_task())
        return await double(n), await double(n + 1)

    async def main() -> Any:
        tasks.append(asyncio.current_task())
        return await doubled.with_options(workflow_id="a-1")(3)

    assert run(rt, main) == (6, 8)
    assert tasks[0] is tasks[1]
    assert _steps(rt, "a-1") == [(0, "double", 1), (1, "double", 1)]
    assert rt.handle("a-1").status() == "SUCCEEDED"


def test_async_replay_returns_recorded_steps_and_recorded_errors(rt: Runtime) -> None:
    """Called again after an interruption, an async workflow replays recorded results and
    recorded errors without running their bodies, and runs the interrupted step again."""
    bodies: list[str] = []
    crash = {"at": "ship"}

    @rt.step()
    async def price(sku: str) -> float:
        bodies.append("price")
        return 9.5

    @rt.step()
    async def fail_once() -> None:
        bodies.append("fail_once")
        raise KeyError("recorded failure")

    @rt.step()
    async def ship(sku: str) -> str:
        bodies.append("ship")
        if crash["at"] == "ship":
            raise Crash
        return f"shipped {sku}"

    @rt.workflow()
    async def order(sku: str) -> tuple[Any, ...]:
        amount = await price(sku)
        try:
            await fail_once()
        except KeyError as exc:
            note = str(exc)
        stepstone.current().state["replaying_at_ship"] = stepstone.current().replaying
        return amount, note, await ship(sku)

    async def main() -> Any:
        with pytest.raises(Crash):
            await order.with_options(workflow_id="a-2")("sku-1")
        assert bodies == ["price", "fail_once", "ship"]
        assert rt.handle("a-2").status() == "RUNNING"
        crash["at"] = ""
        bodies.clear()
        return await order.with_options(workflow_id="a-2")("ignored: inputs are recorded")

    assert run(rt, main) == (9.5, "'recorded failure'", "shipped sku-1")
    assert bodies == ["ship"]
    assert [name for _, name, _ in _steps(rt, "a-2")] == ["price", "fail_once", "ship"]
    assert rt.get_state("a-2") == {"replaying_at_ship": False}


def test_async_retries_sleep_without_blocking_the_event_loop(rt: Runtime) -> None:
    """A failing async step is retried per its policy with asyncio.sleep between attempts:
    other tasks run meanwhile, and one record holds the attempts."""
    attempts: list[float] = []

    @rt.step(retry=RetryPolicy(max_attempts=3, initial_interval=0.2, backoff=1.0))
    async def flaky() -> str:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return "done"

    @rt.workflow()
    async def retrying() -> str:
        return await flaky()

    async def main() -> tuple[str, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick = asyncio.create_task(ticker())
        try:
            result = await retrying.with_options(workflow_id="a-3")()
        finally:
            tick.cancel()
        return result, ticks

    result, ticks = run(rt, main)
    assert result == "done"
    assert ticks >= 10
    assert attempts[2] - attempts[0] >= 0.4
    assert _steps(rt, "a-3") == [(0, "flaky", 3)]
    events = [log.event for log in rt.store.list_logs("a-3")]
    assert "step_retried" in events


def test_async_step_that_keeps_failing_fails_the_workflow_with_its_error(rt: Runtime) -> None:
    """An async step's last failure is recorded and raised in the workflow; uncaught, the
    workflow ends FAILED and the caller gets WorkflowFailed."""

    @rt.step(retry=RetryPolicy(max_attempts=2, initial_interval=0.01))
    async def broken() -> None:
        raise ValueError("broken for good")

    @rt.workflow()
    async def failing() -> None:
        await broken()

    async def main() -> None:
        await failing.with_options(workflow_id="a-4")()

    with pytest.raises(WorkflowFailed, match="broken for good"):
        run(rt, main)
    assert _steps(rt, "a-4") == [(0, "broken", 2)]
    assert rt.handle("a-4").status() == "FAILED"


def test_async_state_is_committed_with_steps_and_completion(rt: Runtime) -> None:
    """State set in an async workflow is durable with the next step commit, and the last
    changes with its completion."""
    seen: list[dict[str, Any]] = []

    @rt.step()
    async def peek() -> None:
        seen.append(rt.get_state("a-5"))

    @rt.workflow()
    async def stateful() -> None:
        state = stepstone.current().state
        state["stage"] = "one"
        await peek()
        state["stage"] = "two"
        await peek()
        state["done"] = True

    run(rt, stateful.with_options(workflow_id="a-5"))
    assert seen == [{}, {"stage": "one"}]
    assert rt.get_state("a-5") == {"stage": "two", "done": True}


def test_gathered_steps_take_their_positions_in_call_order(rt: Runtime) -> None:
    """Steps started together (asyncio.gather, a TaskGroup) get positions in the order
    they were called, whichever finishes first."""
    finished: list[str] = []

    @rt.step()
    async def slow() -> str:
        await asyncio.sleep(0.2)
        finished.append("slow")
        return "slow"

    @rt.step()
    async def fast() -> str:
        finished.append("fast")
        return "fast"

    @rt.workflow()
    async def together() -> list[str]:
        return list(await asyncio.gather(slow(), fast()))

    @rt.workflow()
    async def grouped() -> list[str]:
        async with asyncio.TaskGroup() as group:
            first = group.create_task(slow())
            second = group.create_task(fast())
        return [first.result(), second.result()]

    assert run(rt, together.with_options(workflow_id="a-6")) == ["slow", "fast"]
    assert finished == ["fast", "slow"]
    assert _steps(rt, "a-6") == [(0, "slow", 1), (1, "fast", 1)]
    finished.clear()
    assert run(rt, grouped.with_options(workflow_id="a-6g")) == ["slow", "fast"]
    assert finished == ["fast", "slow"]
    assert _steps(rt, "a-6g") == [(0, "slow", 1), (1, "fast", 1)]


def test_replay_calling_gathered_steps_in_another_order_is_nondeterminism(
    rt: Runtime,
) -> None:
    """A replay that calls concurrently started steps in another order than the recorded
    run fails the execution with NonDeterminismError."""
    order = {"first": "a", "crash": True}

    @rt.step()
    async def a() -> str:
        return "a"

    @rt.step()
    async def b() -> str:
        return "b"

    @rt.step()
    async def last() -> None:
        if order["crash"]:
            raise Crash

    @rt.workflow()
    async def pair() -> None:
        if order["first"] == "a":
            await asyncio.gather(a(), b())
        else:
            await asyncio.gather(b(), a())
        await last()

    async def main() -> None:
        with pytest.raises(Crash):
            await pair.with_options(workflow_id="a-7")()
        order.update(first="b", crash=False)
        await pair.with_options(workflow_id="a-7")()

    with pytest.raises(WorkflowFailed) as failed:
        run(rt, main)
    cause = failed.value.__cause__
    assert isinstance(cause, NonDeterminismError)
    assert (cause.seq, cause.recorded, cause.called) == (0, "a", "b")
    assert rt.handle("a-7").status() == "FAILED"
    assert [name for _, name, _ in _steps(rt, "a-7")] == ["a", "b"]


def test_async_transaction_step_commits_its_sql_with_the_step_record(rt: Runtime) -> None:
    """An async transaction step gets a psycopg AsyncConnection; its SQL commits with the
    step record, and a failing one rolls its SQL back and records its error."""

    @rt.transaction()
    async def mark(conn: psycopg.AsyncConnection[Any], note: str) -> str:
        assert isinstance(conn, psycopg.AsyncConnection)
        await conn.execute("INSERT INTO marks VALUES (%s)", [note])
        if note == "bad":
            raise ValueError("refused")
        return note

    @rt.workflow()
    async def marking() -> str:
        try:
            await mark("bad")
        except ValueError:
            pass
        return await mark("good")

    async def main() -> str:
        async with rt.store.aio.pool.connection() as conn:  # type: ignore[union-attr]
            await conn.execute("CREATE TABLE marks (note text PRIMARY KEY)")
        return await marking.with_options(workflow_id="a-8")()

    assert run(rt, main) == "good"
    with rt.store.connection() as conn:
        assert conn.execute("SELECT note FROM marks").fetchall() == [("good",)]
    assert [name for _, name, _ in _steps(rt, "a-8")] == ["mark", "mark"]
    assert rt.store.list_steps("a-8")[0].error is not None


def test_fenced_out_async_transaction_step_rolls_back_the_users_sql(rt: Runtime, db: str) -> None:
    """A claim committed while an async transaction step runs makes its commit fail in the
    database: the user's write and the step record roll back, and nothing more runs here."""
    ran: list[str] = []

    @rt.transaction()
    async def write(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute("INSERT INTO marks VALUES ('fenced')")
        _bump_epoch(db, "a-9")

    @rt.step()
    async def after() -> None:
        ran.append("after")

    @rt.workflow()
    async def fenced() -> None:
        try:
            await write()
        except OwnershipLost:
            pass  # swallowed, it still stops the workflow
        await after()

    async def main() -> None:
        async with rt.store.aio.pool.connection() as conn:  # type: ignore[union-attr]
            await conn.execute("CREATE TABLE marks (note text PRIMARY KEY)")
        # The caller waits for the outcome of the executor that took it over.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(fenced.with_options(workflow_id="a-9")(), 1)

    run(rt, main)
    with rt.store.connection() as conn:
        assert conn.execute("SELECT note FROM marks").fetchall() == []
    assert ran == []
    assert rt.store.list_steps("a-9") == []
    row = rt.store.get_execution("a-9")
    assert row is not None
    assert (row.status, row.owner, row.epoch) == ("RUNNING", "thief", 2)


def test_sync_step_in_an_async_workflow_is_refused_with_a_hint(rt: Runtime) -> None:
    """A plain `def` step called from an async workflow raises UsageError there, naming
    the step and saying to use asyncio.to_thread inside an async step; nothing runs it."""
    ran: list[str] = []

    @rt.step()
    def blocking() -> None:
        ran.append("blocking")

    @rt.workflow()
    async def mixed() -> str:
        try:
            blocking()
        except UsageError as exc:
            return str(exc)
        return "not refused"

    message = run(rt, mixed.with_options(workflow_id="a-10"))
    assert "'blocking'" in message
    assert "asyncio.to_thread" in message
    assert ran == []
    assert rt.store.list_steps("a-10") == []


def test_async_step_in_a_sync_workflow_is_refused(rt: Runtime) -> None:
    """An async step called from a sync workflow raises UsageError naming it."""

    @rt.step()
    async def nonblocking() -> None:
        pass

    @rt.workflow()
    def plain() -> str:
        try:
            nonblocking()
        except UsageError as exc:
            return str(exc)
        return "not refused"

    with rt:
        message = plain()
    rt.store.open(migrate=False)
    assert "async step 'nonblocking'" in message
    assert "async def" in message


def test_async_workflow_called_without_await_records_nothing(rt: Runtime) -> None:
    """Calling an async workflow makes a coroutine and writes nothing: only awaiting it
    starts the execution."""

    @rt.workflow()
    async def lazy() -> int:
        return 1

    async def main() -> None:
        pending = lazy.with_options(workflow_id="a-11")()
        await asyncio.sleep(0.05)
        assert rt.store.get_execution("a-11") is None
        pending.close()  # type: ignore[attr-defined]

    run(rt, main)
    assert rt.store.list_executions().items == []


def test_cancelled_async_workflow_is_interrupted_not_failed_and_resumes(rt: Runtime) -> None:
    """Cancelling the task of a running async workflow records no failure and no step:
    the execution is handed back (RUNNING), and resumed where it stopped; calling it
    again returns its result."""
    bodies: list[str] = []
    checked = threading.Event()  # the resumed run waits until the hand-back was checked

    @rt.step()
    async def first() -> str:
        bodies.append("first")
        return "one"

    @rt.step()
    async def hang() -> str:
        bodies.append("hang")
        if bodies.count("hang") == 1:
            await asyncio.sleep(3600)
        await asyncio.to_thread(checked.wait, 30)
        return "two"

    @rt.workflow()
    async def long() -> list[str]:
        return [await first(), await hang()]

    async def main() -> Any:
        task = asyncio.create_task(long.with_options(workflow_id="a-12")())
        while "hang" not in bodies:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert rt.handle("a-12").status() == "RUNNING"
        assert [name for _, name, _ in _steps(rt, "a-12")] == ["first"]
        (released,) = [
            log for log in rt.store.list_logs("a-12") if log.event == "execution_released"
        ]
        assert released.details["reason"] == "CancelledError raised while it ran"
        checked.set()
        return await long.with_options(workflow_id="a-12")()

    assert run(rt, main) == ["one", "two"]
    # Handed back, it may be resumed by this executor's sweep (on the runtime's loop) as
    # well as by the call: whichever claims it last finishes it, the other is fenced out.
    # The recorded first step never runs again; the interrupted one runs again.
    assert bodies[:3] == ["first", "hang", "hang"]
    assert bodies.count("first") == 1
    assert [name for _, name, _ in _steps(rt, "a-12")] == ["first", "hang"]
    assert rt.handle("a-12").status() == "SUCCEEDED"


def test_async_workflows_need_the_async_launch(rt: Runtime) -> None:
    """An async workflow called on a runtime launched without launch_async() raises
    NotLaunched naming launch_async; after shutdown_async() it is refused again."""

    @rt.workflow()
    async def needs_pool() -> int:
        return 1

    async def main() -> None:
        await asyncio.to_thread(rt.launch)
        with pytest.raises(NotLaunched, match="launch_async"):
            await needs_pool()
        await rt.launch_async()
        await rt.launch_async()  # idempotent
        assert await needs_pool() == 1
        await rt.shutdown_async()
        with pytest.raises(NotLaunched):
            await needs_pool()

    asyncio.run(main())


def test_async_and_sync_workflows_share_one_runtime(rt: Runtime) -> None:
    """A sync workflow called from a thread and async workflows awaited on the loop run
    side by side on one launched runtime, each on its own pool."""

    @rt.step()
    def sync_step(n: int) -> int:
        return n + 1

    @rt.workflow()
    def sync_flow(n: int) -> int:
        return sync_step(n)

    @rt.step()
    async def async_step(n: int) -> int:
        return n + 2

    @rt.workflow()
    async def async_flow(n: int) -> int:
        return await async_step(n)

    async def main() -> list[int]:
        return list(
            await asyncio.gather(
                asyncio.to_thread(sync_flow, 1), async_flow(1), async_flow(2), async_flow(3)
            )
        )

    assert run(rt, main) == [2, 3, 4, 5]


def test_start_async_runs_an_async_workflow_in_a_task_of_the_loop(rt: Runtime) -> None:
    """start_async() returns once the execution is durable; the workflow runs in a task of
    the loop; result_async() waits for it without blocking the loop; the same id again
    runs nothing and reads the same outcome."""
    release = asyncio.Event()
    runs: list[str] = []

    @rt.step()
    async def gated() -> str:
        runs.append("gated")
        await release.wait()
        return "released"

    @rt.workflow()
    async def later() -> str:
        return await gated()

    async def main() -> list[Any]:
        handle = await rt.start_async(later.with_options(workflow_id="a-13"))
        assert handle.workflow_id == "a-13"
        assert handle.status() == "RUNNING"
        with pytest.raises(ResultTimeout):
            await handle.result_async(timeout=0.2)
        release.set()
        first = await handle.result_async(timeout=10)
        again = await rt.start_async(later.with_options(workflow_id="a-13"))
        return [first, await again.result_async(timeout=10), await rt.handle("a-13").result_async()]

    assert run(rt, main) == ["released", "released", "released"]
    assert runs == ["gated"]
    assert rt.handle("a-13").status() == "SUCCEEDED"


def test_start_async_runs_a_sync_workflow_in_the_worker_pool(rt: Runtime) -> None:
    """start_async() of a sync workflow writes it on the async pool and runs it in a worker
    thread; result_async() gets its outcome, failures included."""
    threads: list[str] = []

    @rt.workflow()
    def plain(n: int) -> int:
        threads.append(threading.current_thread().name)
        if n < 0:
            raise ValueError("negative")
        return n * 10

    async def main() -> int:
        failing = await rt.start_async(plain, -1)
        with pytest.raises(WorkflowFailed, match="negative"):
            await failing.result_async(timeout=10)
        handle = await rt.start_async(plain, 4)
        result: int = await handle.result_async(timeout=10)
        return result

    assert run(rt, main) == 40
    assert threading.main_thread().name not in threads
    assert len(threads) == 2


def test_shutdown_async_cancels_started_async_workflows_when_not_waiting(rt: Runtime) -> None:
    """shutdown_async(wait=False) cancels the tasks start_async() started: their executions
    are handed back (RUNNING, no owner, the next epoch), with nothing recorded for the
    interrupted step."""

    @rt.step()
    async def forever() -> None:
        await asyncio.sleep(3600)

    @rt.workflow()
    async def endless() -> None:
        await forever()

    async def main() -> None:
        await rt.launch_async()
        await rt.start_async(endless.with_options(workflow_id="a-14"))
        await asyncio.sleep(0.1)
        await rt.shutdown_async(wait=False)

    asyncio.run(main())
    rt.store.open(migrate=False)
    row = rt.store.get_execution("a-14")
    assert row is not None
    assert (row.status, row.owner, row.epoch) == ("RUNNING", None, 2)
    assert rt.store.list_steps("a-14") == []
