"""stepstone beside DBOS Transact and the raw PostgreSQL commit, in one run.

    python benchmarks/compare.py                  # everything, about ten minutes
    python benchmarks/compare.py --engines floor,stepstone --repetitions 1 --rounds 20
    python benchmarks/compare.py --engines stepstone,baseline --baseline ../old-checkout
    python benchmarks/compare.py --engines stepstone,dbos --skip-counts --inflight 256

It starts a throwaway PostgreSQL cluster (default durability: fsync and synchronous_commit
on; pg_stat_statements loaded) on a free loopback port, talks to it over TCP, gives each
engine its own database, installs DBOS Transact (dbos==3.4.0) into a virtual environment of
its own (.benchmarks/dbos-venv; the project never depends on it), and runs each workload in
fresh processes, engines interleaved, for several repetitions. Then it prints one table with
medians, min..max over the repetitions, ratios, and the goals met or missed; the same
numbers go to .benchmarks/compare.json. With `--baseline DIR` (another checkout of stepstone,
e.g. `git worktree add ../old <commit>`), the engine `baseline` is that checkout's stepstone,
run by its own benchmarks/engines.py, so that a change is measured before and after in one
run, side by side.

Workloads
- W1: a workflow of N trivial steps (N = 0, 1, 10) called from one thread; per-step overhead
  = (median N=10 - median N=0) / 10, and calling-thread CPU per step likewise.
- W2: the empty workflow (N = 0).
- W3: throughput of 2000 one-step workflows started by 16 threads that each start one and
  wait for it; and the calling process's CPU time per workflow (all its threads).
- W1-async, W2-async, W3-async (stepstone and DBOS): the same with `async def` workflows and
  steps, each engine's async API. W1/W2-async: one task awaits each workflow on an event
  loop; the loop's thread is the calling thread. W3-async: 2000 one-step workflows on ONE
  event loop, at most 256 in flight (a semaphore; each task awaits its workflow directly).
  A second table puts each engine's sync and async figures side by side. DBOS's async API
  does its database work in worker threads (asyncio.to_thread): its calling-thread CPU
  leaves that out, the process CPU rows count it.
- W4: statements (pg_stat_statements), transactions (pg_stat_database) and WAL syncs
  (pg_stat_wal, or pg_stat_io from PostgreSQL 18) per workflow and per step, over 200 workflows of 0 and of 10 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from psycopg import sql  # noqa: E402 - after the path is set

from tests.support.cluster import Cluster  # noqa: E402

ENGINES = ("floor", "stepstone", "dbos")
ASYNC_ENGINES = ("stepstone", "dbos")  # the engines with an async API (not floor, baseline)
# WAL syncs so far: pg_stat_wal up to PostgreSQL 17, pg_stat_io's WAL rows from 18 on.
WAL_SYNCS = {
    False: "SELECT wal_sync FROM pg_stat_wal",
    True: "SELECT coalesce(sum(fsyncs), 0) FROM pg_stat_io WHERE object = 'wal'",
}
DBOS_VERSION = "3.4.0"
WORKER = ROOT / "benchmarks" / "engines.py"


def dbos_python(cache: Path) -> str:
    """The interpreter of a virtual environment with dbos installed (made on first use)."""
    venv = cache / "dbos-venv"
    python = venv / "bin" / "python"
    marker = venv / f"dbos-{DBOS_VERSION}"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", f"dbos=={DBOS_VERSION}"], check=True
        )
        marker.touch()
    return str(python)


class Runner:
    def __init__(
        self, cluster: Cluster, pythons: dict[str, str], baseline: Path | None = None
    ) -> None:
        self.cluster = cluster
        self.pythons = pythons
        self.baseline = baseline
        self.admin = cluster.connect("postgres")
        self.admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        for engine in pythons:
            self.admin.execute(
                sql.SQL("CREATE DATABASE {}").format(sql.Identifier(f"bench_{engine}"))
            )

    def dsn(self, engine: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.cluster.port}/bench_{engine}?sslmode=disable"

    def command(self, engine: str, workload: str, params: dict[str, Any]) -> list[str]:
        worker, name = WORKER, engine
        if engine == "baseline":
            assert self.baseline is not None
            worker, name = self.baseline / "benchmarks" / "engines.py", "stepstone"
        return [
            self.pythons[engine],
            str(worker),
            name,
            self.dsn(engine),
            workload,
            json.dumps(params),
        ]

    def env(self, engine: str) -> dict[str, str]:
        """The baseline imports stepstone from its own checkout."""
        if engine != "baseline" or self.baseline is None:
            return dict(os.environ)
        return {**os.environ, "PYTHONPATH": str(self.baseline)}

    def run(self, engine: str, workload: str, params: dict[str, Any]) -> dict[str, Any]:
        done = subprocess.run(
            self.command(engine, workload, params),
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
            env=self.env(engine),
        )
        if done.returncode != 0:
            raise RuntimeError(f"{engine} {workload} failed:\n{done.stderr[-3000:]}")
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))

    def counted(self, engine: str, n: int, workflows: int) -> dict[str, float]:
        """Statements, transactions and WAL syncs of `workflows` workflows of n steps."""
        proc = subprocess.Popen(
            self.command(engine, "counted", {"n": [n], "workflows": workflows}),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(engine),
        )
        assert proc.stdout is not None
        assert proc.stdin is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(
                f"{engine} counted did not start: {line}{proc.communicate()[1][-3000:]}"
            )
        self.admin.execute("SELECT pg_stat_statements_reset()")
        self.admin.execute("SELECT pg_stat_reset_shared('wal')")
        with self.cluster.connect(f"bench_{engine}") as conn:
            conn.execute("SELECT pg_stat_reset()")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        _out, err = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"{engine} counted failed:\n{err[-3000:]}")
        # Backends report their counters when they exit: wait until they have.
        database = f"bench_{engine}"
        deadline = time.monotonic() + 30
        while self.admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [database]
        ).fetchone() != (0,):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{engine}'s connections did not close")
            time.sleep(0.1)
        time.sleep(0.5)
        self.admin.execute("SELECT pg_stat_clear_snapshot()")
        statements = self.admin.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s",
            [database],
        ).fetchone()
        transactions = self.admin.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            [database],
        ).fetchone()
        syncs = self.admin.execute(WAL_SYNCS[self.admin.info.server_version >= 180000]).fetchone()
        assert statements is not None
        assert transactions is not None
        assert syncs is not None
        return {
            "statements": float(statements[0]),
            "transactions": float(transactions[0]),
            "wal_syncs": float(syncs[0]),
        }


def measure(
    runner: Runner, engines: list[str], args: argparse.Namespace
) -> dict[str, dict[str, list[float]]]:
    """Every metric of every engine, one value per repetition."""
    results: dict[str, dict[str, list[float]]] = {engine: {} for engine in engines}

    def add(engine: str, key: str, value: float) -> None:
        results[engine].setdefault(key, []).append(value)

    for repetition in range(args.repetitions):
        order = engines[repetition % len(engines) :] + engines[: repetition % len(engines)]
        for engine in order:
            print(f"repetition {repetition + 1}: {engine}", file=sys.stderr)
            lat = runner.run(
                engine, "latency", {"n": [0, 1, 10], "warmup": args.warmup, "rounds": args.rounds}
            )
            add(engine, "w2_empty_workflow_us", lat["0"]["wall_us"])
            add(engine, "w1_one_step_workflow_us", lat["1"]["wall_us"])
            add(engine, "w1_ten_step_workflow_us", lat["10"]["wall_us"])
            add(engine, "w1_per_step_us", (lat["10"]["wall_us"] - lat["0"]["wall_us"]) / 10)
            add(engine, "w1_cpu_per_step_us", (lat["10"]["cpu_us"] - lat["0"]["cpu_us"]) / 10)
            add(engine, "w2_cpu_per_workflow_us", lat["0"]["cpu_us"])
            if "process_cpu_us" in lat["0"]:  # not in a baseline that predates it
                add(
                    engine,
                    "w1_process_cpu_per_step_us",
                    (lat["10"]["process_cpu_us"] - lat["0"]["process_cpu_us"]) / 10,
                )
            thr = runner.run(
                engine,
                "throughput",
                {"workflows": args.workflows, "threads": args.threads, "warmup": 20},
            )
            add(engine, "w3_workflows_per_s", thr["workflows_per_s"])
            if "cpu_us_per_workflow" in thr:
                add(engine, "w3_cpu_per_workflow_us", thr["cpu_us_per_workflow"])
            if args.skip_async or engine not in ASYNC_ENGINES:
                continue
            lat = runner.run(
                engine,
                "latency-async",
                {"n": [0, 1, 10], "warmup": args.warmup, "rounds": args.rounds},
            )
            add(engine, "w2a_empty_workflow_us", lat["0"]["wall_us"])
            add(engine, "w1a_one_step_workflow_us", lat["1"]["wall_us"])
            add(engine, "w1a_ten_step_workflow_us", lat["10"]["wall_us"])
            add(engine, "w1a_per_step_us", (lat["10"]["wall_us"] - lat["0"]["wall_us"]) / 10)
            add(engine, "w1a_cpu_per_step_us", (lat["10"]["cpu_us"] - lat["0"]["cpu_us"]) / 10)
            add(
                engine,
                "w1a_process_cpu_per_step_us",
                (lat["10"]["process_cpu_us"] - lat["0"]["process_cpu_us"]) / 10,
            )
            add(engine, "w2a_cpu_per_workflow_us", lat["0"]["cpu_us"])
            thr = runner.run(
                engine,
                "throughput-async",
                {
                    "workflows": args.workflows,
                    "inflight": args.inflight,
                    "threads": args.threads,  # the pool: as large as the sync W3's
                    "warmup": 20,
                },
            )
            add(engine, "w3a_workflows_per_s", thr["workflows_per_s"])
            add(engine, "w3a_cpu_per_workflow_us", thr["cpu_us_per_workflow"])
    if not args.skip_counts:
        for engine in engines:
            zero = runner.counted(engine, 0, args.counted)
            ten = runner.counted(engine, 10, args.counted)
            for key in ("statements", "transactions", "wal_syncs"):
                add(engine, f"w4_{key}_per_workflow", zero[key] / args.counted)
                add(engine, f"w4_{key}_per_step", (ten[key] - zero[key]) / (10 * args.counted))
    return results


ROWS = [
    ("w1_per_step_us", "W1 per-step overhead (µs)"),
    ("w1_cpu_per_step_us", "W1 calling-thread CPU per step (µs)"),
    ("w1_one_step_workflow_us", "W1 one-step workflow (µs)"),
    ("w1_ten_step_workflow_us", "W1 ten-step workflow (µs)"),
    ("w2_empty_workflow_us", "W2 empty workflow (µs)"),
    ("w2_cpu_per_workflow_us", "W2 calling-thread CPU per empty workflow (µs)"),
    ("w1_process_cpu_per_step_us", "W1 process CPU per step (µs)"),
    ("w3_workflows_per_s", "W3 throughput, 16 threads (workflows/s)"),
    ("w3_cpu_per_workflow_us", "W3 process CPU per workflow (µs)"),
    ("w1a_per_step_us", "W1-async per-step overhead (µs)"),
    ("w1a_cpu_per_step_us", "W1-async calling-thread CPU per step (µs)"),
    ("w1a_process_cpu_per_step_us", "W1-async process CPU per step (µs)"),
    ("w1a_one_step_workflow_us", "W1-async one-step workflow (µs)"),
    ("w1a_ten_step_workflow_us", "W1-async ten-step workflow (µs)"),
    ("w2a_empty_workflow_us", "W2-async empty workflow (µs)"),
    ("w2a_cpu_per_workflow_us", "W2-async calling-thread CPU per empty workflow (µs)"),
    ("w3a_workflows_per_s", "W3-async throughput, 256 in flight on one loop (workflows/s)"),
    ("w3a_cpu_per_workflow_us", "W3-async process CPU per workflow (µs)"),
    ("w4_statements_per_workflow", "W4 statements per workflow"),
    ("w4_transactions_per_workflow", "W4 transactions per workflow"),
    ("w4_wal_syncs_per_workflow", "W4 WAL syncs per workflow"),
    ("w4_statements_per_step", "W4 statements per step"),
    ("w4_transactions_per_step", "W4 transactions per step"),
    ("w4_wal_syncs_per_step", "W4 WAL syncs per step"),
]


def _cell(values: list[float] | None) -> str:
    if not values:
        return "-"
    median = statistics.median(values)
    digits = 0 if median >= 100 else 2
    if len(values) == 1:
        return f"{median:,.{digits}f}"
    return f"{median:,.{digits}f} ({min(values):,.{digits}f}..{max(values):,.{digits}f})"


def goals(results: dict[str, dict[str, list[float]]]) -> list[str]:
    """The issue's goals for stepstone, each met or missed and by how much."""
    med = {e: {k: statistics.median(v) for k, v in m.items()} for e, m in results.items()}
    stone, floor, dbos = med.get("stepstone", {}), med.get("floor", {}), med.get("dbos", {})
    lines = []

    def check(
        name: str, value: float | None, limit: float | None, *, at_most: bool, unit: str = ""
    ) -> None:
        if value is None or limit is None:
            lines.append(f"- {name}: not measured in this run")
            return
        met = value <= limit if at_most else value >= limit
        relation = "<=" if at_most else ">="
        verdict = "met" if met else f"MISSED by {abs(value / limit - 1) * 100:.0f}%"
        lines.append(
            f"- {name}: {value:,.2f}{unit} (goal {relation} {limit:,.2f}{unit}): {verdict}"
        )

    commit = floor.get("w2_empty_workflow_us")  # floor's "workflow" is one durable commit
    check(
        "per-step overhead vs floor commit",
        stone.get("w1_per_step_us"),
        commit and 1.5 * commit,
        at_most=True,
        unit=" µs",
    )
    check(
        "calling-thread CPU per step",
        stone.get("w1_cpu_per_step_us"),
        150.0,
        at_most=True,
        unit=" µs",
    )
    check(
        "empty workflow vs floor commit",
        stone.get("w2_empty_workflow_us"),
        commit and 3 * commit,
        at_most=True,
        unit=" µs",
    )
    dbos_rate = dbos.get("w3_workflows_per_s")
    check(
        "W3 throughput vs DBOS",
        stone.get("w3_workflows_per_s"),
        dbos_rate and 10 * dbos_rate,
        at_most=False,
        unit="/s",
    )
    for key, name in (
        ("w1_per_step_us", "async per-step overhead vs sync"),
        ("w1_cpu_per_step_us", "async calling-task CPU per step vs sync"),
    ):
        sync = stone.get(key)
        check(
            name,
            stone.get(key.replace("w1_", "w1a_")),
            sync and 1.1 * sync,
            at_most=True,
            unit=" µs",
        )
    return lines


