"""Waits, messages, children and continue-as-new in async workflows: the async twins
(`sleep_async`, `recv_async`, `wait_state_async`, `rt.send_async`, an awaited child,
`continue_as_new_async`) record what the sync ones record, with the same plans, on the
async pool; the sync entry points are refused in async workflows and the other way round."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

import stepstone
from stepstone import (
    RecvTimeout,
    Runtime,
    StepOutsideWorkflow,
    UsageError,
    WorkflowNotFound,
)
from tests.support.runtime import Crash
from tests.support.runtime import run_async as run

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine


def _steps(rt: Runtime, workflow_id: str) -> list[tuple[int, str, str, str | None]]:
    return [(s.seq, s.name, s.kind, s.output) for s in rt.store.list_steps(workflow_id)]


def _events(rt: Runtime, workflow_id: str) -> list[str]:
    return [log.event for log in rt.store.list_logs(workflow_id)]


def _messages(db: str, workflow_id: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db) as conn:
        return conn.execute(
            "SELECT topic, payload, received_seq, idempotency_key FROM stepstone.messages "
            "WHERE execution_id = %s ORDER BY id",
            [workflow_id],
        ).fetchall()


def _waiting_row(db: str, workflow_id: str) -> tuple[Any, ...]:
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT status, owner, waiting, wake_at > now() + interval '30 seconds', "
            "       wake_at < now() + interval '90 seconds' "
            "FROM stepstone.executions WHERE id = %s",
            [workflow_id],
        ).fetchone()
    assert row is not None
    return tuple(row)


async def _until_status(rt: Runtime, workflow_id: str, status: str) -> None:
    for _ in range(500):
        if rt.handle(workflow_id).status() == status:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{workflow_id} never became {status}")


# -- waits that are already satisfied --------------------------------------------------------


def test_async_sleeps_already_over_do_not_suspend(rt: Runtime) -> None:
    """sleep_async(0), a zero timedelta and sleep_until_async a past time complete in the
    same commit, without waiting, each recorded as a sleep."""

    @rt.workflow()
    async def hurried() -> str:
        await stepstone.sleep_async(0)
        await stepstone.sleep_async(dt.timedelta(0))
        await stepstone.sleep_until_async(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        return "done"

    async def main() -> Any:
        return await hurried.with_options(workflow_id="as-1")()

    assert run(rt, main) == "done"
    assert "execution_waiting" not in _events(rt, "as-1")
    assert [(s[1], s[2]) for s in _steps(rt, "as-1")] == [("sleep", "sleep")] * 3


def test_a_message_sent_before_recv_async_is_received_at_once(rt: Runtime, db: str) -> None:
    """Messages sent with rt.send_async from outside a workflow wait in the mailbox and are
    received by recv_async in send order, per topic, without suspending."""
    gate = asyncio.Event()

    @rt.workflow()
    async def reader() -> list[Any]:
        await gate.wait()
        return [
            await stepstone.recv_async("b"),
            await stepstone.recv_async("a"),
            await stepstone.recv_async("a", timeout=5),
        ]

    async def main() -> Any:
        handle = await rt.start_async(reader.with_options(workflow_id="ar-1"))
        for topic, value in [("a", 1), ("b", "x"), ("a", {"k": [1, 2]})]:
            await rt.send_async("ar-1", value, topic=topic)
        gate.set()
        return await handle.result_async(timeout=10)

    assert run(rt, main) == ["x", 1, {"k": [1, 2]}]
    assert "execution_waiting" not in _events(rt, "ar-1")
    assert [(m[0], m[2]) for m in _messages(db, "ar-1")] == [("a", 1), ("b", 0), ("a", 2)]
    assert [s[2] for s in _steps(rt, "ar-1")] == ["recv"] * 3


def test_a_recv_async_timeout_of_zero_is_recorded_as_recv_timeout(rt: Runtime) -> None:
    """recv_async with a timeout of 0 and an empty mailbox raises RecvTimeout at once,
    recorded as the receive's outcome."""

    @rt.workflow()
    async def impatient() -> str:
        try:
            await stepstone.recv_async("nothing", timeout=0)
        except RecvTimeout as exc:
            return f"timeout: {exc}"
        return "message"

    async def main() -> Any:
        return await impatient.with_options(workflow_id="ar-2")()

    assert run(rt, main) == 'timeout: no message on topic "nothing" arrived within 0 s'
    (step,) = rt.store.list_steps("ar-2")
    assert step.kind == "recv"
    assert step.error is not None
    assert step.error["type"] == "stepstone.errors:RecvTimeout"


