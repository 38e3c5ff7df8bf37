"""Recovery at scale, and what an idle executor costs the database.

- `launch()` of a restarted executor resuming 10,000 interrupted executions, each with one
  step recorded and one to go, until all have finished (goal: under 10 s on 2 cores).
- Statements per second an idle executor sends with the default intervals (goal: one
  heartbeat per heartbeat interval plus one sweep per sweep interval: 0.4/s), counted on the
  wire; reported in the benchmark's extra_info.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import psycopg

from stepstone import Runtime
from tests.support.wire import CountingProxy

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

INTERRUPTED = 10_000


def _interrupt_many(dsn: str, executor_id: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE stepstone.executions CASCADE")
        conn.execute(
            "INSERT INTO stepstone.executors (id, hostname, pid) VALUES (%s, 'bench', 1) "
            "ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
            [executor_id],
        )
        conn.execute(
            "INSERT INTO stepstone.executions (id, workflow_name, workflow_version, status, inputs, owner, epoch) "
            "SELECT 'r-' || n, 'two_steps', '1', 'RUNNING', format('{\"args\":[%%s],\"kwargs\":{}}', n), %s, 1 "
            "FROM generate_series(1, %s) n",
            [executor_id, INTERRUPTED],
        )
        conn.execute(
            "INSERT INTO stepstone.steps (execution_id, seq, name, kind, output, attempts, started_at, finished_at) "
            "SELECT 'r-' || n, 0, 'first', 'step', n::text, 1, now(), now() FROM generate_series(1, %s) n",
            [INTERRUPTED],
        )
        conn.execute("ANALYZE stepstone.executions")
        conn.execute("ANALYZE stepstone.steps")


def _restart_and_finish(dsn: str, executor_id: str) -> None:
    rt = Runtime(dsn, executor_id=executor_id, workers=8, pool_max_size=10)

    @rt.step()
    def first(n: int) -> int:
        raise AssertionError("recorded: must replay, not run")

    @rt.step()
    def second(n: int) -> int:
        return n + 1

    @rt.workflow()
    def two_steps(n: int) -> int:
        return first(n) + second(n)

    rt.launch()
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FROM stepstone.executions WHERE status = 'RUNNING'"
            ).fetchone()
            if row == (0,):
                break
            time.sleep(0.02)
        done = conn.execute(
            "SELECT count(*) FROM stepstone.executions WHERE status = 'SUCCEEDED'"
        ).fetchone()
    rt.shutdown()
    assert done == (INTERRUPTED,)


def test_launch_resumes_and_finishes_10000_interrupted_executions(
    benchmark: BenchmarkFixture, bench_db: str
) -> None:
    """Seconds from launch() of the restarted executor until all 10,000 have finished."""
    benchmark.pedantic(
        _restart_and_finish,
        args=(bench_db, "bench-restart"),
        setup=lambda: _interrupt_many(bench_db, "bench-restart"),
        rounds=3,
        iterations=1,
    )


def test_idle_executor_statements_per_second(benchmark: BenchmarkFixture, bench_db: str) -> None:
    """Round trips per second of an idle executor with default intervals, over 20 s."""
    params = psycopg.conninfo.conninfo_to_dict(bench_db)
    proxy = CountingProxy(str(params.get("host", "127.0.0.1")), int(params.get("port", 5432)))
    rt = Runtime(proxy.dsn(str(params["dbname"])), executor_id="bench-idle")
    rt.launch()
    window = 20.0

    def measure() -> float:
        proxy.reset()
        time.sleep(window)
        return proxy.round_trips / window

    try:
        rate = benchmark.pedantic(measure, rounds=1, iterations=1)
    finally:
        rt.shutdown()
        proxy.close()
    benchmark.extra_info["statements_per_second"] = round(rate, 3)
    benchmark.extra_info["expected_per_second"] = 1 / 5 + 1 / 5
    assert rate <= 0.6
