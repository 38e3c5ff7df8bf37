"""An application for the queue worker tests, run by `stepstone worker
tests.crash.queue_app:rt` in worker processes. Its settings come from the environment:
QUEUE_APP_DSN, QUEUE_APP_EXECUTOR (the executor id) and QUEUE_APP_LEASE (seconds).

`jobs` (concurrency 3) runs `job`: one step that records its run in the table `runs`
(the worker's pid, start and end by clock_timestamp(), each committed at once) around a
0.6 s sleep. `long` runs `long_job`: a step that records itself in `effects` and waits
until the file QUEUE_APP_GO exists, then a step `after`.

    python -m tests.crash.queue_app enqueue N   enqueue job-0 .. job-(N-1) on `jobs`
    python -m tests.crash.queue_app long        enqueue long-1 on `long`
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from stepstone import Runtime

DSN = os.environ["QUEUE_APP_DSN"]
LEASE = float(os.environ.get("QUEUE_APP_LEASE", "2"))

rt = Runtime(
    DSN,
    executor_id=os.environ["QUEUE_APP_EXECUTOR"],
    workers=2,
    lease_seconds=LEASE,
    heartbeat_interval=min(1.0, LEASE / 5),
    sweep_interval=min(5.0, LEASE / 5),
    dispatch_interval=0.5,
)
jobs = rt.queue("jobs", concurrency=3)
long_queue = rt.queue("long")


def _note(sql: str, params: list[Any]) -> Any:
    with psycopg.connect(DSN, autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


@rt.step(name="work")
def work(n: int) -> int:
    run = _note(
        "INSERT INTO runs (execution_id, pid, started) VALUES (%s, %s, clock_timestamp()) "
        "RETURNING id",
        [f"job-{n}", os.getpid()],
    )
    time.sleep(0.6)
    _note("UPDATE runs SET ended = clock_timestamp() WHERE id = %s RETURNING id", [run])
    return n * n


@rt.workflow(name="job")
def job(n: int) -> int:
    return work(n)


@rt.step(name="long_step")
def long_step() -> int:
    _note(
        "INSERT INTO effects (execution_id, step) VALUES ('long-1', %s) RETURNING id",
        [f"long_step by {os.getpid()}"],
    )
    go = Path(os.environ["QUEUE_APP_GO"])
    while not go.exists():
        time.sleep(0.05)
    return os.getpid()


@rt.step(name="after")
def after() -> int:
    _note(
        "INSERT INTO effects (execution_id, step) VALUES ('long-1', %s) RETURNING id",
        [f"after by {os.getpid()}"],
    )
    return os.getpid()


@rt.workflow(name="long_job")
def long_job() -> list[int]:
    return [long_step(), after()]


if __name__ == "__main__":
    rt.serve()  # enqueues only
    with rt:
        if sys.argv[1] == "enqueue":
            for i in range(int(sys.argv[2])):
                jobs.enqueue(job.with_options(workflow_id=f"job-{i}"), i)
        else:
            long_queue.enqueue(long_job.with_options(workflow_id="long-1"))