def test_wait_state_async_of_a_key_already_set_returns_its_value(rt: Runtime) -> None:
    """wait_state_async of a key another execution has committed returns its value without
    waiting; of an unknown execution it raises WorkflowNotFound, recorded."""

    @rt.workflow()
    async def setter() -> None:
        stepstone.current().state["ready"] = {"v": 7}

    @rt.workflow()
    async def watcher() -> list[Any]:
        value = await stepstone.wait_state_async("ws-setter", "ready", timeout=5)
        try:
            await stepstone.wait_state_async("ws-nobody", "ready")
        except WorkflowNotFound as exc:
            return [value, str(exc)]
        return [value]

    async def main() -> Any:
        await setter.with_options(workflow_id="ws-setter")()
        return await watcher.with_options(workflow_id="ws-1")()

    assert run(rt, main) == [{"v": 7}, 'no execution has workflow id "ws-nobody"']
    assert [(s[1], s[2]) for s in _steps(rt, "ws-1")] == [("wait_state", "wait_state")] * 2


# -- a wait that suspends --------------------------------------------------------------------


def test_recv_async_on_an_empty_mailbox_records_the_execution_waiting(rt: Runtime, db: str) -> None:
    """A recv_async that has nothing to receive records the execution WAITING, with no
    owner, the receive's kind, topic, position and deadline, and the state changes made
    before it; the workflow's task is free at once."""

    @rt.workflow()
    async def approval() -> Any:
        stepstone.current().state["asked"] = True
        return await stepstone.recv_async("approval", timeout=60)

    async def main() -> None:
        handle = await rt.start_async(approval.with_options(workflow_id="aw-1"))
        await _until_status(rt, "aw-1", "WAITING")
        assert [t for t in rt._engine.tasks if not t.done()] == []
        assert handle.status() == "WAITING"

    run(rt, main)
    status, owner, waiting, later_than_30s, sooner_than_90s = _waiting_row(db, "aw-1")
    assert (status, owner, later_than_30s, sooner_than_90s) == ("WAITING", None, True, True)
    assert (waiting["kind"], waiting["seq"], waiting["topic"]) == ("recv", 0, "approval")
    assert rt.get_state("aw-1") == {"asked": True}
    assert _steps(rt, "aw-1") == []


def test_a_sleep_async_records_a_sleep_wait_with_its_wake_time(rt: Runtime, db: str) -> None:
    """sleep_async(60) records the execution WAITING for a sleep at position 0, due in 60 s
    by the database's clock."""

    @rt.workflow()
    async def napper() -> str:
        await stepstone.sleep_async(60)
        return "rested"

    async def main() -> None:
        await rt.start_async(napper.with_options(workflow_id="aw-2"))
        await _until_status(rt, "aw-2", "WAITING")

    run(rt, main)
    status, owner, waiting, later_than_30s, sooner_than_90s = _waiting_row(db, "aw-2")
    assert (status, owner, later_than_30s, sooner_than_90s) == ("WAITING", None, True, True)
    assert (waiting["kind"], waiting["seq"]) == ("sleep", 0)


# -- replay ---------------------------------------------------------------------------------


def test_a_replayed_async_wait_and_send_return_their_records(rt: Runtime, db: str) -> None:
    """Called again after an interruption, an async workflow replays its recorded send (no
    second message) and its recorded receive (no second message consumed)."""
    crash = {"armed": True}

    @rt.step()
    async def after() -> str:
        if crash["armed"]:
            raise Crash
        return "after"

    @rt.workflow()
    async def echo() -> list[Any]:
        me = stepstone.current().workflow_id
        await rt.send_async(me, "hello", topic="self")
        got = await stepstone.recv_async("self")
        return [got, await after()]

    async def main() -> Any:
        with pytest.raises(Crash):
            await echo.with_options(workflow_id="rp-1")()
        await rt.send_async("rp-1", "second", topic="self")
        crash["armed"] = False
        return await echo.with_options(workflow_id="rp-1")()

    assert run(rt, main) == ["hello", "after"]
    assert _steps(rt, "rp-1") == [
        (0, "send", "send", "null"),
        (1, "recv", "recv", '"hello"'),
        (2, "after", "step", '"after"'),
    ]
    messages = _messages(db, "rp-1")
    assert [(m[1], m[2], m[3]) for m in messages] == [
        ('"hello"', 1, "rp-1#0"),
        ('"second"', None, None),
    ]


