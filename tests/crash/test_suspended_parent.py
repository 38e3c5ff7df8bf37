"""A parent waiting for a child that runs in another process survives its own process
being killed: the wait is in the database, and when the child ends another executor wakes
the parent and finishes it with the child's outcome; no step body runs twice."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import psycopg

if TYPE_CHECKING:
    from tests.crash.conftest import Workers


def _status(db: str, workflow_id: str) -> tuple[object, ...] | None:
    with psycopg.connect(db) as conn:
        return conn.execute(
            "SELECT status, owner, output, recoveries FROM stepstone.executions WHERE id = %s",
            [workflow_id],
        ).fetchone()


def test_a_suspended_parent_killed_with_its_process_is_finished_elsewhere(
    workers: Workers,
) -> None:
    """Process A's parent waits for a child that process B runs: WAITING, with no owner
    and no thread. A is killed with SIGKILL; B finishes the child, which makes the parent
    due; a live executor (B, or a third process started meanwhile) wakes it (no recovery:
    nothing was interrupted), replays it, and finishes it with the child's result."""
    deadline = time.monotonic() + 60
    kid_host = workers.start("kid-host", "kid")
    while "toy kid" not in workers.note_lines():
        assert time.monotonic() < deadline
        assert kid_host.poll() is None
        time.sleep(0.01)
    parent_host = workers.start("parent-host", "family", "")
    while "parent waits for kid" not in workers.note_lines():
        assert time.monotonic() < deadline
        assert parent_host.poll() is None
        time.sleep(0.01)
    while (_status(workers.db, "family") or ("",))[0] != "WAITING":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert _status(workers.db, "family")[:2] == ("WAITING", None)
    parent_host.kill()
    parent_host.communicate(timeout=30)
    (workers.notes / "go").touch()
    while _status(workers.db, "kid") != ("SUCCEEDED", "kid-host", '"toy for kid"', 0):
        assert time.monotonic() < deadline, _status(workers.db, "kid")
        time.sleep(0.05)
    rescuer = workers.start("rescuer", "serve")
    out, err = rescuer.communicate(timeout=60)
    assert rescuer.returncode == 0, err
    assert out.strip().endswith("served")
    status, owner, output, recoveries = _status(workers.db, "family") or (None,) * 4
    assert (status, output, recoveries) == ("SUCCEEDED", '"family got toy for kid"', 0)
    assert owner in ("kid-host", "rescuer")
    lines = workers.note_lines()
    assert lines.count("before family") == 1
    assert lines.count("toy kid") == 1
    kid_host.communicate(timeout=30)
