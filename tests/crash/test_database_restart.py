"""PostgreSQL restarted while workflows run (a throwaway cluster on a loopback port, never
the machine's shared server): the pool reconnects, interrupted executions resume, and every
workflow completes with nothing lost or doubled."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from stepstone import Runtime, migrations
from tests.support.cluster import Cluster, cluster

if TYPE_CHECKING:
    from collections.abc import Iterator

    import psycopg

WORKFLOWS = 30
STEPS = 6


@pytest.fixture
def server() -> Iterator[Cluster]:
    with cluster() as c:
        with c.connect() as conn:
            migrations.migrate(conn, "stepstone")
            conn.execute("CREATE TABLE effects (execution_id text NOT NULL, step int NOT NULL)")
        yield c


@pytest.mark.slow
def test_workflows_survive_a_database_restart(server: Cluster) -> None:
    """A restart in the middle of 30 six-step workflows: all end SUCCEEDED, each
    transaction step's effect exactly once, each plain step's body at least once."""
    ran: list[tuple[str, int]] = []
    lock = threading.Lock()
    rt = Runtime(
        server.dsn(),
        executor_id="survivor",
        workers=8,
        pool_max_size=8,
        lease_seconds=5,
        heartbeat_interval=0.5,
        sweep_interval=0.2,
        connect_timeout=5,
    )

    @rt.transaction()
    def record(conn: psycopg.Connection[Any], execution_id: str, step: int) -> None:
        conn.execute("INSERT INTO effects VALUES (%s, %s)", [execution_id, step])

    @rt.step()
    def work(execution_id: str, step: int) -> int:
        with lock:
            ran.append((execution_id, step))
        time.sleep(0.05)
        return step

    @rt.workflow()
    def steady(execution_id: str) -> int:
        total = 0
        for step in range(STEPS):
            if step % 2 == 0:
                record(execution_id, step)
            else:
                total += work(execution_id, step)
        return total

    rt.launch()
    try:
        handles = [
            rt.start(steady.with_options(workflow_id=f"w-{n}"), f"w-{n}") for n in range(WORKFLOWS)
        ]
        time.sleep(0.4)  # some have finished, most are between steps
        server.stop("fast")
        time.sleep(1.0)  # commits fail while it is down
        server.start()
        results = [h.result(timeout=90) for h in handles]
        assert results == [1 + 3 + 5] * WORKFLOWS
        with server.connect() as conn:
            statuses = conn.execute(
                "SELECT status, count(*) FROM stepstone.executions GROUP BY status"
            ).fetchall()
            effects = conn.execute(
                "SELECT execution_id, step, count(*) FROM effects GROUP BY 1, 2"
            ).fetchall()
            resumed = conn.execute(
                "SELECT count(DISTINCT execution_id) FROM stepstone.logs WHERE event = 'execution_resumed'"
            ).fetchone()
    finally:
        rt.shutdown()
    assert statuses == [("SUCCEEDED", WORKFLOWS)]
    assert sorted((e, s) for e, s, _ in effects) == sorted(
        (f"w-{n}", s) for n in range(WORKFLOWS) for s in range(0, STEPS, 2)
    )
    assert all(count == 1 for _, _, count in effects)
    assert {(e, s) for e, s in ran} == {
        (f"w-{n}", s) for n in range(WORKFLOWS) for s in range(1, STEPS, 2)
    }
    assert resumed is not None
    assert resumed[0] > 0  # the restart interrupted executions, and they were resumed
