"""continue_as_new across real crashes: a worker killed with SIGKILL just before, during or
just after the switch to the next run leaves either the old run whole or the new one in
place, never a mix, and the execution completes once another worker starts."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

if TYPE_CHECKING:
    from tests.crash.conftest import Workers


def _state(db: str) -> tuple[Any, ...]:
    """(status, run, names of the recorded steps, runs of the continue-as-new entries)."""
    with psycopg.connect(db) as conn:
        execution = conn.execute(
            "SELECT status, run FROM stepstone.executions WHERE id = 'relay-7'"
        ).fetchone()
        assert execution is not None
        steps = conn.execute(
            "SELECT seq, name FROM stepstone.steps WHERE execution_id = 'relay-7' ORDER BY seq"
        ).fetchall()
        continued = conn.execute(
            "SELECT (details->>'run')::int FROM stepstone.logs "
            "WHERE execution_id = 'relay-7' AND event = 'execution_continued_as_new' ORDER BY id"
        ).fetchall()
    return (*execution, steps, [run for (run,) in continued])


def _kill_during_continue(workers: Workers) -> None:
    """Start a worker whose continue-as-new blocks on a row lock the test holds, kill it
    there, and end its server backend (whose transaction rolls back)."""
    with (
        psycopg.connect(workers.db) as holder,
        psycopg.connect(workers.db, autocommit=True) as watch,
    ):
        holder_pid = holder.info.backend_pid
        proc = workers.start("worker-1", "relay", "during_continue")
        deadline = time.monotonic() + 30
        while "relay continues" not in workers.note_lines():
            assert time.monotonic() < deadline
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.01)
        holder.execute("SELECT 1 FROM stepstone.executions WHERE id = 'relay-7' FOR SHARE")
        (workers.notes / "go").touch()
        while True:  # until the continue-as-new (the only writer of that row now) waits
            blocked = watch.execute(
                "SELECT pid, query FROM pg_stat_activity WHERE %s = ANY (pg_blocking_pids(pid))",
                [holder_pid],
            ).fetchall()
            if len(blocked) == 1:
                break
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert "continue_as_new_v1" in blocked[0][1]
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        watch.execute("SELECT pg_terminate_backend(%s)", [blocked[0][0]])
        while watch.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [blocked[0][0]]
        ).fetchone() != (0,):
            time.sleep(0.01)
        holder.rollback()


@pytest.mark.parametrize("restart_as", ["worker-1", "worker-2"])
@pytest.mark.parametrize(
    ("kill_at", "left"),
    [
        ("before_continue", ("RUNNING", 2, [(0, "mark")], [2])),
        ("during_continue", ("RUNNING", 2, [(0, "mark")], [2])),
        ("after_continue", ("RUNNING", 3, [], [2, 3])),
    ],
)
def test_a_worker_killed_around_continue_as_new_leaves_one_run_and_it_completes(
    workers: Workers, kill_at: str, left: tuple[Any, ...], restart_as: str
) -> None:
    """Killed before or during the switch from run 2 to run 3, the execution is run 2 with
    its history whole; killed after it, run 3 with an empty history. A worker started next
    (the same executor id, or another once the lease expired) finishes it as run 3: each
    run's step ran once, and each switch is recorded once."""
    if kill_at == "during_continue":
        _kill_during_continue(workers)
    else:
        killed = workers.run("worker-1", "relay", kill_at)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _state(workers.db) == left

    served = workers.run(restart_as, "serve")
    assert served.returncode == 0, served.stderr
    assert _state(workers.db) == ("SUCCEEDED", 3, [(0, "mark"), (1, "mark")], [2, 3])
    with psycopg.connect(workers.db) as conn:
        output = conn.execute(
            "SELECT output, owner FROM stepstone.executions WHERE id = 'relay-7'"
        ).fetchone()
    assert output == ('"relay done after 3 runs"', restart_as)
    lines = workers.note_lines()
    for what in ("relay run 1", "relay run 2", "relay run 3", "relay done after 3 runs"):
        assert lines.count(what) == 1, (what, lines)