# -- children -------------------------------------------------------------------------------


def test_an_awaited_async_child_runs_in_the_parents_task_and_is_recorded(rt: Runtime) -> None:
    """`await child(...)` from an async workflow runs the child in the same task, under the
    id <parent>/<position>, records its result at the parent's position, and a replay of
    the parent does not run the child again."""
    tasks: list[asyncio.Task[Any] | None] = []
    crash = {"armed": True}

    @rt.step()
    async def boom() -> None:
        if crash["armed"]:
            raise Crash

    @rt.workflow()
    async def child(n: int) -> dict[str, int]:
        tasks.append(asyncio.current_task())
        stepstone.current().state["n"] = n
        return {"twice": 2 * n}

    @rt.workflow()
    async def parent() -> int:
        tasks.append(asyncio.current_task())
        got = await child(3)
        await boom()
        return got["twice"]

    async def main() -> Any:
        with pytest.raises(Crash):
            await parent.with_options(workflow_id="ch-1")()
        crash["armed"] = False
        return await parent.with_options(workflow_id="ch-1")()

    assert run(rt, main) == 6
    assert tasks[0] is tasks[1]
    assert len(tasks) == 3  # parent, child, parent again (the child is not run again)
    assert _steps(rt, "ch-1")[0] == (0, "child", "workflow", '{"twice":6}')
    row = rt.store.get_execution("ch-1/0")
    assert row is not None
    assert (row.status, row.parent_id) == ("SUCCEEDED", "ch-1")
    assert rt.get_state("ch-1/0") == {"n": 3}


def test_gathered_async_children_take_their_positions_in_call_order(rt: Runtime) -> None:
    """Children started together with asyncio.gather get the parent's positions, and so
    their ids, in call order, whichever finishes first."""
    release = asyncio.Event()

    @rt.workflow()
    async def slow(n: int) -> int:
        await release.wait()
        return n

    @rt.workflow()
    async def fast(n: int) -> int:
        release.set()
        return n

    @rt.workflow()
    async def parent() -> list[int]:
        return list(await asyncio.gather(slow(1), fast(2)))

    async def main() -> Any:
        return await parent.with_options(workflow_id="chg-1")()

    assert run(rt, main) == [1, 2]
    assert [(s[0], s[1], s[3]) for s in _steps(rt, "chg-1")] == [(0, "slow", "1"), (1, "fast", "2")]
    first, second = rt.store.get_execution("chg-1/0"), rt.store.get_execution("chg-1/1")
    assert first is not None
    assert second is not None
    assert (first.workflow_name, second.workflow_name) == ("slow", "fast")


def test_a_parent_whose_async_child_waits_records_itself_waiting_on_it(
    rt: Runtime, db: str
) -> None:
    """When an awaited async child suspends (here in a long sleep), the parent waits for
    it durably: both are WAITING with no owner, the parent on the child's end, and the
    task is free."""

    @rt.workflow()
    async def sleepy() -> str:
        await stepstone.sleep_async(60)
        return "late"

    @rt.workflow()
    async def parent() -> str:
        stepstone.current().state["calling"] = "child"
        return await sleepy()

    async def main() -> None:
        await rt.start_async(parent.with_options(workflow_id="chw-1"))
        await _until_status(rt, "chw-1", "WAITING")
        assert [t for t in rt._engine.tasks if not t.done()] == []

    run(rt, main)
    status, owner, waiting, *_ = _waiting_row(db, "chw-1")
    assert (status, owner) == ("WAITING", None)
    assert waiting["kind"] == "execution"
    assert waiting["target"] == "chw-1/0"
    assert rt.get_state("chw-1") == {"calling": "child"}
    child_status, child_owner, child_waiting, *_ = _waiting_row(db, "chw-1/0")
    assert (child_status, child_owner, child_waiting["kind"]) == ("WAITING", None, "sleep")


def test_an_async_childs_failure_is_recorded_in_the_parent(rt: Runtime) -> None:
    """A failing async child ends FAILED and the parent gets WorkflowFailed, recorded at
    the child's position, where its code may catch it."""

    @rt.workflow()
    async def broken() -> int:
        raise ValueError("no")

    @rt.workflow()
    async def parent() -> str:
        try:
            await broken()
        except stepstone.WorkflowFailed as exc:
            return f"caught {exc.error_type}"
        return "not caught"

    async def main() -> Any:
        return await parent.with_options(workflow_id="ch-2")()

    assert run(rt, main) == "caught ValueError"
    assert rt.handle("ch-2/0").status() == "FAILED"
    (step,) = rt.store.list_steps("ch-2")
    assert (step.kind, step.error is not None) == ("workflow", True)


