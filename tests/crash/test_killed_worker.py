"""A worker killed with SIGKILL mid-workflow; a new process with its executor id resumes it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

POINTS = [
    "before_first_commit",
    "inside_transaction_after_sql",
    "between_steps",
    "inside_plain_step",
]


def _worker(db: str, kill_at: str, notes: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.crash.worker",
            db,
            "worker-1",
            "order-7",
            kill_at,
            str(notes),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )


@pytest.mark.parametrize("kill_at", POINTS)
def test_killed_execution_resumes_with_exactly_once_transaction_effects(
    db: str, tmp_path: Path, kill_at: str
) -> None:
    """After SIGKILL at each point, the same executor id resumes on restart: the execution
    succeeds, the transaction step's effect exists once, a plain step ran at most once more."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE effects (order_id text, what text)")
    notes = tmp_path / "notes"
    notes.touch()

    killed = _worker(db, kill_at, notes)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    charges_before = notes.read_text().count("charge")

    resumed = _worker(db, "nowhere", notes)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip().splitlines()[-1] == "charged order-7, done"

    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM effects").fetchone() == (1,)
        status = conn.execute(
            "SELECT status FROM stepstone.executions WHERE id = 'order-7'"
        ).fetchone()
        events = [
            str(r[0])
            for r in conn.execute(
                "SELECT event FROM stepstone.logs WHERE execution_id = 'order-7' ORDER BY id"
            )
        ]
    assert status == ("SUCCEEDED",)
    assert notes.read_text().count("charge") <= charges_before + 1
    assert notes.read_text().count("charge") >= 1
    assert events[0] == "execution_started"
    assert "execution_resumed" in events
    assert events[-1] == "execution_succeeded"
