"""Workers killed with SIGKILL at each point of a workflow, then a new process: with the
same executor id (it resumes at launch) and with another (it claims the expired lease)."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

import psycopg
import pytest

if TYPE_CHECKING:
    from tests.crash.conftest import Workers

POINTS = [
    "before_first_commit",
    "inside_plain_step",
    "between_steps",
    "inside_transaction_after_sql",
    "after_step_commit",
    "during_completion",
]


def _kill_during_completion(workers: Workers) -> None:
    """Start a worker whose completion blocks on a lock the test holds, then kill it there."""
    # Activity is watched from its own autocommit connection: inside a transaction,
    # pg_stat_activity is a snapshot that does not change.
    with (
        psycopg.connect(workers.db) as holder,
        psycopg.connect(workers.db, autocommit=True) as watch,
    ):
        holder_pid = holder.info.backend_pid
        proc = workers.start("worker-1", "order", "during_completion")
        deadline = time.monotonic() + 30
        while "charge order-7" not in workers.note_lines():
            assert time.monotonic() < deadline
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.01)
        holder.execute("SELECT 1 FROM stepstone.executions WHERE id = 'order-7' FOR SHARE")
        (workers.notes / "go").touch()
        while True:  # until the completion (the only writer of that row now) waits for the lock
            blocked = watch.execute(
                "SELECT pid FROM pg_stat_activity WHERE %s = ANY (pg_blocking_pids(pid))",
                [holder_pid],
            ).fetchall()
            if len(blocked) == 1:
                break
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        # A server waiting on a lock notices a dead client only when it next talks to it
        # (or with client_connection_check_interval): end that backend as it would, so that
        # the completion does not land after its process died.
        watch.execute("SELECT pg_terminate_backend(%s)", [blocked[0][0]])
        while watch.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [blocked[0][0]]
        ).fetchone() != (0,):
            time.sleep(0.01)
        holder.rollback()


@pytest.mark.parametrize("restart_as", ["worker-1", "worker-2"])
@pytest.mark.parametrize("kill_at", POINTS)
def test_killed_worker_execution_is_recovered_exactly_once(
    workers: Workers, kill_at: str, restart_as: str
) -> None:
    """Whatever the point of death: the execution ends SUCCEEDED with the right result, the
    transaction step's effect exists exactly once, the plain step ran at most once more than
    before the crash, and the audit log records the recovery."""
    if kill_at == "during_completion":
        _kill_during_completion(workers)
    else:
        killed = workers.run("worker-1", "order", kill_at)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    charges_before = workers.note_lines().count("charge order-7")

    served = workers.run(restart_as, "serve")
    assert served.returncode == 0, served.stderr
    assert served.stdout.strip().endswith("served")

    with psycopg.connect(workers.db) as conn:
        execution = conn.execute(
            "SELECT status, output, owner FROM stepstone.executions WHERE id = 'order-7'"
        ).fetchone()
        effects = conn.execute(
            "SELECT count(*) FROM effects WHERE execution_id = 'order-7' AND step = 'reserve'"
        ).fetchone()
        resumed = conn.execute(
            "SELECT actor, details->>'reason' FROM stepstone.logs "
            "WHERE execution_id = 'order-7' AND event = 'execution_resumed'"
        ).fetchall()
    assert execution == ("SUCCEEDED", '"charged order-7, done"', restart_as)
    assert effects == (1,)
    charges = workers.note_lines().count("charge order-7")
    assert 1 <= charges <= charges_before + 1
    expected_reason = "restart" if restart_as == "worker-1" else "expired_lease"
    assert resumed == [(restart_as, expected_reason)]
