"""Recovery inside one test process: executors, leases, sweeps and what is left alone.

Processes that really die are in tests/crash; here an execution is interrupted by a
BaseException (nothing is recorded for it, as when a process dies) and executors are
Runtimes in this process.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

import stepstone
from stepstone import ExecutorIdInUse, RecoveryLimitExceeded, Runtime, WorkflowFailed
from tests.support.runtime import FAST, Crash


def _define(
    rt: Runtime, crash: dict[str, bool], ran: list[str], name: str = "order", version: str = "1"
) -> Any:
    @rt.step(name="reserve")
    def reserve(sku: str) -> str:
        ran.append("reserve")
        return f"reserved {sku}"

    @rt.step(name="ship")
    def ship(sku: str) -> str:
        ran.append("ship")
        if crash.get("now"):
            raise Crash
        return f"shipped {sku}"

    @rt.workflow(name=name, version=version)
    def order(sku: str) -> str:
        return f"{reserve(sku)}, {ship(sku)}"

    return order


def _interrupt(db: str, executor_id: str, workflow_id: str = "order-1", **kwargs: Any) -> None:
    """Leave `workflow_id` RUNNING with its first step recorded, owned by `executor_id`."""
    rt = Runtime(db, executor_id=executor_id, **FAST)
    order = _define(rt, {"now": True}, [], **kwargs)
    rt.launch()
    with pytest.raises(Crash):
        order.with_options(workflow_id=workflow_id)("sku-1")
    rt.shutdown()


def _execution(db: str, workflow_id: str) -> tuple[Any, ...]:
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT status, owner, epoch, recoveries FROM stepstone.executions WHERE id = %s",
            [workflow_id],
        ).fetchone()
    assert row is not None
    return tuple(row)


def _resumed_reasons(rt: Runtime, workflow_id: str) -> list[Any]:
    return [
        log.details["reason"]
        for log in rt.store.list_logs(workflow_id)
        if log.event == "execution_resumed"
    ]


def _expire(db: str, executor_id: str) -> None:
    """What a dead executor looks like once its lease ran out."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO stepstone.executors (id, hostname, pid, heartbeat_at, lease_seconds) "
            "VALUES (%s, 'gone', 1, now() - interval '1 hour', 30) "
            "ON CONFLICT (id) DO UPDATE SET heartbeat_at = now() - interval '1 hour'",
            [executor_id],
        )


def test_launch_resumes_own_executions_at_once(db: str) -> None:
    """A restart with the same executor id resumes its interrupted executions in launch(),
    replaying recorded steps and running the rest."""
    _interrupt(db, "worker-a")
    ran: list[str] = []
    rt = Runtime(db, executor_id="worker-a", **FAST)
    _define(rt, {}, ran)
    rt.launch()
    try:
        assert rt.handle("order-1").result(timeout=15) == "reserved sku-1, shipped sku-1"
        assert ran == ["ship"]
        assert _resumed_reasons(rt, "order-1") == ["restart"]
        assert _execution(db, "order-1") == ("SUCCEEDED", "worker-a", 2, 1)
    finally:
        rt.shutdown()


def test_another_executor_claims_executions_whose_lease_expired(db: str) -> None:
    """An execution whose owner's lease expired is claimed, with a new epoch, by another
    executor's sweep, and the claim is in the audit log."""
    _interrupt(db, "worker-a")
    _expire(db, "worker-a")
    ran: list[str] = []
    rt = Runtime(db, executor_id="worker-b", **FAST)
    _define(rt, {}, ran)
    rt.launch()
    try:
        assert rt.handle("order-1").result(timeout=15) == "reserved sku-1, shipped sku-1"
        assert ran == ["ship"]
        assert _execution(db, "order-1") == ("SUCCEEDED", "worker-b", 2, 1)
        (resumed,) = [
            log for log in rt.store.list_logs("order-1") if log.event == "execution_resumed"
        ]
        assert resumed.actor == "worker-b"
        assert resumed.details == {
            "reason": "expired_lease",
            "epoch": 2,
            "previous_owner": "worker-a",
            "previous_epoch": 1,
        }
    finally:
        rt.shutdown()