# Each sync row and its async twin, for the side-by-side table.
TWINS = [
    ("w1_per_step_us", "w1a_per_step_us", "per-step overhead (µs)"),
    ("w1_cpu_per_step_us", "w1a_cpu_per_step_us", "calling-thread CPU per step (µs)"),
    ("w1_process_cpu_per_step_us", "w1a_process_cpu_per_step_us", "process CPU per step (µs)"),
    ("w1_one_step_workflow_us", "w1a_one_step_workflow_us", "one-step workflow (µs)"),
    ("w1_ten_step_workflow_us", "w1a_ten_step_workflow_us", "ten-step workflow (µs)"),
    ("w2_empty_workflow_us", "w2a_empty_workflow_us", "empty workflow (µs)"),
    (
        "w2_cpu_per_workflow_us",
        "w2a_cpu_per_workflow_us",
        "calling-thread CPU per empty workflow (µs)",
    ),
    (
        "w3_workflows_per_s",
        "w3a_workflows_per_s",
        "W3 throughput (workflows/s; sync: 16 threads, async: 256 tasks on one loop)",
    ),
    ("w3_cpu_per_workflow_us", "w3a_cpu_per_workflow_us", "W3 process CPU per workflow (µs)"),
]


def render_twins(results: dict[str, dict[str, list[float]]], engines: list[str]) -> str:
    """Sync beside async, per engine with an async API, and async ÷ sync of the medians."""
    shown = [e for e in engines if e in ASYNC_ENGINES and "w1a_per_step_us" in results[e]]
    if not shown:
        return ""
    header = "| |" + "".join(f" {e} sync | {e} async | {e} async ÷ sync |" for e in shown)
    lines = [header, "|---|" + "---|---|---|" * len(shown)]
    for sync_key, async_key, label in TWINS:
        cells = []
        for engine in shown:
            sync, asynchronous = results[engine].get(sync_key), results[engine].get(async_key)
            ratio = (
                f"{statistics.median(asynchronous) / statistics.median(sync):.2f}x"
                if sync and asynchronous and statistics.median(sync)
                else ""
            )
            cells += [_cell(sync), _cell(asynchronous), ratio]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


