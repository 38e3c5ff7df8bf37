"""The async twins of queues, the Client and the operations outside workflows: the same
checks and errors as the sync calls, on the async pool (enqueue_async, status_async,
result_async, get_state_async, wait_state_async, send_async, `async with Client`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

import stepstone
from stepstone import (
    Client,
    ConfigurationError,
    Deduplicated,
    NotLaunched,
    Runtime,
    SerializationError,
    StateNotSet,
    StateTimeout,
    UnregisteredWorkflow,
    UsageError,
    WorkflowFailed,
    WorkflowIdConflict,
    WorkflowNotFound,
)
from tests.support.runtime import FAST
from tests.support.runtime import run_async as run

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def rt(db: str) -> Iterator[Runtime]:
    """A Runtime on the test's database (fast timings), shut down at the end."""
    runtime = Runtime(db, executor_id="async-queues", **FAST)  # type: ignore[arg-type]
    yield runtime
    runtime.shutdown()


def _query(db: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchall() if cursor.description else []


def _written(db: str) -> list[tuple[Any, ...]]:
    return _query(
        db,
        "SELECT (SELECT count(*) FROM stepstone.executions), (SELECT count(*) FROM stepstone.logs)",
    )


def test_enqueue_async_writes_the_execution_enqueued_with_its_options(rt: Runtime, db: str) -> None:
    """enqueue_async writes the execution ENQUEUED with its options, sync or async workflow
    alike, and returns its handle (status_async reads it); nothing runs it in a process
    that serves no queue."""
    queue = rt.queue("q")
    rt.serve()  # this process only enqueues

    @rt.workflow()
    def double(n: int) -> int:
        return 2 * n

    @rt.workflow()
    async def greet(name: str) -> str:
        return f"hello {name}"

    async def main() -> tuple[str, str, str, str]:
        first = await queue.enqueue_async(
            double.with_options(workflow_id="d-1", priority=-3, partition_key="t-1"), 21
        )
        second = await queue.enqueue_async(greet.with_options(workflow_id="g-1"), name="ada")
        return (
            first.workflow_id,
            await first.status_async(),
            second.workflow_id,
            (await second.status_async()),
        )

    assert run(rt, main) == ("d-1", "ENQUEUED", "g-1", "ENQUEUED")
    rows = _query(
        db,
        "SELECT id, workflow_name, status, queue_name, priority, partition_key "
        "FROM stepstone.executions ORDER BY id",
    )
    assert rows == [
        ("d-1", "double", "ENQUEUED", "q", -3, "t-1"),
        ("g-1", "greet", "ENQUEUED", "q", 0, None),
    ]
    assert rt.handle("g-1").status() == "ENQUEUED"


def test_an_execution_enqueued_async_is_dispatched_and_its_result_awaited(rt: Runtime) -> None:
    """A sync workflow enqueued with enqueue_async is claimed by the dispatcher and run;
    the handle's result_async returns its result, rebuilt by its annotation."""
    queue = rt.queue("work")

    @rt.workflow()
    def double(n: int) -> int:
        return 2 * n

    async def main() -> tuple[int, str]:
        handle = await queue.enqueue_async(double, 21)
        result = await handle.result_async(timeout=30)
        return result, await handle.status_async()

    assert run(rt, main) == (42, "SUCCEEDED")


def test_an_id_or_a_dedup_key_given_twice_is_one_execution(rt: Runtime, db: str) -> None:
    """The same workflow id enqueued twice is that execution (one row); a dedup key taken
    by an unfinished execution raises Deduplicated naming it; an id of another workflow
    raises WorkflowIdConflict. Each writes nothing more."""
    queue = rt.queue("q")
    rt.serve()

    @rt.workflow()
    def job(n: int) -> int:
        return n

    @rt.workflow()
    def other() -> None:
        return None

    async def main() -> list[str]:
        first = await queue.enqueue_async(job.with_options(workflow_id="same"), 1)
        again = await queue.enqueue_async(job.with_options(workflow_id="same"), 2)
        keyed = await queue.enqueue_async(job.with_options(dedup_key="k"), 3)
        with pytest.raises(Deduplicated) as taken:
            await queue.enqueue_async(job.with_options(dedup_key="k"), 4)
        assert keyed.workflow_id in str(taken.value)
        with pytest.raises(WorkflowIdConflict):
            await queue.enqueue_async(other.with_options(workflow_id="same"))
        return [first.workflow_id, again.workflow_id]

    assert run(rt, main) == ["same", "same"]
    assert _query(db, "SELECT count(*) FROM stepstone.executions") == [(2,)]


def test_bad_async_enqueues_raise_what_sync_ones_raise_and_write_nothing(
    rt: Runtime, db: str
) -> None:
    """Arguments that do not fit, an argument its annotation cannot decode or the
    serializer cannot encode, a workflow of another runtime, a queue missing from the
    database, a runtime whose async pool is not open: the sync errors, nothing written."""
    queue = rt.queue("q")
    rt.serve()

    @rt.workflow()
    def typed(n: int, *, label: str = "") -> int:
        return n

    stranger = Runtime(db, executor_id="stranger")

    @stranger.workflow()
    def foreign() -> None:
        return None

    async def main() -> None:
        with pytest.raises(UsageError, match=r"do not fit workflow .*typed.*too many positional"):
            await queue.enqueue_async(typed, 1, 2)
        with pytest.raises(
            UsageError, match=r"argument 'n'.*not a valid int.*nothing was enqueued"
        ):
            await queue.enqueue_async(typed, "many")
        with pytest.raises(SerializationError):
            await queue.enqueue_async(typed, object())
        with pytest.raises(UnregisteredWorkflow, match="not a workflow of this runtime"):
            await queue.enqueue_async(foreign)
        await asyncio.to_thread(_query, db, "DELETE FROM stepstone.queues WHERE name = 'q'")
        with pytest.raises(UsageError, match="no queue named 'q'"):
            await queue.enqueue_async(typed, 1)

    run(rt, main)
    assert _written(db) == [(0, 0)]


def test_enqueue_async_needs_the_async_pool(rt: Runtime, db: str) -> None:
    """After a sync launch() only, enqueue_async and the handle's async reads raise
    NotLaunched saying to call launch_async(), and nothing is written."""
    queue = rt.queue("q")
    rt.serve()

    @rt.workflow()
    def job(n: int) -> int:
        return n

    rt.launch()
    with pytest.raises(NotLaunched, match="launch_async"):
        asyncio.run(queue.enqueue_async(job, 1))
    with pytest.raises(NotLaunched, match="launch_async"):
        asyncio.run(rt.handle("any").status_async())
    assert _query(db, "SELECT count(*) FROM stepstone.executions") == [(0,)]


def test_enqueue_async_in_the_callers_transaction_follows_its_commit(rt: Runtime, db: str) -> None:
    """With conn= (an AsyncConnection in a transaction), a rolled-back enqueue leaves
    nothing and a committed one is there; a connection of the other kind is refused, sync
    or async, naming it."""
    queue = rt.queue("q")
    rt.serve()

    @rt.workflow()
    def job(n: int) -> int:
        return n

    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(db) as conn:
            await queue.enqueue_async(job.with_options(workflow_id="rolled-back"), 1, conn=conn)
            await conn.rollback()
            await queue.enqueue_async(job.with_options(workflow_id="committed"), 2, conn=conn)
            await conn.commit()
            with pytest.raises(UsageError, match="pass it to the async call"):
                queue.enqueue(job, 4, conn=conn)  # type: ignore[call-overload]
        with psycopg.connect(db) as sync_conn, pytest.raises(UsageError, match="AsyncConnection"):
            await queue.enqueue_async(job, 3, conn=sync_conn)  # type: ignore[call-overload]

    run(rt, main)
    assert _query(db, "SELECT id, status FROM stepstone.executions") == [("committed", "ENQUEUED")]


def test_state_is_read_and_awaited_from_async_code_outside_workflows(rt: Runtime) -> None:
    """rt.get_state_async, rt.wait_state_async and handle.get_state_async read what a
    running workflow committed; an unknown id is WorkflowNotFound, a key never set
    StateNotSet once the execution ends, and a wait that runs out StateTimeout."""
    queue = rt.queue("work")

    @rt.workflow()
    def staged() -> str:
        stepstone.current().state["stage"] = "half"
        stepstone.recv("go")
        return "done"

    async def main() -> list[Any]:
        handle = await queue.enqueue_async(staged.with_options(workflow_id="s-1"))
        seen = [await rt.wait_state_async("s-1", "stage", timeout=30)]
        seen.append(await rt.get_state_async("s-1"))
        seen.append(await handle.get_state_async())
        with pytest.raises(StateTimeout, match="'never'"):
            await rt.wait_state_async("s-1", "never", timeout=0.05)
        with pytest.raises(WorkflowNotFound, match="'ghost'"):
            await rt.get_state_async("ghost")
        with pytest.raises(WorkflowNotFound, match="'ghost'"):
            await rt.handle("ghost").status_async()
        with pytest.raises(WorkflowNotFound, match="'ghost'"):
            await rt.wait_state_async("ghost", "stage", timeout=5)
        rt.send("s-1", "now", topic="go")
        seen.append(await handle.result_async(timeout=30))
        with pytest.raises(StateNotSet, match="'never'"):
            await rt.wait_state_async("s-1", "never")
        return seen

    assert run(rt, main) == ["half", {"stage": "half"}, {"stage": "half"}, "done"]


@pytest.fixture
def worker(db: str) -> Iterator[Runtime]:
    """A worker Runtime on the test's database serving queue "emails" (the test defines its
    workflows, then launches it)."""
    runtime = Runtime(db, executor_id="worker", **FAST)  # type: ignore[arg-type]
    runtime.queue("emails")
    yield runtime
    runtime.shutdown()


def test_a_client_does_everything_async_against_a_worker(worker: Runtime, db: str) -> None:
    """`async with Client(...)`: enqueue_async by name, wait_state_async, get_state_async,
    status_async, send_async and result_async against a worker that runs the workflow;
    the audit log names the client."""

    @worker.workflow(name="inbox")
    def inbox(greeting: str) -> str:
        stepstone.current().state["stage"] = "waiting"
        return f"{greeting} {stepstone.recv('go')}"

    worker.launch()

    async def main() -> list[Any]:
        async with Client(db, client_id="async-client") as client:
            handle = await client.enqueue_async("emails", "inbox", "got", workflow_id="in-1")
            seen: list[Any] = [await client.wait_state_async("in-1", "stage", timeout=30)]
            seen.append(await client.get_state_async("in-1"))
            seen.append(await handle.get_state_async())
            await client.send_async("in-1", "hello", topic="go")
            seen.append(await handle.result_async(timeout=30))
            seen.append(await client.handle("in-1").status_async())
            return seen

    assert asyncio.run(main()) == [
        "waiting",
        {"stage": "waiting"},
        {"stage": "waiting"},
        "got hello",
        "SUCCEEDED",
    ]
    logs = _query(db, "SELECT event, actor FROM stepstone.logs WHERE execution_id = 'in-1'")
    assert logs[0] == ("execution_enqueued", "async-client")


def test_a_client_and_a_runtime_share_one_event_loop(rt: Runtime, db: str) -> None:
    """A Client in the event loop of a runtime launched with launch_async enqueues by name;
    the runtime's dispatcher runs the execution, and both handles await its result."""
    rt.queue("shared")

    @rt.workflow(name="square")
    def square(n: int) -> int:
        return n * n

    async def main() -> tuple[Any, int, str]:
        async with Client(db) as client:
            handle = await client.enqueue_async("shared", "square", 7, workflow_id="sq-7")
            from_client = await handle.result_async(timeout=30)
        from_runtime: int = await rt.handle("sq-7").result_async(timeout=30)
        return from_client, from_runtime, await rt.handle("sq-7").status_async()

    assert run(rt, main) == (49, 49, "SUCCEEDED")


def test_a_clients_async_calls_raise_what_its_sync_calls_raise(worker: Runtime, db: str) -> None:
    """An unknown queue, an unregistered workflow or version, an argument that cannot be
    stored, a dedup key taken, an unknown id, a send to an ended execution and a failed
    workflow raise the sync calls' errors from the async ones; bad enqueues write nothing."""

    @worker.workflow(name="send_email")
    def send_email(address: str) -> str:
        return f"sent to {address}"

    @worker.workflow(name="broken")
    def broken(n: int) -> int:
        raise ValueError(f"bad {n}")

    worker.launch()

    async def main() -> None:
        client = Client(db)
        try:
            with pytest.raises(UsageError, match="no queue named 'nope'"):
                await client.enqueue_async("nope", "send_email", "x")
            with pytest.raises(UnregisteredWorkflow, match="'send_mail'"):
                await client.enqueue_async("emails", "send_mail", "x")
            with pytest.raises(UnregisteredWorkflow, match=r"version '9'.*latest registered"):
                await client.enqueue_async("emails", "send_email", "x", version="9")
            with pytest.raises(SerializationError, match="argument 1"):
                await client.enqueue_async("emails", "send_email", object())
            assert await asyncio.to_thread(_written, db) == [(0, 0)]
            with pytest.raises(WorkflowNotFound, match="'ghost'"):
                await client.handle("ghost").status_async()
            with pytest.raises(WorkflowNotFound, match="'ghost'"):
                await client.send_async("ghost", "hi")
            with pytest.raises(WorkflowNotFound, match="'ghost'"):
                await client.get_state_async("ghost")
            handle = await client.enqueue_async(
                "emails", "send_email", "a@b.c", dedup_key="once", delay=3600
            )
            with pytest.raises(Deduplicated):
                await client.enqueue_async("emails", "send_email", "b@c.d", dedup_key="once")
            assert await handle.status_async() == "ENQUEUED"
            failing = await client.enqueue_async("emails", "broken", 3)
            with pytest.raises(WorkflowFailed, match="bad 3"):
                await failing.result_async(timeout=30)
            with pytest.raises(UsageError, match=r"has ended \(FAILED\)"):
                await client.send_async(failing.workflow_id, "late")
        finally:
            await client.close_async()
        with pytest.raises(UsageError, match="was closed"):
            await client.open_async()

    asyncio.run(main())


def test_a_client_enqueues_async_in_the_callers_transaction(worker: Runtime, db: str) -> None:
    """Client.enqueue_async with conn= follows the caller's AsyncConnection: nothing after
    a rollback, the execution after a commit."""

    @worker.workflow(name="send_email")
    def send_email(address: str) -> str:
        return f"sent to {address}"

    worker.serve()
    worker.launch()

    async def main() -> None:
        async with Client(db) as client, await psycopg.AsyncConnection.connect(db) as conn:
            await client.enqueue_async(
                "emails", "send_email", "a", workflow_id="rolled-back", conn=conn
            )
            await conn.rollback()
            await client.enqueue_async(
                "emails", "send_email", "b", workflow_id="committed", conn=conn
            )
            await conn.commit()

    asyncio.run(main())
    assert _query(db, "SELECT id FROM stepstone.executions") == [("committed",)]


def test_an_async_client_never_migrates_and_a_closed_one_refuses(empty_db: str, db: str) -> None:
    """`async with Client(...)` on a database without stepstone's tables raises
    ConfigurationError saying how to create them, and creates nothing; after close_async
    every async call refuses, saying the Client was closed."""

    async def main() -> None:
        with pytest.raises(ConfigurationError, match=r"has no stepstone tables.*migrate"):
            async with Client(empty_db):
                pass
        client = Client(db)
        await client.open_async()
        await client.close_async()
        with pytest.raises(UsageError, match="was closed"):
            await client.handle("any").status_async()
        with pytest.raises(UsageError, match="was closed"):
            await client.enqueue_async("emails", "send_email", "x")

    asyncio.run(main())
    assert _query(empty_db, "SELECT count(*) FROM pg_namespace WHERE nspname = 'stepstone'") == [
        (0,)
    ]
