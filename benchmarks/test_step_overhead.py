"""Per-step and per-workflow cost, side by side with the cost of one durable commit.

`floor` is psycopg inserting one ~200-byte row into an indexed table and committing: the
price of one durable write on this machine. Compare `workflow_10_steps - workflow_0_steps`
divided by 10 (one step) and `workflow_0_steps` (start + finish) against it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from stepstone import Runtime

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

    rt.launch()
    with rt.store.connection() as conn:
        conn.execute("CREATE TABLE bench_rows (id bigserial PRIMARY KEY, payload text NOT NULL)")
    return {"steps": steps, "one_transaction": one_transaction}


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