def test_shutdown_ends_the_lease_so_leftovers_move_at_once(db: str) -> None:
    """After a clean shutdown, another executor can claim what was left without waiting."""
    _interrupt(db, "worker-a")  # shuts worker-a down
    rt = Runtime(
        db, executor_id="worker-b", lease_seconds=30, heartbeat_interval=5, sweep_interval=5
    )
    _define(rt, {}, [])
    rt.launch()  # the first sweep runs inside launch()
    try:
        assert rt.handle("order-1").result(timeout=10) == "reserved sku-1, shipped sku-1"
    finally:
        rt.shutdown()


def test_live_executor_keeps_its_executions(db: str) -> None:
    """While its owner's heartbeat is fresh, another executor's sweeps leave an execution alone."""
    release = threading.Event()
    a = Runtime(db, executor_id="worker-a", **FAST)

    @a.step(name="wait")
    def wait_a() -> str:
        release.wait(20)
        return "a"

    @a.workflow(name="long")
    def long_a() -> str:
        return wait_a()

    b = Runtime(db, executor_id="worker-b", **FAST)

    @b.step(name="wait")
    def wait_b() -> str:
        return "b"

    @b.workflow(name="long")
    def long_b() -> str:
        return wait_b()

    a.launch()
    b.launch()
    try:
        handle = a.start(long_a.with_options(workflow_id="long-1"))
        time.sleep(FAST["lease_seconds"] * 3)  # many sweeps by b, many heartbeats by a
        assert _execution(db, "long-1")[:3] == ("RUNNING", "worker-a", 1)
        release.set()
        assert handle.result(timeout=10) == "a"
    finally:
        release.set()
        b.shutdown()
        a.shutdown()


def test_second_live_process_with_the_same_executor_id_is_refused(db: str) -> None:
    """Two live runtimes never share an executor id: the second launch fails, naming the holder."""
    a = Runtime(db, executor_id="shared-id", **FAST)
    a.launch()
    try:
        b = Runtime(db, executor_id="shared-id", **{**FAST, "connect_timeout": 0.5})
        started = time.monotonic()
        with pytest.raises(
            ExecutorIdInUse, match=r"'shared-id' is held by another live process \(host .*, pid \d+"
        ):
            b.launch()
        assert time.monotonic() - started < 5
    finally:
        a.shutdown()
    again = Runtime(db, executor_id="shared-id", **FAST)
    again.launch()  # free again once the holder is gone
    again.shutdown()


