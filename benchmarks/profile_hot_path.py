"""Where the time of a workflow goes: a cProfile of the hot path, grouped by component.

    python benchmarks/profile_hot_path.py [--steps 10] [--workflows 500]

Runs workflows of N trivial steps against a throwaway cluster (the same setup and
workflow as compare.py) under cProfile with a wall-clock timer, and prints each
component's share of the time spent in the calling thread: waiting for PostgreSQL (the
round trips), psycopg and psycopg-pool in Python, stepstone's runtime, persistence and
telemetry code, and the rest.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.engines import stepstone_engine  # noqa: E402 - after the path is set
from stepstone import migrations  # noqa: E402
from tests.support.cluster import Cluster  # noqa: E402

WAIT_FUNCTIONS = {"wait", "wait_c", "wait_poll", "wait_select", "wait_epoll", "poll", "select"}


def component(filename: str, function: str) -> str:
    if "psycopg" in filename and function in WAIT_FUNCTIONS:
        return "waiting for PostgreSQL (round trips, server time)"
    if "psycopg_pool" in filename:
        return "psycopg-pool"
    if "psycopg" in filename:
        return "psycopg (Python)"
    if "/stepstone/telemetry/" in filename or "opentelemetry" in filename:
        return "telemetry (stepstone + OpenTelemetry API)"
    if "/stepstone/persistence/" in filename:
        return "stepstone persistence (Store, serialization)"
    if "/stepstone/" in filename:
        return "stepstone runtime"
    return "other (stdlib: json, uuid, datetime, threading, ...)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workflows", type=int, default=500)
    args = parser.parse_args()
    cluster = Cluster({"fsync": "on", "synchronous_commit": "on"})
    try:
        with cluster.connect() as conn:
            conn.execute("CREATE DATABASE profiled")
        with cluster.connect("profiled") as conn:
            migrations.migrate(conn, "stepstone")
        steps, shutdown = stepstone_engine(cluster.dsn("profiled"), threads=1)
        for _ in range(50):
            steps(args.steps)
        profile = cProfile.Profile(time.perf_counter)
        started = time.perf_counter()
        profile.enable()
        for _ in range(args.workflows):
            steps(args.steps)
        profile.disable()
        elapsed = time.perf_counter() - started
        shutdown()
    finally:
        cluster.destroy()

    shares: dict[str, float] = {}
    stats = pstats.Stats(profile)
    for (filename, _line, function), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        key = component(filename, function)
        shares[key] = shares.get(key, 0.0) + tottime
    total = sum(shares.values())
    per_workflow = elapsed / args.workflows * 1e6
    print(
        f"{args.workflows} workflows of {args.steps} steps; {per_workflow:,.0f} µs per workflow (profiled)"
    )
    for key, seconds in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"  {100 * seconds / total:5.1f}%  {key}")


if __name__ == "__main__":
    main()
