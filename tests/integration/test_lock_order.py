"""One lock order for every function that takes an execution's advisory lock and its row
lock (advisory first, then row), checked with real connections racing in threads."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

# The functions under test, by name (to run this file against other versions of them).
FENCE = "SELECT stepstone.fence_v1(%s, %s, %s)"
CANCEL = "SELECT stepstone.cancel_execution_v1(%s, %s)"
SWEEP = "SELECT kind, id FROM stepstone.sweep_v1(%s, ARRAY['flow'], ARRAY['1'], 10)"


def _interrupted(db: str, workflow_id: str) -> None:
    """A RUNNING execution at epoch 1 whose owner 'dead' has an expired lease."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO stepstone.executors (id, hostname, pid, heartbeat_at, lease_seconds) "
            "VALUES ('dead', 'h', 1, now() - interval '1 hour', 30)"
        )
        conn.execute(
            "INSERT INTO stepstone.executions "
            "(id, workflow_name, workflow_version, status, inputs, owner, epoch) "
            "VALUES (%s, 'flow', '1', 'RUNNING', '{\"args\": [], \"kwargs\": {}}', 'dead', 1)",
            [workflow_id],
        )


def _waiting_or_done(
    admin: psycopg.Connection[Any], pid: int, done: threading.Event, timeout: float = 10
) -> None:
    """Return once backend `pid` waits for a lock, or its thread finished."""
    deadline = time.monotonic() + timeout
    while not done.is_set():
        row = admin.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid]
        ).fetchone()
        if row is not None and row[0] == "Lock":
            return
        assert time.monotonic() < deadline, f"backend {pid} neither waited nor finished"
        time.sleep(0.02)


class _Call(threading.Thread):
    """One statement on a connection of its own, in a thread; keeps its rows or its error."""

    def __init__(self, db: str, query: str, params: list[Any]) -> None:
        super().__init__(daemon=True)
        self.conn = psycopg.connect(db, autocommit=True)
        self.query, self.params = query, params
        self.rows: list[tuple[Any, ...]] | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.rows = self.conn.execute(self.query, self.params).fetchall()
        except psycopg.Error as exc:
            self.error = exc
        finally:
            self.done.set()

    def finish(self) -> None:
        self.join(15)
        assert not self.is_alive()
        self.conn.close()


def test_cancel_and_sweep_behind_a_step_commit_do_not_deadlock(db: str) -> None:
    """A step commit holds an execution's shared advisory lock, a cancel waits for the
    exclusive one, and a sweep comes for the same execution: when the step commits, the
    cancel goes through and the sweep, which never waits, has skipped it (no 40P01)."""
    _interrupted(db, "e-1")
    with (
        psycopg.connect(db, autocommit=True) as admin,
        psycopg.connect(db) as committer,
    ):
        # A: a step commit in flight (READ COMMITTED: the fence's shared advisory lock).
        committer.execute(FENCE, ["e-1", "dead", 1])
        # B: a cancel, queued for the exclusive advisory lock.
        cancel = _Call(db, CANCEL, ["e-1", "operator"])
        cancel.start()
        _waiting_or_done(admin, cancel.conn.info.backend_pid, cancel.done)
        assert not cancel.done.is_set()  # queued behind the step commit
        # C: a sweep of another executor, for which e-1's lease expired.
        sweep = _Call(db, SWEEP, ["alive"])
        sweep.start()
        _waiting_or_done(admin, sweep.conn.info.backend_pid, sweep.done)
        committer.commit()
        cancel.finish()
        sweep.finish()
    assert cancel.error is None, cancel.error
    assert sweep.error is None, sweep.error
    assert cancel.rows == [("RUNNING",)]
    assert sweep.rows == []  # it left the busy execution alone instead of waiting for it
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT status, owner, epoch FROM stepstone.executions WHERE id = 'e-1'"
        ).fetchone()
    assert row == ("CANCELLED", "dead", 1)


def test_sweep_skips_an_execution_whose_step_commit_is_in_flight(db: str) -> None:
    """The sweep does not wait for a step commit in flight: it leaves that execution for a
    later sweep, which claims it."""
    _interrupted(db, "e-2")
    with psycopg.connect(db) as committer, psycopg.connect(db, autocommit=True) as sweeper:
        committer.execute(FENCE, ["e-2", "dead", 1])
        sweeper.execute("SET lock_timeout = '2s'")
        assert sweeper.execute(SWEEP, ["alive"]).fetchall() == []
        committer.rollback()
        assert sweeper.execute(SWEEP, ["alive"]).fetchall() == [("claimed", "e-2")]


@pytest.mark.parametrize("locked", ["advisory", "row"])
def test_sweep_never_waits_for_a_lock(db: str, locked: str) -> None:
    """Whichever lock of a candidate another transaction holds, the sweep skips that
    candidate at once and claims the others."""
    _interrupted(db, "busy")
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO stepstone.executions "
            "(id, workflow_name, workflow_version, status, inputs, owner, epoch) "
            "VALUES ('free', 'flow', '1', 'RUNNING', '{}', 'dead', 1)"
        )
    with psycopg.connect(db) as holder, psycopg.connect(db, autocommit=True) as sweeper:
        if locked == "advisory":
            holder.execute("SELECT pg_advisory_xact_lock(1937010533, hashtext('busy'))")
        else:
            holder.execute("SELECT 1 FROM stepstone.executions WHERE id = 'busy' FOR UPDATE")
        sweeper.execute("SET lock_timeout = '2s'")
        assert sweeper.execute(SWEEP, ["alive"]).fetchall() == [("claimed", "free")]
        holder.rollback()
