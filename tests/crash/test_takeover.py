"""Two workers running; one dies: the other takes its executions over, while it runs,
within the lease plus a sweep interval, and finishes them."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

import psycopg

if TYPE_CHECKING:
    from tests.crash.conftest import Workers

LEASE = 1.0  # tests/crash/worker.py
SWEEP = 0.2


def test_surviving_worker_takes_over_a_dead_workers_executions(workers: Workers) -> None:
    """The survivor's sweep claims the dead worker's executions soon after its lease ends."""
    doomed = workers.start("doomed", "load", "slow")  # still busy when the survivor is up
    deadline = time.monotonic() + 30
    while len(workers.note_lines()) < 10:  # the doomed worker is well under way
        assert time.monotonic() < deadline
        assert doomed.poll() is None
        time.sleep(0.01)
    survivor = workers.start("survivor", "serve")
    with psycopg.connect(workers.db, autocommit=True) as conn:
        while conn.execute(
            "SELECT count(*) FROM stepstone.executors WHERE id = 'survivor'"
        ).fetchone() != (1,):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        doomed.send_signal(signal.SIGKILL)
        doomed.communicate(timeout=30)
        killed_at = conn.execute("SELECT now()").fetchone()
        _, err = survivor.communicate(timeout=60)
        assert survivor.returncode == 0, err
        first_claim = conn.execute(
            "SELECT min(at) FROM stepstone.logs WHERE event = 'execution_resumed' AND actor = 'survivor'"
        ).fetchone()
        statuses = conn.execute(
            "SELECT status, owner, count(*) FROM stepstone.executions GROUP BY 1, 2"
        ).fetchall()
        doubled = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM effects GROUP BY execution_id, step HAVING count(*) > 1) d"
        ).fetchone()
    assert killed_at is not None
    assert first_claim is not None
    assert first_claim[0] is not None, "the survivor claimed nothing"
    # The doomed worker's last heartbeat was at most one interval before the kill.
    waited = (first_claim[0] - killed_at[0]).total_seconds()
    print(f"claimed {waited:.2f} s after the kill")
    assert waited <= LEASE + SWEEP + 1.0, waited
    assert {status for status, _, _ in statuses} == {"SUCCEEDED"}
    assert doubled == (0,)