def test_a_plain_child_from_an_async_workflow_is_refused(rt: Runtime) -> None:
    """A plain `def` workflow called from an async workflow raises UsageError naming both,
    and starts nothing; an async workflow called from a plain one likewise."""

    @rt.workflow()
    def plain() -> int:
        return 1

    @rt.workflow()
    async def awaited() -> int:
        return 2

    @rt.workflow()
    async def async_parent() -> str:
        try:
            plain()
        except UsageError as exc:
            return str(exc)
        return "ran"

    @rt.workflow()
    def plain_parent() -> str:
        try:
            awaited()  # type: ignore[unused-coroutine] # refused when called
        except UsageError as exc:
            return str(exc)
        return "ran"

    async def main() -> Any:
        return await async_parent.with_options(workflow_id="ch-3")()

    message = run(rt, main)
    assert "'plain' is a plain `def`" in message
    assert "async workflow 'async_parent'" in message
    with rt:
        other = plain_parent.with_options(workflow_id="ch-4")()
    rt.store.open(migrate=False)
    assert "async workflow 'awaited' was called from workflow 'plain_parent'" in other
    assert rt.store.get_execution("ch-3/0") is None
    assert rt.store.get_execution("ch-4/0") is None


# -- continue-as-new -------------------------------------------------------------------------


def test_continue_as_new_async_runs_the_next_run_in_the_same_task(rt: Runtime) -> None:
    """continue_as_new_async ends the run and starts the next with the arguments given and
    an empty history; the caller gets the last run's result; each run's children get ids
    of their own."""
    seen: list[int] = []

    @rt.workflow()
    async def leaf(n: int) -> int:
        return n

    @rt.workflow()
    async def counter(n: int) -> int:
        seen.append(await leaf(n))
        stepstone.current().state[f"run-{n}"] = n
        if n < 2:
            await stepstone.continue_as_new_async(n + 1)
        return n

    async def main() -> Any:
        return await counter.with_options(workflow_id="can-1")(0)

    assert run(rt, main) == 2
    assert seen == [0, 1, 2]
    assert rt.get_state("can-1") == {"run-2": 2}
    assert [s[1] for s in _steps(rt, "can-1")] == ["leaf"]
    assert rt.handle("can-1/0").status() == "SUCCEEDED"
    assert rt.handle("can-1/r2/0").status() == "SUCCEEDED"
    assert rt.handle("can-1/r3/0").status() == "SUCCEEDED"


def test_continue_as_new_async_with_bad_arguments_writes_nothing(rt: Runtime) -> None:
    """continue_as_new_async with arguments the workflow does not take raises UsageError
    in the workflow, which goes on in the same run."""

    @rt.workflow()
    async def stubborn(n: int) -> str:
        try:
            await stepstone.continue_as_new_async("a", "b")
        except UsageError as exc:
            return str(exc)

    async def main() -> Any:
        return await stubborn.with_options(workflow_id="can-2")(1)

    assert "it did not continue as new" in run(rt, main)


# -- misuse ---------------------------------------------------------------------------------


def test_sync_waits_and_sends_in_an_async_workflow_are_refused_with_the_async_name(
    rt: Runtime,
) -> None:
    """stepstone.sleep/recv/wait_state/continue_as_new, rt.send and rt.wait_state in an
    async workflow raise UsageError naming the async twin to await; nothing is recorded."""
    calls: dict[str, Callable[[], Any]] = {
        "sleep": lambda: stepstone.sleep(1),
        "sleep_until": lambda: stepstone.sleep_until(dt.datetime(2000, 1, 1, tzinfo=dt.UTC)),
        "recv": lambda: stepstone.recv("t"),
        "wait_state": lambda: stepstone.wait_state("x", "k"),
        "continue_as_new": stepstone.continue_as_new,
        "send": lambda: rt.send("x", 1),
        "rt_wait_state": lambda: rt.wait_state("x", "k"),
    }

    @rt.workflow()
    async def wrong() -> dict[str, str]:
        messages = {}
        for name, call in calls.items():
            try:
                call()
            except UsageError as exc:
                messages[name] = str(exc)
        return messages

    async def main() -> Any:
        return await wrong.with_options(workflow_id="mu-1")()

    messages = run(rt, main)
    assert messages.keys() == calls.keys()
    for name in ("sleep", "sleep_until", "recv", "wait_state", "continue_as_new"):
        assert f"`await stepstone.{name}_async(...)`" in messages[name]
        assert "async workflow 'wrong' ('mu-1')" in messages[name]
    assert "`await rt.send_async(...)`" in messages["send"]
    assert "`await stepstone.wait_state_async(...)`" in messages["rt_wait_state"]
    assert _steps(rt, "mu-1") == []