def test_a_launch_that_fails_after_taking_the_executor_id_gives_it_back(db: str) -> None:
    """When registering the definitions fails (here a trigger refuses them), launch() raises
    and gives the executor id back: the next launch with that id does not wait for it."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'definitions are frozen'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON stepstone.workflows "
            "FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    first = Runtime(db, executor_id="fragile", **FAST)

    @first.workflow()
    def flow() -> int:
        return 1

    with pytest.raises(stepstone.PersistenceError, match="definitions are frozen"):
        first.launch()
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("DROP TRIGGER refuse ON stepstone.workflows")
    second = Runtime(db, executor_id="fragile", **{**FAST, "connect_timeout": 0.5})
    second.workflow(name="flow")(lambda: 1)
    second.launch()  # ExecutorIdInUse if the failed launch still held the id
    second.shutdown()


def test_unregistered_workflows_and_versions_are_left_alone_loudly(db: str) -> None:
    """Expired executions of a workflow or version this executor lacks are not claimed, are
    logged once each, and are counted by health_status(); an executor that has them claims them."""
    _interrupt(db, "worker-a", workflow_id="ghost-1", name="ghost")
    _interrupt(db, "worker-z", workflow_id="old-1", name="order", version="0")
    _expire(db, "worker-a")
    _expire(db, "worker-z")
    b = Runtime(db, executor_id="worker-b", **FAST)
    _define(b, {}, [])  # order, version 1
    with capture_logs() as logs:
        b.launch()
        time.sleep(FAST["sweep_interval"] * 5)
        health = b.health_status()
    try:
        unclaimable = sorted(
            e["workflow_id"] for e in logs if e["event"] == "execution_unclaimable"
        )
        assert unclaimable == ["ghost-1", "old-1"]
        assert (health.unclaimable, health.expired_lease, health.running) == (2, 2, 2)
        assert not health.healthy
        assert _execution(db, "ghost-1")[:2] == ("RUNNING", "worker-a")
        ghost_runner = Runtime(db, executor_id="worker-c", **FAST)
        _define(ghost_runner, {}, [], name="ghost")
        ghost_runner.launch()
        try:
            assert (
                ghost_runner.handle("ghost-1").result(timeout=15) == "reserved sku-1, shipped sku-1"
            )
            assert b.health_status().unclaimable == 1
        finally:
            ghost_runner.shutdown()
    finally:
        b.shutdown()


def test_own_execution_without_its_definition_is_released_to_an_executor_that_has_it(
    db: str,
) -> None:
    """A restarted executor that no longer registers a workflow gives its executions up
    (logged), and an executor registering it claims them."""
    _interrupt(db, "worker-a", name="retired")
    a = Runtime(db, executor_id="worker-a", **FAST)
    _define(a, {}, [])  # registers "order" only
    with capture_logs() as logs:
        a.launch()
    try:
        assert [e["workflow_id"] for e in logs if e["event"] == "execution_released"] == ["order-1"]
        assert _execution(db, "order-1")[:2] == ("RUNNING", None)
        c = Runtime(db, executor_id="worker-c", **FAST)
        _define(c, {}, [], name="retired")
        c.launch()
        try:
            assert c.handle("order-1").result(timeout=15) == "reserved sku-1, shipped sku-1"
            assert _resumed_reasons(c, "order-1") == ["released"]
        finally:
            c.shutdown()
    finally:
        a.shutdown()


def test_failed_executions_are_not_run_again_by_recovery(db: str) -> None:
    """A workflow that raised is FAILED with its error, and no executor re-runs it."""
    a = Runtime(db, executor_id="worker-a", **FAST)
    runs: list[int] = []

    @a.workflow(name="broken")
    def broken() -> None:
        runs.append(1)
        raise ValueError("bad input")

    a.launch()
    with pytest.raises(WorkflowFailed):
        broken.with_options(workflow_id="broken-1")()
    a.shutdown()
    _expire(db, "worker-a")
    again = Runtime(db, executor_id="worker-a", **FAST)
    again.workflow(name="broken")(broken.fn)
    again.launch()
    try:
        time.sleep(FAST["sweep_interval"] * 3)
        assert runs == [1]
        assert _execution(db, "broken-1")[0] == "FAILED"
    finally:
        again.shutdown()


def test_recovery_limit_ends_a_crash_loop(db: str) -> None:
    """An execution recovered more than max_recoveries times ends FAILED instead of running again."""
    _interrupt(db, "worker-a")
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE stepstone.executions SET recoveries = 3 WHERE id = 'order-1'")
    ran: list[str] = []
    rt = Runtime(db, executor_id="worker-a", max_recoveries=3, **FAST)
    _define(rt, {}, ran)
    rt.launch()
    try:
        with pytest.raises(WorkflowFailed, match="RecoveryLimitExceeded") as info:
            rt.handle("order-1").result(timeout=10)
        assert isinstance(info.value.__cause__, RecoveryLimitExceeded)
        assert "recovered 4 times, more than max_recoveries=3" in str(info.value.__cause__)
        assert ran == []
        assert _execution(db, "order-1")[0] == "FAILED"
    finally:
        rt.shutdown()


def test_sweep_claims_only_what_the_pool_has_room_for(db: str) -> None:
    """A sweep claims at most twice the worker count; the rest waits for later sweeps or
    for other executors, and everything completes."""
    for n in range(12):
        _interrupt(db, "worker-a", workflow_id=f"order-{n}")
    _expire(db, "worker-a")
    gate = threading.Event()
    rt = Runtime(db, executor_id="worker-b", workers=2, **FAST)

    @rt.step(name="reserve")
    def reserve(sku: str) -> str:
        return f"reserved {sku}"

    @rt.step(name="ship")
    def ship(sku: str) -> str:
        gate.wait(20)
        return f"shipped {sku}"

    @rt.workflow(name="order")
    def order(sku: str) -> str:
        return f"{reserve(sku)}, {ship(sku)}"

    rt.launch()
    try:
        time.sleep(FAST["sweep_interval"] * 3)
        with psycopg.connect(db) as conn:
            owned = conn.execute(
                "SELECT count(*) FROM stepstone.executions WHERE owner = 'worker-b'"
            ).fetchone()
        assert owned == (4,)
        gate.set()
        for n in range(12):
            assert rt.handle(f"order-{n}").result(timeout=20) == "reserved sku-1, shipped sku-1"
    finally:
        gate.set()
        rt.shutdown()


def test_execution_stopped_by_a_database_error_is_resumed_by_its_own_executor(db: str) -> None:
    """When the connection dies under a step commit, the execution stays RUNNING and this
    executor's next sweep resumes it; the handle still returns the result."""
    rt = Runtime(db, executor_id="worker-a", pool_min_size=1, pool_max_size=1, **FAST)
    killed: list[int] = []

    @rt.step()
    def cut_the_line() -> str:
        if not killed:
            with psycopg.connect(db, autocommit=True) as admin:
                row = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND application_name = ''"
                ).fetchone()
                killed.append(int(row[0]) if row else 0)
        return "done"

    @rt.workflow()
    def fragile() -> str:
        return cut_the_line()

    rt.launch()
    try:
        handle = rt.start(fragile.with_options(workflow_id="fragile-1"))
        assert handle.result(timeout=20) == "done"
        assert killed[0] >= 1
        assert _resumed_reasons(rt, "fragile-1") == ["retry"]
    finally:
        rt.shutdown()


