"""A process killed with SIGKILL inside an async workflow's second step, then a new process
(a `launch()` runtime or a `launch_async()` one: the records are the same) resumes it on
its event loop thread, continuing the trace of the process that died."""

from __future__ import annotations

import json
import signal
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

if TYPE_CHECKING:
    from tests.crash.conftest import Workers

WORKER = "tests.crash.async_worker"


def _spans(workers: Workers) -> list[dict[str, Any]]:
    path = workers.notes / "spans"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("restart_as", ["worker-1", "worker-2"])
@pytest.mark.parametrize("resumer", ["serve", "aserve"])
def test_killed_async_workflow_is_resumed_by_a_sync_or_an_async_runtime(
    workers: Workers, resumer: str, restart_as: str
) -> None:
    """Killed inside its second step, the async execution is resumed by a new process with
    the same executor id (at launch) or another (once the lease expired), sync or async:
    its first step is not run again, the second runs again on the loop thread, it ends
    SUCCEEDED, and its resumed span continues the original trace."""
    killed = workers.run("worker-1", "run", "inside_second_step", module=WORKER)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert workers.note_lines() == ["first MainThread", "second MainThread"]
    before = _spans(workers)
    assert [s["name"] for s in before] == ["step first"]  # the workflow span died unended
    original_trace = before[0]["context"]["trace_id"]
    original_workflow_span = before[0]["parent_id"]

    served = workers.run(restart_as, resumer, module=WORKER)
    assert served.returncode == 0, served.stderr
    assert served.stdout.strip() == "first of pair-7, second of pair-7"
    assert workers.note_lines()[2:] == ["second stepstone-loop"]
    with psycopg.connect(workers.db) as conn:
        row = conn.execute(
            "SELECT status, owner, epoch FROM stepstone.executions WHERE id = 'pair-7'"
        ).fetchone()
        steps = conn.execute(
            "SELECT name FROM stepstone.steps WHERE execution_id = 'pair-7' ORDER BY seq"
        ).fetchall()
    assert row == ("SUCCEEDED", restart_as, 2)
    assert [name for (name,) in steps] == ["first", "second"]

    after = _spans(workers)[len(before) :]
    assert sorted(s["name"] for s in after) == ["step second", "workflow pair"]
    workflow = next(s for s in after if s["name"] == "workflow pair")
    assert {s["context"]["trace_id"] for s in after} == {original_trace}
    assert workflow["parent_id"] == original_workflow_span
    assert workflow["attributes"]["stepstone.recovered"] is True
