"""One trace across a crash: the worker that resumes an execution continues the trace of the
worker that died running it."""

from __future__ import annotations

import json
import signal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.crash.conftest import Workers


def _spans(workers: Workers) -> list[dict[str, Any]]:
    path = workers.notes / "spans"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_recovered_execution_continues_the_original_trace(workers: Workers) -> None:
    """Killed after its first step, then resumed by another process: the resumed workflow
    span has the original trace id and the original workflow span as its parent, and the
    replayed step gets no new span."""
    killed = workers.run("tracer-1", "traced", "between_steps")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    before = _spans(workers)
    assert [s["name"] for s in before] == ["step reserve"]  # the workflow span died unended
    original_trace = before[0]["context"]["trace_id"]
    original_workflow_span = before[0]["parent_id"]

    served = workers.run("tracer-2", "traced")
    assert served.returncode == 0, served.stderr
    after = _spans(workers)[len(before) :]
    assert sorted(s["name"] for s in after) == ["step charge", "workflow order"]
    workflow = next(s for s in after if s["name"] == "workflow order")
    assert {s["context"]["trace_id"] for s in after} == {original_trace}
    assert workflow["parent_id"] == original_workflow_span
    assert workflow["attributes"]["stepstone.recovered"] is True
    assert workflow["attributes"]["stepstone.workflow.id"] == "order-7"
