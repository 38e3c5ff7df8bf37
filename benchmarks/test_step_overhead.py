"""Per-step and per-workflow cost, side by side with the cost of one durable commit.

`floor` is psycopg inserting one ~200-byte row into an indexed table and committing: the
price of one durable write on this machine. Compare `workflow_10_steps - workflow_0_steps`
divided by 10 (one step) and `workflow_0_steps` (start + finish) against it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql

import stepstone
from stepstone import Runtime
from stepstone.migrations import load_migrations

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pytest_benchmark.fixture import BenchmarkFixture


@pytest.fixture(scope="module")
def rt(bench_db: str) -> Iterator[Runtime]:
    runtime = Runtime(bench_db, pool_min_size=1, pool_max_size=2)
    yield runtime
    runtime.shutdown()


@pytest.fixture(scope="module")
def flows(rt: Runtime) -> dict[str, Any]:
    @rt.step()
    def echo(n: int) -> int:
        return n

    @rt.transaction()
    def insert(conn: psycopg.Connection[Any], n: int) -> int:
        conn.execute("INSERT INTO bench_rows (payload) VALUES (%s)", ["x" * 200])
        return n

    @rt.workflow()
    def steps(n: int) -> int:
        return sum(echo(i) for i in range(n))

    @rt.workflow()
    def one_transaction() -> int:
        return insert(1)

    @rt.workflow()
    def stateful(n: int) -> int:
        state = stepstone.current().state
        for i in range(n):
            state["k"] = echo(i)
        return n

    @rt.step()
    async def async_echo(n: int) -> int:
        return n

    @rt.workflow()
    async def async_steps(n: int) -> int:
        return sum([await async_echo(i) for i in range(n)])

    rt.launch()
    with rt.store.connection() as conn:
        conn.execute("CREATE TABLE bench_rows (id bigserial PRIMARY KEY, payload text NOT NULL)")
    return {
        "steps": steps,
        "one_transaction": one_transaction,
        "stateful": stateful,
        "async_steps": async_steps,
    }


@pytest.fixture(scope="module")
def loop(rt: Runtime, flows: dict[str, Any]) -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop with the runtime's async pool open on it."""
    event_loop = asyncio.new_event_loop()
    event_loop.run_until_complete(rt.launch_async())
    yield event_loop
    event_loop.run_until_complete(rt.store.close_async())
    event_loop.close()


def test_floor_one_durable_insert(
    benchmark: BenchmarkFixture, bench_db: str, flows: dict[str, Any]
) -> None:
    """psycopg: INSERT one ~200-byte row and COMMIT."""
    with psycopg.connect(bench_db) as conn:

        def insert() -> None:
            conn.execute("INSERT INTO bench_rows (payload) VALUES (%s)", ["x" * 200])
            conn.commit()

        benchmark.pedantic(insert, rounds=300, warmup_rounds=20)


@pytest.mark.parametrize("n", [0, 1, 10])
def test_workflow_of_n_plain_steps(
    benchmark: BenchmarkFixture, flows: dict[str, Any], n: int
) -> None:
    """A workflow of n trivial steps, called directly."""
    steps = flows["steps"]
    benchmark.pedantic(steps, args=(n,), rounds=200, warmup_rounds=20)


def test_workflow_with_one_transaction_step(
    benchmark: BenchmarkFixture, flows: dict[str, Any]
) -> None:
    """A workflow whose one transaction step inserts one row."""
    benchmark.pedantic(flows["one_transaction"], rounds=200, warmup_rounds=20)


def _write_state_without_waiter_probe(rt: Runtime) -> None:
    """Put back write_state_v1 as 0002 defined it (before 0005 added the probe that makes
    executions waiting for a key due), for a side-by-side measure of that probe."""
    (old,) = [m for m in load_migrations() if m.version == 2]
    start = old.text.index("CREATE FUNCTION {schema}.write_state_v1(")
    body = old.text[start : old.text.index("END $$;", start) + len("END $$;")]
    statement = body.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
    with rt.store.connection() as conn:
        conn.execute(sql.SQL(statement).format(schema=sql.Identifier("stepstone")))  # type: ignore[arg-type]


@pytest.mark.parametrize("write_state", ["0005 (waiter probe)", "0002 (no probe)"])
def test_workflow_of_10_steps_that_change_state(
    benchmark: BenchmarkFixture, flows: dict[str, Any], rt: Runtime, write_state: str
) -> None:
    """A workflow of 10 trivial steps, each followed by a state change (committed with the
    next step): the cost of write_state_v1's probe for executions waiting on a key, with
    the probe (the schema as migrated) and without it (0002's function put back)."""
    if write_state.startswith("0002"):
        _write_state_without_waiter_probe(rt)
    benchmark.pedantic(flows["stateful"], args=(10,), rounds=200, warmup_rounds=20)


@pytest.mark.parametrize("n", [0, 1, 10])
def test_async_workflow_of_n_plain_steps(
    benchmark: BenchmarkFixture, flows: dict[str, Any], loop: asyncio.AbstractEventLoop, n: int
) -> None:
    """The same workflow written async, awaited on one event loop (each call one
    run_until_complete): compare with test_workflow_of_n_plain_steps."""
    steps = flows["async_steps"]
    benchmark.pedantic(lambda: loop.run_until_complete(steps(n)), rounds=200, warmup_rounds=20)
