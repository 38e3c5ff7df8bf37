"""Many concurrent executions, their worker killed at random moments several times in a row
(seeded, so a failure can be replayed), then recovered: nothing lost, nothing doubled."""

from __future__ import annotations

import os
import random
import signal
import time
from typing import TYPE_CHECKING

import psycopg
import pytest

if TYPE_CHECKING:
    from tests.crash.conftest import Workers

SEED = int(os.environ.get("STEPSTONE_CRASH_SEED", "20261126"))
EXECUTIONS = 40
TRANSACTION_STEPS = ["t0", "t1", "t2"]


@pytest.mark.slow
def test_random_kills_lose_and_double_nothing(workers: Workers) -> None:
    """Five SIGKILLs at random moments, alternating two executor ids, then a last run: every
    execution SUCCEEDED, every transaction step's effect exactly once."""
    rng = random.Random(SEED)
    for round_number in range(5):
        executor = "worker-a" if round_number % 2 == 0 else "worker-b"
        before = len(workers.note_lines())
        # Slow steps: a worker takes a dead one's executions over at once (its executor lock
        # is free), so with quick steps the work could be done before the last kill.
        proc = workers.start(executor, "load", "slow")
        deadline = time.monotonic() + 30
        while len(workers.note_lines()) == before:  # until this worker makes progress
            assert time.monotonic() < deadline
            assert proc.poll() is None
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)

    started = time.monotonic()
    final = workers.run("worker-a", "load", "slow", timeout=120)
    assert final.returncode == 0, final.stderr
    assert final.stdout.strip().endswith("loaded")
    assert time.monotonic() - started < 120

    with psycopg.connect(workers.db) as conn:
        statuses = conn.execute(
            "SELECT status, count(*) FROM stepstone.executions GROUP BY status"
        ).fetchall()
        effects = conn.execute(
            "SELECT execution_id, step, count(*) FROM effects GROUP BY execution_id, step"
        ).fetchall()
        recoveries = conn.execute(
            "SELECT count(*) FROM stepstone.logs WHERE event = 'execution_resumed'"
        ).fetchone()
    assert statuses == [("SUCCEEDED", EXECUTIONS)], f"seed {SEED}"
    expected = {(f"load-{n}", step) for n in range(EXECUTIONS) for step in TRANSACTION_STEPS}
    assert {(e, s) for e, s, _ in effects} == expected, f"seed {SEED}"
    assert all(count == 1 for _, _, count in effects), (
        f"seed {SEED}: {[e for e in effects if e[2] != 1]}"
    )
    plain = workers.note_lines()
    for n in range(EXECUTIONS):
        for step in ("p0", "p1", "p2"):
            assert f"{step} load-{n}" in plain, f"seed {SEED}"
    assert recoveries is not None
    assert recoveries[0] > 0  # the kills did interrupt executions
