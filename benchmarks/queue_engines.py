"""One side of a queue benchmark, in a process of its own: the worker of
benchmarks/queues.py.

    python benchmarks/queue_engines.py ENGINE DSN ROLE [JSON PARAMETERS]

ENGINE is stepstone or dbos (run with the interpreter of the virtual environment that has
DBOS installed). ROLE is:

- setup: create the engine's tables and the queue, then exit.
- produce: enqueue params["workflows"] one-step workflows (argument i) on queue "bench",
  params["pause"] seconds apart (0: as fast as one thread can); prints the seconds taken.
- work: serve queue "bench" (params["worker_concurrency"] at a time in this process) until
  params["expect"] of its executions have succeeded, then exit; prints "ready" once
  launched.

stepstone takes params["notify"] (LISTEN for enqueues, or poll every
params["poll"] seconds); DBOS polls its queues every params["poll"] seconds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

QUEUE = "bench"


def stepstone_side(dsn: str, role: str, params: dict[str, Any]) -> dict[str, Any]:
    from stepstone import Runtime

    concurrency = params.get("worker_concurrency", 8)
    rt = Runtime(
        dsn,
        executor_id=f"{role}-{os.getpid()}",
        workers=concurrency,
        pool_max_size=concurrency + 4,
        notify=params.get("notify", True),
        dispatch_interval=params.get("poll", 10.0),
    )
    queue = rt.queue(QUEUE, worker_concurrency=concurrency)

    @rt.step()
    def echo(n: int) -> int:
        return n

    @rt.workflow(name="steps")
    def steps(n: int) -> int:
        return echo(n)

    if role != "work":
        rt.serve()
    rt.launch()
    try:
        if role == "produce":
            return {"seconds": _produce(lambda i: queue.enqueue(steps, i), params)}
        if role == "work":
            print("ready", flush=True)
            _until_done(
                dsn,
                "SELECT count(*) FROM stepstone.executions WHERE queue_name = %s "
                "AND status = 'SUCCEEDED'",
                params["expect"],
            )
        return {}
    finally:
        rt.shutdown()


def dbos_side(dsn: str, role: str, params: dict[str, Any]) -> dict[str, Any]:
    from dbos import DBOS, DBOSClient, DBOSConfig

    if role == "produce":
        client = DBOSClient(system_database_url=dsn)
        try:
            options: Any = {"queue_name": QUEUE, "workflow_name": "steps"}
            return {"seconds": _produce(lambda i: client.enqueue(options, i), params)}
        finally:
            client.destroy()
    config: DBOSConfig = {
        "name": "bench",
        "system_database_url": dsn,
        "log_level": "WARNING",
        "console_log_level": "WARNING",
        "application_version": "bench",
    }
    DBOS(config=config)

    @DBOS.step(name="echo")
    def echo(n: int) -> int:
        return n

    @DBOS.workflow(name="steps")
    def steps(n: int) -> int:
        return echo(n)

    DBOS.launch()
    DBOS.register_queue(  # DBOS 3.4 declares queues once launched
        QUEUE,
        worker_concurrency=params.get("worker_concurrency", 8),
        polling_interval_sec=params.get("poll", 1.0),
    )
    try:
        if role == "work":
            print("ready", flush=True)
            _until_done(
                dsn,
                "SELECT count(*) FROM dbos.workflow_status WHERE queue_name = %s "
                "AND status = 'SUCCESS'",
                params["expect"],
            )
        return {}
    finally:
        DBOS.destroy()


def _produce(enqueue: Any, params: dict[str, Any]) -> float:
    pause = params.get("pause", 0.0)
    started = time.perf_counter()
    for i in range(params["workflows"]):
        enqueue(i)
        if pause:
            time.sleep(pause)
    return time.perf_counter() - started


def _until_done(dsn: str, count: str, expect: int) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            row = conn.execute(count, [QUEUE]).fetchone()
            if row is not None and row[0] >= expect:
                return
            time.sleep(0.1)
    raise SystemExit(f"{expect} executions did not succeed in 900 s")


def main() -> None:
    engine, dsn, role = sys.argv[1:4]
    params = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    side = {"stepstone": stepstone_side, "dbos": dbos_side}[engine]
    print(json.dumps(side(dsn, role, params)), flush=True)


if __name__ == "__main__":
    main()
