"""benchmarks/compare.py in a smoke size: stepstone's workloads, sync and async, run in their
worker process and their numbers make the tables, so that the comparison cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.compare import WORKER, render, render_twins

ROOT = Path(__file__).resolve().parents[1]


def _work(dsn: str, workload: str, params: dict[str, Any]) -> dict[str, Any]:
    """One workload of stepstone's in a process of its own, as compare.py runs it."""
    done = subprocess.run(
        [sys.executable, str(WORKER), "stepstone", dsn, workload, json.dumps(params)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_sync_and_async_workloads_run_and_fill_both_tables(bench_db: str) -> None:
    """W1/W2 and W3, sync and async (W3-async: many workflows in flight on one event loop),
    each report wall time and CPU, and every stepstone row of the side-by-side table has a
    sync figure, an async figure and their ratio."""
    lat = {
        flavour: _work(bench_db, workload, {"n": [0, 10], "warmup": 1, "rounds": 3})
        for flavour, workload in (("sync", "latency"), ("async", "latency-async"))
    }
    thr = {
        flavour: _work(
            bench_db, workload, {"workflows": 40, "threads": 2, "inflight": 16, "warmup": 1}
        )
        for flavour, workload in (("sync", "throughput"), ("async", "throughput-async"))
    }
    results: dict[str, dict[str, list[float]]] = {"stepstone": {}}
    for flavour, prefix in (("sync", ""), ("async", "a")):
        zero, ten = lat[flavour]["0"], lat[flavour]["10"]
        assert set(zero) == {"wall_us", "cpu_us", "process_cpu_us"}
        metrics = {
            f"w1{prefix}_per_step_us": (ten["wall_us"] - zero["wall_us"]) / 10,
            f"w1{prefix}_cpu_per_step_us": (ten["cpu_us"] - zero["cpu_us"]) / 10,
            f"w1{prefix}_process_cpu_per_step_us": (ten["process_cpu_us"] - zero["process_cpu_us"])
            / 10,
            f"w1{prefix}_one_step_workflow_us": ten["wall_us"] / 10,
            f"w1{prefix}_ten_step_workflow_us": ten["wall_us"],
            f"w2{prefix}_empty_workflow_us": zero["wall_us"],
            f"w2{prefix}_cpu_per_workflow_us": zero["cpu_us"],
            f"w3{prefix}_workflows_per_s": thr[flavour]["workflows_per_s"],
            f"w3{prefix}_cpu_per_workflow_us": thr[flavour]["cpu_us_per_workflow"],
        }
        for key, value in metrics.items():
            results["stepstone"][key] = [value]
    assert thr["async"]["workflows_per_s"] > 0
    assert thr["async"]["cpu_us_per_workflow"] > 0

    twins = render_twins(results, ["stepstone"]).splitlines()
    assert len(twins) == 2 + 9
    for row in twins[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 4, row
        assert all(cells[1:3]), row
        assert cells[3].endswith("x"), row
    table = render(results, ["stepstone"])
    assert "W3-async throughput" in table
