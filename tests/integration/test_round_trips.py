"""What each hot-path operation costs, counted by the server and on the wire.

The runtime talks to a throwaway cluster with pg_stat_statements loaded (statements as the
server counts them) through a proxy that counts the server's ReadyForQuery messages (round
trips). Transactions are counted as transaction ids the server assigned.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql

import stepstone
from stepstone import Runtime, migrations
from tests.support.cluster import Cluster, cluster
from tests.support.metering import Cost, Meter
from tests.support.wire import CountingProxy

if TYPE_CHECKING:
    from collections.abc import Iterator

DB = "counted"


@pytest.fixture(scope="module")
def server() -> Iterator[Cluster]:
    with cluster({"shared_preload_libraries": "'pg_stat_statements'"}) as c:
        with c.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
        with c.connect(DB) as conn:
            migrations.migrate(conn, "stepstone")
            conn.execute("CREATE TABLE marks (id bigserial PRIMARY KEY, note text NOT NULL)")
        yield c


@pytest.fixture
def proxy(server: Cluster) -> Iterator[CountingProxy]:
    p = CountingProxy("127.0.0.1", server.port)
    yield p
    p.close()


@pytest.fixture
def meter(server: Cluster, proxy: CountingProxy) -> Iterator[Meter]:
    m = Meter(server, proxy, DB)
    yield m
    m.admin.close()


@pytest.fixture
def counted_rt(proxy: CountingProxy) -> Iterator[Runtime]:
    # One pooled connection, so that every statement is prepared after the warm-up.
    runtime = Runtime(
        proxy.dsn(DB), executor_id="counted", pool_min_size=1, pool_max_size=1, workers=1
    )
    yield runtime
    runtime.shutdown()


def _warm(fn: Any, *args: Any) -> None:
    # psycopg prepares a statement on its sixth execution (one extra round trip, once per
    # connection); measure the steady state after that.
    for _ in range(8):
        fn(*args)


def _only(cost: Cost, name: str) -> int:
    return sum(calls for query, calls in cost.statements.items() if name in query)


def test_empty_workflow_costs_one_round_trip_to_start_and_one_to_finish(
    counted_rt: Runtime, meter: Meter
) -> None:
    """A workflow with no steps: start and completion, one statement and one commit each."""

    @counted_rt.workflow()
    def nothing() -> int:
        return 1

    counted_rt.launch()
    _warm(nothing)
    meter.begin()
    assert nothing() == 1
    cost = meter.end()
    assert cost.round_trips == 2
    assert cost.total_statements == 2
    assert _only(cost, "start_execution") == 1
    assert _only(cost, "finish_execution") == 1
    assert cost.transactions == 2


def test_plain_step_costs_exactly_one_round_trip_and_one_commit(
    counted_rt: Runtime, meter: Meter
) -> None:
    """Each plain step adds one statement, one round trip and one transaction, and no BEGIN."""

    @counted_rt.step()
    def echo(n: int) -> int:
        return n

    @counted_rt.workflow()
    def steps(n: int) -> int:
        return sum(echo(i) for i in range(n))

    counted_rt.launch()
    _warm(steps, 3)
    for n in (1, 10):
        meter.begin()
        assert steps(n) == sum(range(n))
        cost = meter.end()
        assert cost.round_trips == 2 + n
        assert _only(cost, "commit_step") == n
        assert cost.total_statements == 2 + n
        assert cost.transactions == 2 + n
        assert not any(q.upper() in ("BEGIN", "COMMIT") for q in cost.statements)


def test_a_wait_costs_one_round_trip_and_one_commit(counted_rt: Runtime, meter: Meter) -> None:
    """A sleep that is over, a receive whose message is there, and a sleep that suspends the
    execution each cost one statement, one round trip and one commit."""
    gate = threading.Event()

    @counted_rt.workflow()
    def short_sleep() -> None:
        stepstone.sleep(0)

    @counted_rt.workflow()
    def reader() -> Any:
        gate.wait(30)
        return stepstone.recv("m")

    @counted_rt.workflow()
    def long_sleep() -> None:
        stepstone.sleep(3600)

    counted_rt.launch()
    for i in range(8):  # psycopg prepares each statement on its sixth execution
        short_sleep()
        counted_rt.send(counted_rt.start(reader).workflow_id, i, topic="m")
        counted_rt.start(long_sleep)
    gate.set()
    time.sleep(1)

    meter.begin()
    short_sleep()
    cost = meter.end()
    assert (cost.total_statements, cost.round_trips, cost.transactions) == (3, 3, 3)
    assert _only(cost, "wait_v2") == 1

    gate.clear()
    handle = counted_rt.start(reader)
    counted_rt.send(handle.workflow_id, "here", topic="m")
    time.sleep(0.2)
    meter.begin()
    gate.set()
    assert handle.result(timeout=10) == "here"
    cost = meter.end()
    assert (cost.total_statements, cost.round_trips, cost.transactions) == (2, 2, 2)
    assert _only(cost, "wait_v2") == 1

    meter.begin()
    handle = counted_rt.start(long_sleep)
    time.sleep(0.3)
    cost = meter.end()
    assert handle.status() == "WAITING"
    assert (cost.total_statements, cost.round_trips, cost.transactions) == (2, 2, 2)
    assert _only(cost, "start_execution") == 1
    assert _only(cost, "wait_v2") == 1


def test_transaction_step_adds_no_round_trip_to_the_users_transaction(
    counted_rt: Runtime, meter: Meter, proxy: CountingProxy
) -> None:
    """A transaction step with k statements costs BEGIN + k + one round trip carrying the
    step record and COMMIT together: what the bare psycopg transaction costs, in one
    transaction."""

    @counted_rt.transaction()
    def mark(conn: psycopg.Connection[Any], notes: list[str]) -> int:
        for note in notes:
            conn.execute("INSERT INTO marks (note) VALUES (%s)", [note])
        return len(notes)

    @counted_rt.workflow()
    def marking(notes: list[str]) -> int:
        return mark(notes)

    counted_rt.launch()
    _warm(marking, ["warm"])

    # The same transaction written by hand with psycopg, through the same proxy.
    with psycopg.connect(proxy.dsn(DB)) as bare:
        for _ in range(8):
            with bare.transaction():
                bare.execute("INSERT INTO marks (note) VALUES (%s)", ["bare"])
                bare.execute("INSERT INTO marks (note) VALUES (%s)", ["bare"])
        proxy.reset()
        with bare.transaction():
            bare.execute("INSERT INTO marks (note) VALUES (%s)", ["bare"])
            bare.execute("INSERT INTO marks (note) VALUES (%s)", ["bare"])
        bare_round_trips = proxy.round_trips

    for k in (1, 2, 5):
        meter.begin()
        assert marking([f"n{i}" for i in range(k)]) == k
        cost = meter.end()
        step_round_trips = cost.round_trips - 2  # minus start and completion
        assert step_round_trips == k + 2
        assert _only(cost, "INSERT INTO marks") == k
        assert _only(cost, "commit_transaction_step") == 1
        assert _only(cost, "BEGIN") == 1
        assert _only(cost, "COMMIT") == 1
        assert cost.transactions == 1 + 2  # the step's one transaction, plus start and completion
        if k == 2:
            assert step_round_trips == bare_round_trips


def test_async_workflow_costs_what_the_sync_one_costs(counted_rt: Runtime, meter: Meter) -> None:
    """On the async pool, starting and finishing an async workflow cost one round trip
    each, and each async step one statement, one round trip and one commit, no BEGIN."""

    @counted_rt.step()
    async def echo(n: int) -> int:
        return n

    @counted_rt.workflow()
    async def steps(n: int) -> int:
        return sum([await echo(i) for i in range(n)])

    async def main() -> list[Cost]:
        costs = []
        async with counted_rt:
            for _ in range(8):  # psycopg prepares each statement on its sixth execution
                await steps(3)
            for n in (0, 1, 10):
                meter.begin()
                assert await steps(n) == sum(range(n))
                costs.append(meter.end())
        return costs

    for n, cost in zip((0, 1, 10), asyncio.run(main()), strict=True):
        assert cost.round_trips == 2 + n
        assert _only(cost, "start_execution") == 1
        assert _only(cost, "commit_step") == n
        assert _only(cost, "finish_execution") == 1
        assert cost.total_statements == 2 + n
        assert cost.transactions == 2 + n
        assert not any(q.upper() in ("BEGIN", "COMMIT") for q in cost.statements)


def test_async_waits_and_sends_cost_what_the_sync_ones_cost(
    counted_rt: Runtime, meter: Meter
) -> None:
    """In an async workflow, a sleep that is over and a receive whose message is there
    cost one statement, one round trip and one commit each (as in a sync one), and a send
    one statement besides its step record; rt.send_async outside a workflow is one
    statement."""

    @counted_rt.workflow()
    async def short_sleep() -> None:
        await stepstone.sleep_async(0)

    @counted_rt.workflow()
    async def talker() -> Any:
        me = stepstone.current().workflow_id
        await counted_rt.send_async(me, "hi", topic="m")
        return await stepstone.recv_async("m")

    @counted_rt.workflow()
    async def listener() -> Any:
        return await stepstone.recv_async("never", timeout=3600)

    async def main() -> list[Cost]:
        costs = []
        async with counted_rt:
            handle = await counted_rt.start_async(listener)
            for _ in range(8):  # psycopg prepares each statement on its sixth execution
                await short_sleep()
                await talker()
                await counted_rt.send_async(handle.workflow_id, 1, topic="other")
            meter.begin()
            await short_sleep()
            costs.append(meter.end())
            meter.begin()
            assert await talker() == "hi"
            costs.append(meter.end())
            meter.begin()
            await counted_rt.send_async(handle.workflow_id, 1, topic="other")
            costs.append(meter.end())
        return costs

    sleep, talk, send = asyncio.run(main())
    assert (sleep.total_statements, sleep.round_trips, sleep.transactions) == (3, 3, 3)
    assert _only(sleep, "wait_v2") == 1
    assert (talk.total_statements, talk.round_trips, talk.transactions) == (5, 5, 5)
    assert _only(talk, "send_v1") == 1
    assert _only(talk, "commit_step") == 1
    assert _only(talk, "wait_v2") == 1
    assert (send.total_statements, send.round_trips, send.transactions) == (1, 1, 1)
    assert _only(send, "send_v1") == 1


def test_async_transaction_step_adds_no_round_trip_to_the_users_transaction(
    counted_rt: Runtime, meter: Meter
) -> None:
    """An async transaction step with k statements costs BEGIN + k + one round trip
    carrying the step record and COMMIT together, in one transaction, as the sync one."""

    @counted_rt.transaction()
    async def mark(conn: psycopg.AsyncConnection[Any], notes: list[str]) -> int:
        for note in notes:
            await conn.execute("INSERT INTO marks (note) VALUES (%s)", [note])
        return len(notes)

    @counted_rt.workflow()
    async def marking(notes: list[str]) -> int:
        return await mark(notes)

    async def main() -> list[Cost]:
        costs = []
        async with counted_rt:
            for _ in range(8):
                await marking(["warm"])
            for k in (1, 2, 5):
                meter.begin()
                assert await marking([f"a{k}-{i}" for i in range(k)]) == k
                costs.append(meter.end())
        return costs

    for k, cost in zip((1, 2, 5), asyncio.run(main()), strict=True):
        assert cost.round_trips - 2 == k + 2  # minus start and completion
        assert _only(cost, "INSERT INTO marks") == k
        assert _only(cost, "commit_transaction_step") == 1
        assert _only(cost, "BEGIN") == 1
        assert _only(cost, "COMMIT") == 1
        assert cost.transactions == 1 + 2


def test_idle_executor_sends_one_heartbeat_and_one_sweep_per_interval(
    proxy: CountingProxy, meter: Meter
) -> None:
    """An executor with running executions sends, while it waits, only its heartbeat (one
    statement touching one row per interval) and its sweep (one statement per interval)."""
    release = threading.Event()
    runtime = Runtime(
        proxy.dsn(DB),
        executor_id="idle",
        workers=4,
        lease_seconds=2,
        heartbeat_interval=0.2,
        sweep_interval=0.3,
    )

    @runtime.step()
    def wait() -> None:
        release.wait(30)

    @runtime.workflow()
    def parked() -> None:
        wait()

    runtime.launch()
    try:
        for _ in range(20):
            runtime.start(parked)
        # The started ones reach their step, and psycopg prepares the heartbeat and the sweep
        # statements (on their sixth call, with one extra round trip each).
        time.sleep(2.5)
        meter.begin()
        time.sleep(3.0)
        cost = meter.end()
    finally:
        release.set()
        runtime.shutdown()
    heartbeats = meter.calls(cost, "SET heartbeat_at = now()")
    sweeps = meter.calls(cost, ".sweep_v3(")
    # 3 s at 0.2 s and 0.3 s intervals, with 10% jitter either way.
    assert 12 <= heartbeats <= 17, cost.statements
    assert 8 <= sweeps <= 12, cost.statements
    assert cost.total_statements == heartbeats + sweeps, cost.statements
    heartbeat_rows = sum(r for q, r in cost.rows.items() if "SET heartbeat_at = now()" in q)
    assert heartbeat_rows == heartbeats  # one row each, with 20 executions running
    assert cost.round_trips == heartbeats + sweeps


def test_an_enqueue_costs_one_round_trip_and_one_commit(counted_rt: Runtime, meter: Meter) -> None:
    """Enqueuing from one thread is one statement, one round trip and one commit."""
    queue = counted_rt.queue("counted-enqueue")
    counted_rt.serve()  # nothing dispatches here: only the enqueue is measured

    @counted_rt.workflow()
    def queued(n: int) -> int:
        return n

    counted_rt.launch()
    _warm(lambda: queue.enqueue(queued, 1))
    meter.begin()
    queue.enqueue(queued, 2)
    cost = meter.end()
    assert (cost.total_statements, cost.round_trips, cost.transactions) == (1, 1, 1)
    assert _only(cost, "enqueue_v1") == 1


def test_an_async_enqueue_costs_one_round_trip_and_one_commit(
    counted_rt: Runtime, meter: Meter, proxy: CountingProxy
) -> None:
    """Queue.enqueue_async and Client.enqueue_async are each one statement, one round trip
    and one commit on the async pool, as their sync twins."""
    queue = counted_rt.queue("counted-async-enqueue")
    counted_rt.serve()  # nothing dispatches here: only the enqueues are measured

    @counted_rt.workflow()
    def queued_async(n: int) -> int:
        return n

    async def main() -> list[Cost]:
        costs = []
        async with counted_rt, stepstone.Client(proxy.dsn(DB), pool_max_size=1) as client:
            for i in range(8):  # psycopg prepares each statement on its sixth execution
                await queue.enqueue_async(queued_async, i)
                await client.enqueue_async("counted-async-enqueue", "queued_async", i)
            meter.begin()
            await queue.enqueue_async(queued_async, 8)
            costs.append(meter.end())
            meter.begin()
            await client.enqueue_async("counted-async-enqueue", "queued_async", 8)
            costs.append(meter.end())
        return costs

    for cost in asyncio.run(main()):
        assert (cost.total_statements, cost.round_trips, cost.transactions) == (1, 1, 1)
        assert _only(cost, "enqueue_v1") == 1


def test_an_idle_dispatcher_sends_one_statement_per_interval_for_all_its_queues(
    proxy: CountingProxy, meter: Meter
) -> None:
    """A worker serving 20 queues with nothing to start sends one dispatch statement per
    dispatch_interval for all of them, besides its heartbeat and its sweep."""
    runtime = Runtime(
        proxy.dsn(DB),
        executor_id="idle-queues",
        lease_seconds=2,
        heartbeat_interval=0.2,
        sweep_interval=0.3,
        dispatch_interval=0.3,
    )
    for i in range(20):
        runtime.queue(f"idle-{i}", concurrency=5)

    @runtime.workflow()
    def never() -> None:
        return None

    runtime.launch()
    try:
        time.sleep(2.5)  # past psycopg's preparing of the repeated statements
        meter.begin()
        time.sleep(3.0)
        cost = meter.end()
    finally:
        runtime.shutdown()
    heartbeats = meter.calls(cost, "SET heartbeat_at = now()")
    sweeps = meter.calls(cost, ".sweep_v3(")
    dispatches = meter.calls(cost, ".dispatch_v1(")
    # 3 s at 0.3 s intervals, with 10% jitter either way.
    assert 8 <= dispatches <= 12, cost.statements
    assert cost.total_statements == heartbeats + sweeps + dispatches, cost.statements
