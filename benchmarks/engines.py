"""One engine, one workload, in a process of its own: the worker of benchmarks/compare.py.

    python benchmarks/engines.py ENGINE DSN WORKLOAD [JSON PARAMETERS]

ENGINE is floor, stepstone or dbos (run with the interpreter of the virtual environment
that has DBOS installed). WORKLOAD is:

- latency: for each N in params["n"], params["warmup"] untimed then params["rounds"] timed
  calls of a workflow of N trivial steps (a step returns its int argument), from one
  thread; prints the median wall time, the median calling-thread CPU time and the median
  CPU time of the whole process (its other threads too) per call.
- throughput: params["workflows"] one-step workflows, started by params["threads"] threads
  that each start one and wait for it, over and over (each engine's own way of running a
  workflow and waiting for it: calling it); prints workflows per second.
- counted: prints "ready", waits for a line on stdin, runs params["workflows"] workflows
  of params["n"][0] steps, shuts down and prints "done" (the runner reads the server's
  counters around it).
- latency-async: latency with `async def` workflows and steps, each call awaited by one
  task on an event loop (the loop's thread is the calling thread).
- throughput-async: params["workflows"] one-step `async def` workflows on ONE event loop,
  at most params["inflight"] in flight (a semaphore; one task per workflow, each awaiting
  its workflow directly); prints workflows per second.

Both throughputs also print the process's CPU time per workflow (every thread of the
calling process: the engine's own threads count, the database server's do not).

For `floor`, a "workflow" is one INSERT of a ~200-byte row into an indexed table, committed
(autocommit): the price of one durable write; N is ignored.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    AsyncEngine = tuple[Callable[[int], Awaitable[Any]], Callable[[], Awaitable[None]]]

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


async def stepstone_async_engine(dsn: str, threads: int) -> AsyncEngine:
    """The same workflow with `async def` workflow and step, on the async pool (sized as
    the sync engine's pool for the same `threads`, so both paths get the same connections)."""
    from stepstone import Runtime

    rt = Runtime(
        dsn,
        executor_id=f"bench-{time.time_ns()}",
        workers=max(8, threads),
        pool_max_size=max(10, threads + 4),
    )

    @rt.step()
    async def echo(n: int) -> int:
        return n

    @rt.workflow()
    async def steps(n: int) -> int:
        total = 0
        for i in range(n):
            total += await echo(i)
        return total

    await rt.launch_async()
    return steps, rt.shutdown_async


async def dbos_async_engine(dsn: str, threads: int) -> AsyncEngine:
    """DBOS's async API: `async def` workflow and step, the workflow awaited directly."""
    from dbos import DBOS, DBOSConfig

    config: DBOSConfig = {
        "name": "bench",
        "system_database_url": dsn,
        "log_level": "WARNING",
        "console_log_level": "WARNING",
    }
    DBOS(config=config)

    @DBOS.step()
    async def echo(n: int) -> int:
        return n

    @DBOS.workflow()
    async def steps(n: int) -> int:
        total = 0
        for i in range(n):
            total += await echo(i)
        return total

    DBOS.launch()

    async def close() -> None:
        DBOS.destroy()

    return steps, close


ENGINES = {"floor": floor_engine, "stepstone": stepstone_engine, "dbos": dbos_engine}
ASYNC_ENGINES = {"stepstone": stepstone_async_engine, "dbos": dbos_async_engine}


def latency(run: Callable[[int], Any], params: dict[str, Any]) -> dict[str, Any]:
    result = {}
    for n in params["n"]:
        for _ in range(params["warmup"]):
            run(n)
        walls, cpus, processes = [], [], []
        for _ in range(params["rounds"]):
            process, cpu = time.process_time(), time.thread_time()
            wall = time.perf_counter()
            run(n)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.thread_time() - cpu)
            processes.append(time.process_time() - process)
        result[str(n)] = {
            "wall_us": statistics.median(walls) * 1e6,
            "cpu_us": statistics.median(cpus) * 1e6,
            "process_cpu_us": statistics.median(processes) * 1e6,
        }
    return result


async def latency_async(
    run: Callable[[int], Awaitable[Any]], params: dict[str, Any]
) -> dict[str, Any]:
    result = {}
    for n in params["n"]:
        for _ in range(params["warmup"]):
            await run(n)
        walls, cpus, processes = [], [], []
        for _ in range(params["rounds"]):
            process, cpu = time.process_time(), time.thread_time()
            wall = time.perf_counter()
            await run(n)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.thread_time() - cpu)
            processes.append(time.process_time() - process)
        result[str(n)] = {
            "wall_us": statistics.median(walls) * 1e6,
            "cpu_us": statistics.median(cpus) * 1e6,
            "process_cpu_us": statistics.median(processes) * 1e6,
        }
    return result


async def throughput_async(
    run: Callable[[int], Awaitable[Any]], params: dict[str, Any]
) -> dict[str, Any]:
    total, inflight = params["workflows"], params["inflight"]
    for _ in range(params["warmup"]):
        await run(1)
    gate = asyncio.Semaphore(inflight)

    async def one() -> None:
        async with gate:
            await run(1)

    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(total)))
    elapsed = time.perf_counter() - started
    return {
        "workflows_per_s": total / elapsed,
        "seconds": elapsed,
        "cpu_us_per_workflow": (time.process_time() - cpu) / total * 1e6,
    }


async def run_async(engine: str, dsn: str, workload: str, params: dict[str, Any]) -> Any:
    if engine not in ASYNC_ENGINES:
        raise SystemExit(f"{engine!r} has no async workloads; choose from {sorted(ASYNC_ENGINES)}")
    run, close = await ASYNC_ENGINES[engine](dsn, params.get("threads", 1))
    try:
        if workload == "latency-async":
            return await latency_async(run, params)
        return await throughput_async(run, params)
    finally:
        await close()


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
    cpu, started = time.process_time(), time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return {
        "workflows_per_s": total / elapsed,
        "seconds": elapsed,
        "cpu_us_per_workflow": (time.process_time() - cpu) / total * 1e6,
    }


def main() -> None:
    engine, dsn, workload = sys.argv[1:4]
    params = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    if workload in ("latency-async", "throughput-async"):
        print(json.dumps(asyncio.run(run_async(engine, dsn, workload, params))), flush=True)
        return
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
