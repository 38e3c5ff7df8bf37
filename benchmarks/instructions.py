"""Calling-thread instructions per step and per empty workflow, counted by callgrind.

    python benchmarks/instructions.py                      # sync and async, this checkout
    python benchmarks/instructions.py --baseline ../before # and the sync path of another checkout

Wall-clock figures on a shared machine move by tens of percent from one run to the next;
instruction counts do not. Each measurement is a fresh process under
`valgrind --tool=callgrind --separate-threads=yes` (PYTHONHASHSEED=0) against a throwaway
cluster: a warm-up of 20 ten-step workflows, then N workflows of S trivial steps, called
from the main thread (sync) or awaited on an event loop (async). From the main thread's
total for (S, N) = (0, 0), (0, N) and (10, N): per empty workflow = ((0, N) - (0, 0)) / N,
per step = ((10, N) - (0, N)) / (10 N). For scale, psycopg alone: one statement on a
connection taken from its sync pool, and from its async pool awaited on an event loop (a
"step" is one such statement; it has no empty workflow). When uvloop is installed (it is
not a dependency), the async rows are measured on its event loop too. Needs valgrind;
takes about five minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

ROOT = Path(__file__).resolve().parents[1]

SYNC_CHILD = "sync"
ASYNC_CHILD = "async"
FLOOR_SYNC = "floor-sync"
FLOOR_ASYNC = "floor-async"
UVLOOP = "+uvloop"  # suffix of an async flavour: the same on uvloop's event loop


def run_loop(flavour: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """`main()` on asyncio's own event loop, or on uvloop's for a "+uvloop" flavour."""
    if flavour.endswith(UVLOOP):
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def floor(flavour: str, dsn: str, steps: int, count: int) -> None:
    """psycopg alone: each "step" one statement on a connection taken from the pool and
    given back (ConnectionPool, or AsyncConnectionPool awaited), as a step's commit is
    sent."""
    from psycopg_pool import AsyncConnectionPool, ConnectionPool

    query = "SELECT %(n)s::int"
    if flavour == FLOOR_SYNC:
        with ConnectionPool(dsn, min_size=1, max_size=1, kwargs={"autocommit": True}) as pool:
            for n in range(200 + count * steps):
                conn = pool.getconn()
                try:
                    conn.execute(query, {"n": n}).fetchone()
                finally:
                    pool.putconn(conn)
        return

    async def main() -> None:
        async with AsyncConnectionPool(
            dsn, min_size=1, max_size=1, kwargs={"autocommit": True}
        ) as pool:
            for n in range(200 + count * steps):
                conn = await pool.getconn()
                try:
                    await (await conn.execute(query, {"n": n})).fetchone()
                finally:
                    await pool.putconn(conn)

    run_loop(flavour, main)


def child(flavour: str, dsn: str, steps: int, count: int) -> None:
    """The measured process: stepstone is imported from PYTHONPATH (the checkout measured)."""
    if flavour.startswith("floor"):
        floor(flavour, dsn, steps, count)
        return
    from stepstone import Runtime

    rt = Runtime(
        dsn,
        pool_min_size=1,
        pool_max_size=2,
        executor_id=f"instructions-{flavour}",
        heartbeat_interval=60,
        sweep_interval=60,
        lease_seconds=300,
        notify=False,
    )
    if flavour == SYNC_CHILD:

        @rt.step()
        def echo(i: int) -> int:
            return i

        @rt.workflow()
        def flow(k: int) -> int:
            return sum(echo(i) for i in range(k))

        rt.launch()
        for _ in range(20):
            flow(10)
        for _ in range(count):
            flow(steps)
        rt.shutdown()
        return

    @rt.step()
    async def aecho(i: int) -> int:
        return i

    @rt.workflow()
    async def aflow(k: int) -> int:
        return sum([await aecho(i) for i in range(k)])

    async def main() -> None:
        async with rt:
            for _ in range(20):
                await aflow(10)
            for _ in range(count):
                await aflow(steps)

    run_loop(flavour, main)


def measure(checkout: Path, flavour: str, dsn: str, steps: int, count: int) -> int:
    """The main thread's instructions for one child run."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--separate-threads=yes",
                f"--callgrind-out-file={out}.%p",
                sys.executable,
                __file__,
                "--child",
                flavour,
                dsn,
                str(steps),
                str(count),
            ],
            env={**os.environ, "PYTHONPATH": str(checkout), "PYTHONHASHSEED": "0"},
            check=True,
            capture_output=True,
        )
        (main_thread,) = Path(tmp).glob("callgrind.out.*-01")
        for line in main_thread.read_text().splitlines():
            if line.startswith("summary:"):
                return int(line.split()[1])
    raise RuntimeError("callgrind wrote no summary")


def per_unit(checkout: Path, flavour: str, dsn: str, count: int) -> tuple[float, float]:
    """(instructions per empty workflow, per step)."""
    idle = measure(checkout, flavour, dsn, 0, 0)
    empty = measure(checkout, flavour, dsn, 0, count)
    ten = measure(checkout, flavour, dsn, 10, count)
    return (empty - idle) / count, (ten - empty) / (10 * count)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout (sync)")
    parser.add_argument("--workflows", type=int, default=100, help="N")
    parser.add_argument("--child", nargs=4, metavar=("FLAVOUR", "DSN", "STEPS", "N"))
    args = parser.parse_args()
    if args.child:
        flavour, dsn, steps, count = args.child
        child(flavour, dsn, int(steps), int(count))
        return

    sys.path.insert(0, str(ROOT))
    from stepstone import migrations
    from tests.support.cluster import Cluster

    engines = [
        ("this checkout, sync", ROOT, SYNC_CHILD),
        ("this checkout, async", ROOT, ASYNC_CHILD),
        ("psycopg alone, sync pool", ROOT, FLOOR_SYNC),
        ("psycopg alone, async pool", ROOT, FLOOR_ASYNC),
    ]
    if importlib.util.find_spec("uvloop") is not None:
        # The same on uvloop (not a dependency: measured when it is installed), to show how
        # much of the async cost is the event loop's.
        engines += [
            ("this checkout, async on uvloop", ROOT, ASYNC_CHILD + UVLOOP),
            ("psycopg alone, async pool on uvloop", ROOT, FLOOR_ASYNC + UVLOOP),
        ]
    if args.baseline is not None:
        engines.insert(0, ("baseline, sync", args.baseline.resolve(), SYNC_CHILD))
    cluster = Cluster({"fsync": "on", "synchronous_commit": "on"})
    results = {}
    try:
        for n, (label, checkout, flavour) in enumerate(engines):
            name = f"counted{n}"
            with cluster.connect() as conn:
                conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
            with cluster.connect(name) as conn:
                migrations.migrate(conn, "stepstone")
            results[label] = per_unit(checkout, flavour, cluster.dsn(name), args.workflows)
            print(f"measured {label}", file=sys.stderr)
    finally:
        cluster.destroy()

    reference = results["this checkout, sync"]
    print("| | instructions per empty workflow | per step | ÷ this checkout's sync |")
    print("|---|---|---|---|")
    for label, (empty, step) in results.items():
        if label.startswith("psycopg"):  # no workflows: only its statements count
            print(f"| {label} | - | {step:,.0f} | -, {step / reference[1]:.3f}x |")
            continue
        ratio = f"{empty / reference[0]:.3f}x, {step / reference[1]:.3f}x"
        print(f"| {label} | {empty:,.0f} | {step:,.0f} | {ratio} |")


if __name__ == "__main__":
    main()
