"""Queue workers as real processes started with `stepstone worker` (tests/crash/queue_app.py):
a queue's concurrency holds while workers are SIGKILLed and replaced; SIGTERM hands a
running execution back (not a recovery) for another worker to resume at once; the entry
point exits 0 after a graceful stop and explains a bad MODULE:ATTR."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from tests.crash.conftest import ROOT
from tests.support.runtime import wait_for

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Iterator
    from pathlib import Path


class Fleet:
    """`stepstone worker tests.crash.queue_app:rt` processes against one database."""

    def __init__(self, db: str, tmp: Path) -> None:
        self.db = db
        self.tmp = tmp
        self.go = tmp / "go"
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def env(self, executor_id: str, lease: float) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "QUEUE_APP_DSN": self.db,
            "QUEUE_APP_EXECUTOR": executor_id,
            "QUEUE_APP_LEASE": str(lease),
            "QUEUE_APP_GO": str(self.go),
        }

    def worker(self, executor_id: str, *options: str, lease: float = 2.0) -> subprocess.Popen[str]:
        """Start a worker; its stdout and stderr go to files (see `stderr`)."""
        with (self.tmp / f"{executor_id}.err").open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "stepstone", "worker", "tests.crash.queue_app:rt", *options],
                cwd=ROOT,
                env=self.env(executor_id, lease),
                stdout=subprocess.DEVNULL,
                stderr=err,
                text=True,
            )
        self.procs[executor_id] = proc
        return proc

    def stderr(self, executor_id: str) -> str:
        """What worker `executor_id` wrote to stderr so far (its lines are flushed)."""
        return (self.tmp / f"{executor_id}.err").read_text()

    def app(self, *args: str) -> None:
        """Run queue_app.py's own main (enqueuing) to completion."""
        subprocess.run(
            [sys.executable, "-m", "tests.crash.queue_app", *args],
            cwd=ROOT,
            env=self.env("enqueuer", 2.0),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


@pytest.fixture
def fleet(db: str, tmp_path: Path) -> Iterator[Fleet]:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE runs (id bigserial PRIMARY KEY, execution_id text NOT NULL,"
            " pid integer NOT NULL, started timestamptz NOT NULL, ended timestamptz)"
        )
        conn.execute(
            "CREATE TABLE effects (id bigserial PRIMARY KEY, execution_id text NOT NULL,"
            " step text NOT NULL)"
        )
    made = Fleet(db, tmp_path)
    yield made
    made.stop_all()


def _query(db: str, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(db) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def _launched(db: str, executor_id: str) -> bool:
    return bool(_query(db, "SELECT 1 FROM stepstone.executors WHERE id = %s", [executor_id]))


def _max_overlap(intervals: list[tuple[dt.datetime, dt.datetime]]) -> int:
    """The most intervals [start, end) in progress at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = current = 0
    for _, delta in events:  # at equal times, an end (-1) sorts before a start
        current += delta
        most = max(most, current)
    return most


def test_concurrency_holds_while_workers_are_killed_and_replaced(fleet: Fleet, db: str) -> None:
    """Four workers serve a queue of concurrency 3 while some are SIGKILLed and replaced:
    never more than 3 step bodies overlap (a killed run counts until its process was
    reaped), nor more than 3 executions are RUNNING, and every execution ends SUCCEEDED
    exactly once."""
    count = 30
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    for i in range(4):
        fleet.worker(f"w{i}", "--queues", "jobs")
    wait_for(lambda: all(_launched(db, f"w{i}") for i in range(4)), timeout=30)
    fleet.app("enqueue", str(count))
    killed_at: dict[int, dt.datetime] = {}
    for n in range(3):
        wait_for(lambda n=n: len(_query(db, "SELECT 1 FROM runs")) >= 6 * (n + 1), timeout=30)
        alive = [name for name, proc in fleet.procs.items() if proc.poll() is None]
        victim = fleet.procs[rng.choice(alive)]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        # After the process was reaped: no later than that, it had stopped running steps.
        killed_at[victim.pid] = _query(db, "SELECT clock_timestamp()")[0][0]
        fleet.worker(f"r{n}", "--queues", "jobs")

    def done() -> bool:
        rows = _query(db, "SELECT count(*) FROM stepstone.executions WHERE status = 'SUCCEEDED'")
        return int(rows[0][0]) == count

    wait_for(done, timeout=45)
    runs = _query(db, "SELECT pid, started, ended FROM runs")
    unfinished = [(pid, started) for pid, started, ended in runs if ended is None]
    assert all(pid in killed_at for pid, _ in unfinished), (seed, unfinished)
    intervals = [(started, ended or killed_at[pid]) for pid, started, ended in runs]
    assert _max_overlap(intervals) <= 3, seed
    # As the database saw it: from first start to end, every execution was RUNNING (a
    # killed worker's stay RUNNING until taken over), never more than 3 at once, and 3 at
    # some moment (30 were enqueued for 4 workers), so the checks are not vacuous.
    running = _query(
        db, "SELECT dispatched_at, finished_at FROM stepstone.executions WHERE queue_name = 'jobs'"
    )
    assert _max_overlap([(start, end) for start, end in running]) == 3, seed
    ended = _query(
        db,
        "SELECT e.id, e.status, e.output, (SELECT count(*) FROM stepstone.logs l"
        "  WHERE l.execution_id = e.id AND l.event = 'execution_succeeded')"
        "  FROM stepstone.executions e ORDER BY e.id",
    )
    assert [(r[0], r[1], r[3]) for r in ended] == [
        (f"job-{i}", "SUCCEEDED", 1) for i in sorted(range(count), key=lambda i: f"job-{i}")
    ]
    assert {r[0]: r[2] for r in ended} == {f"job-{i}": str(i * i) for i in range(count)}


def test_sigterm_during_a_long_step_hands_the_execution_to_another_worker(
    fleet: Fleet, db: str
) -> None:
    """SIGTERM during a long step: the step finishes and is recorded, the worker hands the
    execution back to its queue (ENQUEUED, no owner, no recovery counted) and exits 0, and
    the other worker dequeues it long before the 60 s lease could have expired, without
    running the step again."""
    a = fleet.worker("a", "--queues", "long", lease=60.0)
    wait_for(lambda: _launched(db, "a"), timeout=30)
    fleet.app("long")
    wait_for(lambda: bool(_query(db, "SELECT 1 FROM effects")), timeout=30)
    b = fleet.worker("b", "--queues", "long", lease=60.0)
    wait_for(lambda: _launched(db, "b"), timeout=30)

    a.send_signal(signal.SIGTERM)
    wait_for(lambda: "stopping on SIGTERM" in fleet.stderr("a"), timeout=10)
    fleet.go.touch()  # the long step ends now, after the signal
    assert a.wait(timeout=30) == 0, fleet.stderr("a")
    stopped = time.monotonic()
    wait_for(
        lambda: (
            _query(db, "SELECT status FROM stepstone.executions WHERE id = 'long-1'")
            == [("SUCCEEDED",)]
        ),
        timeout=30,
    )
    assert time.monotonic() - stopped < 60  # sooner than A's lease: a hand-back, not expiry
    assert _query(db, "SELECT owner, recoveries FROM stepstone.executions WHERE id = 'long-1'") == [
        ("b", 0)
    ]
    events = _query(
        db,
        "SELECT event, actor, details->>'interrupted', details->>'reason' FROM stepstone.logs"
        " WHERE execution_id = 'long-1' AND event IN ('execution_released',"
        " 'execution_resumed', 'execution_dequeued') ORDER BY id",
    )
    assert events == [
        ("execution_dequeued", "a", None, None),
        ("execution_released", "a", "false", "handed back at shutdown"),
        ("execution_dequeued", "b", None, None),
    ]
    steps = _query(db, "SELECT step FROM effects ORDER BY id")
    assert [s[0].split(" by ")[0] for s in steps] == ["long_step", "after"]
    assert steps[0][0] == f"long_step by {a.pid}"
    assert steps[1][0] == f"after by {b.pid}"


def test_the_worker_command_serves_and_exits_0_on_sigterm(fleet: Fleet, db: str) -> None:
    """`stepstone worker` serves its queue, says so on stderr, and exits 0 after a SIGTERM
    once it has stopped gracefully."""
    proc = fleet.worker("solo", "--queues", "jobs", "--workers", "3", "--grace", "10")
    wait_for(lambda: _launched(db, "solo"), timeout=30)
    fleet.app("enqueue", "5")
    wait_for(
        lambda: (
            _query(db, "SELECT count(*) FROM stepstone.executions WHERE status = 'SUCCEEDED'")
            == [(5,)]
        ),
        timeout=30,
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, fleet.stderr("solo")
    err = fleet.stderr("solo")
    assert "stepstone worker: started executor_id=solo queues=jobs workers=3" in err
    assert "stepstone worker: stopping on SIGTERM" in err
    assert err.rstrip().endswith("stepstone worker: stopped executor_id=solo")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("tests.crash.no_such_app:rt", "no module named 'tests.crash.no_such_app'"),
        ("tests.crash.queue_app:nothing", "has no attribute 'nothing' (Runtime objects in it: rt)"),
        ("tests.crash.queue_app:jobs", "is an object of type Queue, not a stepstone Runtime"),
        ("tests.crash.queue_app", "is not MODULE:ATTR"),
    ],
)
def test_a_bad_module_attr_is_explained(fleet: Fleet, target: str, message: str) -> None:
    """A MODULE:ATTR that is missing or not a Runtime exits with status 2 and a one-line
    message saying what was found."""
    result = subprocess.run(
        [sys.executable, "-m", "stepstone", "worker", target],
        cwd=ROOT,
        env=fleet.env("bad", 2.0),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_queue_is_explained(fleet: Fleet) -> None:
    """--queues naming a queue the Runtime does not declare exits with status 2 and lists
    the declared ones."""
    result = subprocess.run(
        [sys.executable, "-m", "stepstone", "worker", "tests.crash.queue_app:rt", "--queues", "x"],
        cwd=ROOT,
        env=fleet.env("bad", 2.0),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "queue 'x' is not declared here" in result.stderr
    assert "(declared: ['jobs', 'long'])" in result.stderr
