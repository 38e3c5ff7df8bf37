"""A worker SIGKILLed mid-workflow is known dead by its free executor lock: another worker
takes its execution over at its next sweep, long before the dead one's lease runs out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psycopg

from stepstone import Runtime

_WORKER = textwrap.dedent(
    """
    import sys, time
    from stepstone import Runtime

    rt = Runtime(sys.argv[1], executor_id="doomed", lease_seconds=600, heartbeat_interval=5,
                 sweep_interval=5)

    @rt.step()
    def slow() -> str:
        print("in step", flush=True)
        time.sleep(600)
        return "never"

    @rt.workflow(name="job")
    def job() -> str:
        return slow()

    rt.launch()
    job.with_options(workflow_id="job-1")()
    """
)


def test_a_killed_workers_execution_is_taken_over_before_its_lease_ends(db: str) -> None:
    """With a lease of 600 s, the execution of a SIGKILLed worker is claimed by another
    worker at its next sweep (its executor lock is free), counted as one recovery, and
    finishes there; a live worker's executions are left alone."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WORKER, db],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "in step", (
            proc.stderr.read() if proc.stderr else ""
        )
        rescuer = Runtime(
            db, executor_id="rescuer", lease_seconds=600, sweep_interval=0.2, heartbeat_interval=5
        )

        @rescuer.step()
        def slow() -> str:
            return "rescued"

        @rescuer.workflow(name="job")
        def job() -> str:
            return slow()

        rescuer.launch()
        try:
            time.sleep(1.0)  # several sweeps while the worker lives: they leave it alone
            with psycopg.connect(db) as conn:
                owner = conn.execute(
                    "SELECT owner FROM stepstone.executions WHERE id = 'job-1'"
                ).fetchone()
            assert owner == ("doomed",)
            killed_at = time.monotonic()
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            assert rescuer.handle("job-1").result(timeout=60) == "rescued"
            assert time.monotonic() - killed_at < 60  # the lease is 600 s
            with psycopg.connect(db) as conn:
                row = conn.execute(
                    "SELECT owner, recoveries FROM stepstone.executions WHERE id = 'job-1'"
                ).fetchone()
            assert row == ("rescuer", 1)
        finally:
            rescuer.shutdown()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
