"""How soon another worker takes over an execution handed back at a graceful shutdown.

    python benchmarks/queue_handback.py [--rounds 5]

Two Runtimes serve queue "long" on a fresh database of the machine's PostgreSQL (lease 60 s,
sweep 5 s, so that neither a lease nor a periodic sweep can be what moves the execution):
A runs a workflow whose first step takes 0.3 s, then shuts down with a grace period while
B is idle; A's step finishes, A hands the execution back to its queue, and B dequeues it
and runs the rest. Prints, per round, the time from A's `execution_released` to B's
`execution_dequeued` audit entry, both by the database's clock.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stepstone import Runtime
from tests.support import databases


def worker(dsn: str, executor_id: str, slow: bool) -> tuple[Runtime, Any, Any]:
    rt = Runtime(dsn, executor_id=executor_id, lease_seconds=60, sweep_interval=5)
    queue = rt.queue("long")

    @rt.step()
    def long_step() -> str:
        if slow:
            time.sleep(0.3)
        return "x"

    @rt.step()
    def after() -> str:
        return "y"

    @rt.workflow(name="job")
    def job() -> str:
        long_step()
        return after()

    return rt, queue, job


def one_round(dsn: str, n: int) -> float:
    a, queue, job = worker(dsn, f"a{n}", slow=True)
    a.launch()
    handle = queue.enqueue(job.with_options(workflow_id=f"long-{n}"))
    while handle.status() != "RUNNING":
        time.sleep(0.01)
    b, _, _ = worker(dsn, f"b{n}", slow=False)
    b.launch()
    try:
        a.shutdown(grace=5)
        if b.handle(f"long-{n}").result(timeout=30) != "y":
            raise RuntimeError("the handed-back execution did not finish on B")
        logs = b.store.list_logs(f"long-{n}")
    finally:
        b.shutdown()
    released = next(log.at for log in logs if log.event == "execution_released")
    dequeued = [log.at for log in logs if log.event == "execution_dequeued"][-1]
    return (dequeued - released).total_seconds() * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    template = databases.create_template()
    name = databases.create_database(template=template)
    try:
        gaps = [one_round(databases.dsn_for(name), n) for n in range(args.rounds)]
    finally:
        databases.drop_database(name)
        databases.drop_database(template)
    shown = ", ".join(f"{gap:.1f}" for gap in gaps)
    print(
        f"released -> dequeued by the other worker (ms): {shown}; median {statistics.median(gaps):.1f}"
    )


if __name__ == "__main__":
    main()
