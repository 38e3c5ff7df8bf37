"""One engine, one workload, in a process of its own: the worker of benchmarks/compare.py.

    python benchmarks/engines.py ENGINE DSN WORKLOAD [JSON PARAMETERS]

ENGINE is floor, stepstone or dbos (run with the interpreter of the virtual environment
that has DBOS installed). WORKLOAD is:

- latency: for each N in params["n"], params["warmup"] untimed then params["rounds"] timed
  calls of a workflow of N trivial steps (a step returns its int argument), from one
  thread; prints the median wall time and the median calling-thread CPU time per call.
- throughput: params["workflows"] one-step workflows, started by params["threads"] threads
  that each start one and wait for it, over and over (each engine's own way of running a
  workflow and waiting for it: calling it); prints workflows per second.
- counted: prints "ready", waits for a line on stdin, runs params["workflows"] workflows
  of params["n"][0] steps, shuts down and prints "done" (the runner reads the server's
  counters around it).

For `floor`, a "workflow" is one INSERT of a ~200-byte row into an indexed table, committed
(autocommit): the price of one durable write; N is ignored.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

PAYLOAD = "x" * 200


def floor_engine(dsn: str, threads: int) -> tuple[Callable[[int], Any], Callable[[], None]]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS floor_rows (id bigserial PRIMARY KEY, payload text NOT NULL)"
        )
    local = threading.local()
    connections: list[Any] = []

    def run(_n: int) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = psycopg.connect(dsn, autocommit=True)
            connections.append(conn)
        conn.execute("INSERT INTO floor_rows (payload) VALUES (%s)", [PAYLOAD])

    def close() -> None:
        for conn in connections:
            conn.close()

    return run, close


def stepstone_engine(dsn: str, threads: int) -> tuple[Callable[[int], Any], Callable[[], None]]:
    from stepstone import Runtime

    rt = Runtime(
        dsn,
        executor_id=f"bench-{time.time_ns()}",
        workers=max(8, threads),
        pool_max_size=max(10, threads + 4),
    )

    @rt.step()
    def echo(n: int) -> int:
        return n

    @rt.workflow()
    def steps(n: int) -> int:
        return sum(echo(i) for i in range(n))

    rt.launch()
    return steps, rt.shutdown


def dbos_engine(dsn: str, threads: int) -> tuple[Callable[[int], Any], Callable[[], None]]:
    from dbos import DBOS, DBOSConfig

    config: DBOSConfig = {
        "name": "bench",
        "system_database_url": dsn,
        "log_level": "WARNING",
        "console_log_level": "WARNING",
    }
    DBOS(config=config)

    @DBOS.step()
    def echo(n: int) -> int:
        return n

    @DBOS.workflow()
    def steps(n: int) -> int:
        return sum(echo(i) for i in range(n))

    DBOS.launch()
    return steps, DBOS.destroy


ENGINES = {"floor": floor_engine, "stepstone": stepstone_engine, "dbos": dbos_engine}


def latency(run: Callable[[int], Any], params: dict[str, Any]) -> dict[str, Any]:
    result = {}
    for n in params["n"]:
        for _ in range(params["warmup"]):
            run(n)
        walls, cpus = [], []
        for _ in range(params["rounds"]):
            cpu, wall = time.thread_time(), time.perf_counter()
            run(n)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.thread_time() - cpu)
        result[str(n)] = {
            "wall_us": statistics.median(walls) * 1e6,
            "cpu_us": statistics.median(cpus) * 1e6,
        }
    return result


def throughput(run: Callable[[int], Any], params: dict[str, Any]) -> dict[str, Any]:
    total, threads = params["workflows"], params["threads"]
    for _ in range(params["warmup"]):
        run(1)
    counter = iter(range(total))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                item = next(counter, None)
            if item is None:
                return
            try:
                run(1)
            except BaseException as exc:  # noqa: BLE001 - reported, the run is invalid
                errors.append(exc)
                return

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    started = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return {"workflows_per_s": total / elapsed, "seconds": elapsed}


def main() -> None:
    engine, dsn, workload = sys.argv[1:4]
    params = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    threads = params.get("threads", 1)
    run, close = ENGINES[engine](dsn, threads)
    try:
        if workload == "latency":
            output = latency(run, params)
        elif workload == "throughput":
            output = throughput(run, params)
        elif workload == "counted":
            n = params["n"][0]
            run(n)  # everything prepared and cached before the counters start
            print("ready", flush=True)
            sys.stdin.readline()
            for _ in range(params["workflows"]):
                run(n)
            output = {"workflows": params["workflows"], "n": n}
        else:
            raise SystemExit(f"unknown workload {workload!r}")
    finally:
        close()
    print(json.dumps(output), flush=True)


if __name__ == "__main__":
    main()