def test_async_waits_in_a_sync_workflow_are_refused(rt: Runtime) -> None:
    """sleep_async, recv_async, wait_state_async, continue_as_new_async and rt.send_async
    awaited in a plain workflow's body raise UsageError naming the sync function."""

    async def awaited() -> list[str]:
        coroutines = [
            stepstone.sleep_async(1),
            stepstone.recv_async("t"),
            stepstone.wait_state_async("x", "k"),
            stepstone.continue_as_new_async(),
            rt.send_async("x", 1),
        ]
        messages = []
        for coroutine in coroutines:
            try:
                await coroutine
            except UsageError as exc:
                messages.append(str(exc))
        return messages

    @rt.workflow()
    def plain() -> list[str]:
        return asyncio.run(awaited())

    with rt:
        messages = plain.with_options(workflow_id="mu-2")()
    rt.store.open(migrate=False)
    assert len(messages) == 5
    for message, sync in zip(
        messages,
        [
            "stepstone.sleep()",
            "stepstone.recv()",
            "stepstone.wait_state()",
            "stepstone.continue_as_new()",
            "rt.send()",
        ],
        strict=True,
    ):
        assert "workflow 'plain' ('mu-2'), which is not async" in message
        assert f"call {sync} there" in message
    assert _steps(rt, "mu-2") == []


def test_async_waits_outside_a_workflow_are_refused(rt: Runtime) -> None:
    """sleep_async, recv_async, wait_state_async and continue_as_new_async outside a
    workflow raise StepOutsideWorkflow, as the sync ones do."""

    async def main() -> list[str]:
        messages = []
        for coroutine in [
            stepstone.sleep_async(1),
            stepstone.sleep_until_async(dt.datetime(2000, 1, 1, tzinfo=dt.UTC)),
            stepstone.recv_async(),
            stepstone.wait_state_async("x", "k"),
            stepstone.continue_as_new_async(),
        ]:
            with pytest.raises(StepOutsideWorkflow) as raised:
                await coroutine
            messages.append(str(raised.value))
        return messages

    messages = run(rt, main)
    assert "stepstone.sleep_async() was called outside a workflow" in messages[0]
    assert "asyncio.sleep" in messages[0]
    assert "stepstone.wait_state_async() was called outside a workflow" in messages[3]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: stepstone.sleep_async(-1), "sleep_async() takes a duration from 0"),
        (lambda: stepstone.sleep_async(float("nan")), "finite number"),
        (lambda: stepstone.sleep_async(True), "finite number"),
        (lambda: stepstone.sleep_async(1e12), "100 years"),
        (
            lambda: stepstone.sleep_until_async(dt.datetime(2030, 1, 1)),
            "sleep_until_async() needs an aware datetime",
        ),
        (lambda: stepstone.recv_async(timeout=-3), "recv_async(timeout=...) takes a duration"),
        (lambda: stepstone.recv_async(topic="a\x00b"), "NUL"),
        (lambda: stepstone.wait_state_async("x", 7), "state key"),  # type: ignore[arg-type]
        (lambda: stepstone.wait_state_async("", "k"), "workflow_id must not be empty"),
    ],
)
def test_bad_async_waits_are_refused_and_write_nothing(
    rt: Runtime, call: Callable[[], Coroutine[Any, Any, Any]], message: str
) -> None:
    """Bad arguments to an async wait raise UsageError naming the value; nothing is
    recorded and the workflow goes on."""

    @rt.workflow()
    async def careless() -> str:
        try:
            await call()
        except UsageError as exc:
            return str(exc)
        return "accepted"

    async def main() -> Any:
        return await careless.with_options(workflow_id="bad-1")()

    assert message in run(rt, main)
    assert _steps(rt, "bad-1") == []


def test_async_waits_not_awaited_record_nothing(rt: Runtime) -> None:
    """An async wait or send called without await is never run: nothing is recorded, and
    the workflow's next step takes position 0."""

    @rt.step()
    async def next_step() -> str:
        return "next"

    @rt.workflow()
    async def forgetful() -> str:
        pending = [stepstone.sleep_async(5), stepstone.recv_async("t"), rt.send_async("x", 1)]
        for coroutine in pending:
            coroutine.close()
        return await next_step()

    async def main() -> Any:
        return await forgetful.with_options(workflow_id="nw-1")()

    assert run(rt, main) == "next"
    assert _steps(rt, "nw-1") == [(0, "next_step", "step", '"next"')]


