"""W5: queues, stepstone beside DBOS Transact's queues, in one run.

    python benchmarks/queues.py                          # 10,000 workflows; 1, 2, 4 workers
    python benchmarks/queues.py --workflows 2000 --workers 1,2 --engines stepstone

It starts a throwaway PostgreSQL cluster (pg_stat_statements loaded) on a free loopback
port and, for each engine and number of worker processes, in a fresh database:

- drain: one process enqueues `--workflows` one-step workflows (stepstone: a Runtime that
  serves no queue; DBOS: DBOSClient) with no worker running; then the worker processes
  start together (8 at a time each, the same limit for both engines) and run them all.
  Throughput = workflows / (last completion - first start), both read from the engine's
  own status table (the database's clock); statements (pg_stat_statements) and commits
  (pg_stat_database) per workflow over enqueue and drain.
- latency: one idle worker; `--latency` workflows enqueued 200 ms apart (a light load,
  under what either engine drains); enqueue-to-start =
  the start time the engine recorded minus the enqueue time it recorded, p50 and p99.
  stepstone with NOTIFY on, and off (polling every second, as DBOS's queues do by default).

The engines run in fresh processes (benchmarks/queue_engines.py); DBOS 3.4.0 in a virtual
environment of its own (.benchmarks/dbos-venv). Results print as one table and go to
.benchmarks/queues.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from psycopg import sql  # noqa: E402 - after the path is set

from benchmarks.compare import dbos_python  # noqa: E402
from tests.support.cluster import Cluster, cluster  # noqa: E402

SIDE = ROOT / "benchmarks" / "queue_engines.py"

# The start and enqueue times each engine records, by the database's clock, per workflow.
TIMES = {
    "stepstone": (
        "SELECT extract(epoch FROM dispatched_at), extract(epoch FROM finished_at), "
        "extract(epoch FROM created_at) FROM stepstone.executions "
        "WHERE queue_name = 'bench' AND status = 'SUCCEEDED'"
    ),
    "dbos": (
        "SELECT started_at_epoch_ms / 1000.0, coalesce(completed_at, updated_at) / 1000.0, "
        "created_at / 1000.0 FROM dbos.workflow_status "
        "WHERE queue_name = 'bench' AND status = 'SUCCESS'"
    ),
}


class Bench:
    def __init__(self, server: Cluster, pythons: dict[str, str]) -> None:
        self.server = server
        self.pythons = pythons
        self.admin = server.connect("postgres")
        self.admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        self.count = 0

    def fresh(self, engine: str) -> str:
        self.count += 1
        name = f"q_{engine}_{self.count}"
        self.admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.server.port}/{database}?sslmode=disable"

    def command(self, engine: str, dsn: str, role: str, params: dict[str, Any]) -> list[str]:
        return [self.pythons[engine], str(SIDE), engine, dsn, role, json.dumps(params)]

    def run(self, engine: str, dsn: str, role: str, params: dict[str, Any]) -> dict[str, Any]:
        done = subprocess.run(
            self.command(engine, dsn, role, params),
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{engine} {role} failed:\n{done.stderr[-3000:]}")
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))

    def workers(
        self, engine: str, dsn: str, count: int, params: dict[str, Any]
    ) -> list[subprocess.Popen[str]]:
        procs = [
            subprocess.Popen(
                self.command(engine, dsn, "work", params),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(count)
        ]
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(
                    f"{engine} worker did not start: {proc.communicate()[1][-3000:]}"
                )
        return procs

    @staticmethod
    def wait(engine: str, procs: list[subprocess.Popen[str]]) -> None:
        for proc in procs:
            _out, err = proc.communicate(timeout=1800)
            if proc.returncode != 0:
                raise RuntimeError(f"{engine} worker failed:\n{err[-3000:]}")

    def times(self, engine: str, database: str) -> list[tuple[float, float, float]]:
        with self.server.connect(database) as conn:
            return [tuple(map(float, row)) for row in conn.execute(TIMES[engine]).fetchall()]  # type: ignore[misc]

    def counters(self, database: str) -> tuple[float, float]:
        self.admin.execute("SELECT pg_stat_clear_snapshot()")
        statements = self.admin.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s",
            [database],
        ).fetchone()
        commits = self.admin.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", [database]
        ).fetchone()
        assert statements is not None
        assert commits is not None
        return float(statements[0]), float(commits[0])

    def drain(self, engine: str, workflows: int, workers: int) -> dict[str, float]:
        database = self.fresh(engine)
        dsn = self.dsn(database)
        self.run(engine, dsn, "setup", {})
        self.admin.execute("SELECT pg_stat_statements_reset()")
        before = self.counters(database)
        enqueue = self.run(engine, dsn, "produce", {"workflows": workflows})
        procs = self.workers(engine, dsn, workers, {"expect": workflows, "worker_concurrency": 8})
        self.wait(engine, procs)
        time.sleep(1.0)  # backends report their counters as they exit
        after = self.counters(database)
        rows = self.times(engine, database)
        if len(rows) != workflows:
            raise RuntimeError(f"{engine}: {len(rows)} of {workflows} succeeded")
        span = max(r[1] for r in rows) - min(r[0] for r in rows)
        return {
            "workflows_per_s": workflows / span,
            "enqueues_per_s": workflows / enqueue["seconds"],
            "statements_per_workflow": (after[0] - before[0]) / workflows,
            "commits_per_workflow": (after[1] - before[1]) / workflows,
        }

    def latency(self, engine: str, count: int, params: dict[str, Any]) -> dict[str, float]:
        database = self.fresh(engine)
        dsn = self.dsn(database)
        self.run(engine, dsn, "setup", params)
        procs = self.workers(engine, dsn, 1, {**params, "expect": count})
        self.run(engine, dsn, "produce", {**params, "workflows": count, "pause": 0.2})
        self.wait(engine, procs)
        waits = sorted(start - enqueued for start, _end, enqueued in self.times(engine, database))
        return {
            "p50_ms": statistics.median(waits) * 1000,
            "p99_ms": waits[min(len(waits) - 1, int(len(waits) * 0.99))] * 1000,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", type=int, default=10_000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--latency", type=int, default=100)
    parser.add_argument("--engines", default="stepstone,dbos")
    args = parser.parse_args()
    cache = ROOT / ".benchmarks"
    cache.mkdir(exist_ok=True)
    engines = args.engines.split(",")
    pythons = {"stepstone": sys.executable}
    if "dbos" in engines:
        pythons["dbos"] = dbos_python(cache)
    results: dict[str, Any] = {}
    with cluster({"shared_preload_libraries": "'pg_stat_statements'"}) as server:
        bench = Bench(server, pythons)
        for workers in (int(w) for w in args.workers.split(",")):
            for engine in engines:  # side by side, the same number of workers
                print(f"drain: {engine}, {workers} worker(s)", file=sys.stderr)
                results[f"drain {engine} x{workers}"] = bench.drain(engine, args.workflows, workers)
        for engine, label, params in [
            ("stepstone", "stepstone NOTIFY on", {"notify": True}),
            ("stepstone", "stepstone NOTIFY off, poll 1 s", {"notify": False, "poll": 1.0}),
            ("dbos", "dbos (poll 1 s)", {"poll": 1.0}),
        ]:
            if engine in engines:
                print(f"latency: {label}", file=sys.stderr)
                results[f"latency {label}"] = bench.latency(engine, args.latency, params)
    (cache / "queues.json").write_text(json.dumps(results, indent=2))
    for name, values in results.items():
        cells = "  ".join(f"{k} {v:,.1f}" for k, v in values.items())
        print(f"{name:40} {cells}")


if __name__ == "__main__":
    main()