LATENCY_ROWS = {
    "w1_per_step_us",
    "w1_one_step_workflow_us",
    "w1_ten_step_workflow_us",
    "w2_empty_workflow_us",
    "w1a_per_step_us",
    "w1a_one_step_workflow_us",
    "w1a_ten_step_workflow_us",
    "w2a_empty_workflow_us",
}
PER_STEP_ROWS = {
    "w1_per_step_us",
    "w1_cpu_per_step_us",
    "w1_process_cpu_per_step_us",
    "w4_statements_per_step",
    "w4_transactions_per_step",
    "w4_wal_syncs_per_step",
}


def render(results: dict[str, dict[str, list[float]]], engines: list[str]) -> str:
    """One row per metric; latencies also as multiples of the floor's commit, W3 as a
    multiple of DBOS's throughput. The floor has no steps: its per-step cells are empty."""
    commit = results.get("floor", {}).get("w2_empty_workflow_us")
    before = "baseline" in engines
    lines = [
        "| | "
        + " | ".join(engines)
        + " | stepstone ÷ floor commit | dbos ÷ floor commit | stepstone ÷ dbos |"
        + (" stepstone ÷ baseline |" if before else ""),
        "|" + "---|" * (len(engines) + 4 + before),
    ]

    def median(engine: str, key: str) -> float | None:
        values = results.get(engine, {}).get(key)
        return statistics.median(values) if values else None

    for key, label in ROWS:
        cells = [
            "-" if engine == "floor" and key in PER_STEP_ROWS else _cell(results[engine].get(key))
            for engine in engines
        ]
        ratios = []
        for engine in ("stepstone", "dbos"):
            value = median(engine, key)
            ratios.append(
                f"{value / statistics.median(commit):.2f}x"
                if key in LATENCY_ROWS and value and commit
                else ""
            )
        stone, dbos = median("stepstone", key), median("dbos", key)
        ratios.append(f"{stone / dbos:.2f}x" if stone is not None and dbos else "")
        if before:
            base = median("baseline", key)
            ratios.append(f"{stone / base:.2f}x" if stone is not None and base else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--workflows", type=int, default=2000, help="W3 workflows")
    parser.add_argument("--threads", type=int, default=16, help="W3 threads")
    parser.add_argument(
        "--inflight", type=int, default=256, help="W3-async workflows in flight on one loop"
    )
    parser.add_argument("--skip-async", action="store_true", help="skip the async workloads")
    parser.add_argument("--counted", type=int, default=200, help="W4 workflows per N")
    parser.add_argument("--skip-counts", action="store_true", help="skip W4")
    parser.add_argument("--cache", type=Path, default=ROOT / ".benchmarks")
    parser.add_argument(
        "--baseline", type=Path, default=None, help="another checkout, run as engine 'baseline'"
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="JSON results (default: CACHE/compare.json)"
    )
    args = parser.parse_args()
    engines = [e for e in args.engines.split(",") if e]
    known = set(ENGINES) | ({"baseline"} if args.baseline else set())
    unknown = set(engines) - known
    if unknown:
        parser.error(f"unknown engines {sorted(unknown)}; choose from {', '.join(sorted(known))}")
    args.cache.mkdir(parents=True, exist_ok=True)
    pythons = dict.fromkeys(engines, sys.executable)
    if "dbos" in engines:
        pythons["dbos"] = dbos_python(args.cache)

    cluster = Cluster(
        {
            "shared_preload_libraries": "'pg_stat_statements'",
            "fsync": "on",
            "synchronous_commit": "on",
        }
    )
    try:
        runner = Runner(cluster, pythons, args.baseline and args.baseline.resolve())
        results = measure(runner, engines, args)
    finally:
        cluster.destroy()
    table = render(results, engines)
    twins = render_twins(results, engines)
    verdicts = goals(results)
    machine = f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, PostgreSQL cluster on 127.0.0.1 (TCP), fsync on"
    print(
        f"\n{machine}; {args.repetitions} repetitions; median (min..max)\n\n{table}\n\n"
        + (f"Sync and async side by side\n\n{twins}\n\n" if twins else "")
        + "Goals:\n"
        + "\n".join(verdicts)
    )
    output = args.output or args.cache / "compare.json"
    output.write_text(
        json.dumps({"machine": machine, "results": results, "goals": verdicts}, indent=2)
    )


if __name__ == "__main__":
    main()