def test_an_async_execution_stopped_by_a_database_error_is_resumed_by_its_own_executor(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    """When the connection dies under an async step's commit, the execution stays RUNNING
    (nothing recorded for that step) and this executor's next sweep resumes it on the
    runtime's loop thread; result_async() still returns the result, and no task is left
    with an exception asyncio would report as never retrieved."""
    rt = Runtime(db, executor_id="worker-a", pool_min_size=1, pool_max_size=1, **FAST)
    killed: list[int] = []
    threads: list[str] = []

    @rt.step()
    async def cut_the_line() -> str:
        threads.append(threading.current_thread().name)
        if not killed:
            async with await psycopg.AsyncConnection.connect(db, autocommit=True) as admin:
                cursor = await admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND application_name = ''"
                )
                row = await cursor.fetchone()
                killed.append(int(row[0]) if row else 0)
        return "done"

    @rt.workflow()
    async def fragile() -> str:
        return await cut_the_line()

    async def main() -> str:
        async with rt:
            handle = await rt.start_async(fragile.with_options(workflow_id="fragile-a"))
            result: str = await handle.result_async(timeout=20)
            return result

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        assert asyncio.run(main()) == "done"
        gc.collect()  # a task's unretrieved exception is reported when it is collected
    assert not [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    rt.store.open(migrate=False)
    try:
        assert killed[0] >= 1
        # The runtime's loop has a pool of its own, whose idle connection died too: its
        # first resumed run may meet it (and be resumed once more).
        reasons = _resumed_reasons(rt, "fragile-a")
        assert reasons
        assert set(reasons) == {"retry"}
        assert threads[0] == "MainThread"
        assert threads[1:]
        assert set(threads[1:]) == {"stepstone-loop"}
        assert [(s.seq, s.name, s.attempts) for s in rt.store.list_steps("fragile-a")] == [
            (0, "cut_the_line", 1)
        ]
    finally:
        rt.store.close()
