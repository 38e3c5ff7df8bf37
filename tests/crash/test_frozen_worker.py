"""Fencing with real processes: a worker frozen (SIGSTOP) past its lease, whose execution
another worker claims and completes, cannot commit anything more for it once it thaws."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

import psycopg

if TYPE_CHECKING:
    from tests.crash.conftest import Workers


def _owner(db: str) -> tuple[object, ...] | None:
    with psycopg.connect(db) as conn:
        return conn.execute(
            "SELECT owner, epoch, status FROM stepstone.executions WHERE id = 'order-7'"
        ).fetchone()


def test_thawed_worker_is_fenced_out_and_its_sql_rolls_back(workers: Workers) -> None:
    """Frozen inside a transaction step after its SQL: after another worker took over, the
    thawed worker's commit fails in the database, its SQL rolls back, it stops running the
    workflow (OwnershipLost), and its caller gets the outcome of the other worker's run."""
    frozen = workers.start("frozen", "order", "pause:inside_transaction_after_sql")
    deadline = time.monotonic() + 30
    while "paused inside_transaction_after_sql" not in workers.note_lines():
        assert time.monotonic() < deadline
        assert frozen.poll() is None
        time.sleep(0.01)
    frozen.send_signal(signal.SIGSTOP)
    try:
        rescuer = workers.start("rescuer", "serve")
        while _owner(workers.db) != ("rescuer", 2, "SUCCEEDED"):
            assert time.monotonic() < deadline, _owner(workers.db)
            time.sleep(0.05)
    finally:
        frozen.send_signal(signal.SIGCONT)
    out, err = frozen.communicate(timeout=30)
    assert frozen.returncode == 0, err
    assert out.strip().splitlines()[-1] == "charged order-7, done"
    assert "OwnershipLost" in out + err
    assert "no longer owns workflow 'order-7' at epoch 1" in out + err
    rescued, _ = rescuer.communicate(timeout=30)
    assert rescued.strip().endswith("served")

    with psycopg.connect(workers.db) as conn:
        effects = conn.execute(
            "SELECT count(*) FROM effects WHERE execution_id = 'order-7'"
        ).fetchone()
        steps = conn.execute(
            "SELECT seq, name FROM stepstone.steps WHERE execution_id = 'order-7' ORDER BY seq"
        ).fetchall()
        output = conn.execute(
            "SELECT output FROM stepstone.executions WHERE id = 'order-7'"
        ).fetchone()
    assert effects == (1,)  # the rescuer's; the frozen worker's insert rolled back
    assert steps == [(0, "reserve"), (1, "charge")]
    assert output == ('"charged order-7, done"',)
    assert workers.note_lines().count("charge order-7") == 1  # only the rescuer charged