def test_send_async_outside_a_workflow_needs_the_async_launch(rt: Runtime) -> None:
    """rt.send_async outside a workflow, before launch_async(), raises NotLaunched."""

    async def main() -> None:
        await rt.send_async("x", 1)

    with rt, pytest.raises(stepstone.NotLaunched, match="send_async"):
        asyncio.run(main())


def test_send_async_to_an_unknown_or_ended_execution_is_refused(rt: Runtime, db: str) -> None:
    """rt.send_async to an unknown id raises WorkflowNotFound; to an ended execution a
    UsageError naming its status; nothing is stored."""

    @rt.workflow()
    async def short() -> str:
        return "over"

    async def main() -> None:
        await short.with_options(workflow_id="se-1")()
        with pytest.raises(WorkflowNotFound, match="'nobody'"):
            await rt.send_async("nobody", 1)
        with pytest.raises(UsageError, match=r"has ended \(SUCCEEDED\)"):
            await rt.send_async("se-1", 1)

    run(rt, main)
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM stepstone.messages").fetchone() == (0,)


# -- end to end: these need the runtime to resume async executions it claims ----------------


def test_an_async_sleep_wakes_and_finishes(rt: Runtime) -> None:
    """A workflow sleeping with sleep_async is woken when due and finishes; its handle
    gets its result; a wake is not a recovery."""

    @rt.workflow()
    async def napper() -> str:
        await stepstone.sleep_async(0.5)
        return "rested"

    async def main() -> Any:
        handle = await rt.start_async(napper.with_options(workflow_id="e2e-1"))
        return await handle.result_async(timeout=10)

    assert run(rt, main) == "rested"
    assert _events(rt, "e2e-1") == [
        "execution_started",
        "execution_waiting",
        "execution_woken",
        "execution_succeeded",
    ]


def test_a_send_async_wakes_a_waiting_recv_async(rt: Runtime) -> None:
    """A recv_async with nothing in its mailbox suspends; rt.send_async wakes it and the
    workflow returns the message."""

    @rt.workflow()
    async def approval() -> Any:
        return await stepstone.recv_async("approval", timeout=60)

    async def main() -> Any:
        handle = await rt.start_async(approval.with_options(workflow_id="e2e-2"))
        await _until_status(rt, "e2e-2", "WAITING")
        await rt.send_async("e2e-2", {"ok": True}, topic="approval")
        return await handle.result_async(timeout=10)

    assert run(rt, main) == {"ok": True}


def test_a_wait_state_async_wakes_when_the_key_is_committed(rt: Runtime) -> None:
    """wait_state_async of a key not yet set suspends, and wakes when another execution
    commits it."""
    gate = asyncio.Event()

    @rt.step()
    async def hold() -> None:
        await gate.wait()

    @rt.workflow()
    async def setter() -> None:
        await hold()
        stepstone.current().state["ready"] = "yes"
        await hold()

    @rt.workflow()
    async def watcher() -> Any:
        return await stepstone.wait_state_async("e2e-setter", "ready", timeout=60)

    async def main() -> Any:
        await rt.start_async(setter.with_options(workflow_id="e2e-setter"))
        handle = await rt.start_async(watcher.with_options(workflow_id="e2e-3"))
        await _until_status(rt, "e2e-3", "WAITING")
        gate.set()
        return await handle.result_async(timeout=10)

    assert run(rt, main) == "yes"


def test_a_parent_waits_durably_for_a_child_that_waits(rt: Runtime) -> None:
    """A child that sleeps suspends; its parent waits for it durably (WAITING too), and
    both finish once the child is woken; the parent gets the child's result."""

    @rt.workflow()
    async def sleepy(n: int) -> int:
        await stepstone.sleep_async(0.5)
        return n + 1

    @rt.workflow()
    async def parent() -> int:
        return await sleepy(1)

    async def main() -> Any:
        handle = await rt.start_async(parent.with_options(workflow_id="e2e-4"))
        return await handle.result_async(timeout=10)

    assert run(rt, main) == 2
    assert rt.handle("e2e-4/0").status() == "SUCCEEDED"
    assert "execution_waiting" in _events(rt, "e2e-4")
