"""Execution deadlines: with_options(timeout=...) ends an execution CANCELLED, with its
unfinished children, once its deadline passes; callers get WorkflowTimedOut."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import stepstone
from stepstone import Runtime, UsageError, WorkflowCancelled, WorkflowTimedOut
from tests.support.runtime import wait_for


def _cancel_reasons(rt: Runtime, workflow_id: str) -> list[Any]:
    return [
        log.details.get("reason")
        for log in rt.store.list_logs(workflow_id)
        if log.event == "execution_cancelled"
    ]


def test_a_waiting_execution_past_its_deadline_is_timed_out(rt: Runtime) -> None:
    """A workflow sleeping past its 1 s deadline ends CANCELLED at about the deadline (the
    sweep runs then, not at its 5 s interval); callers get WorkflowTimedOut, a
    WorkflowCancelled; the audit log says timeout."""

    @rt.workflow()
    def slow() -> None:
        stepstone.sleep(3600)

    rt.launch()
    started = time.monotonic()
    handle = rt.start(slow.with_options(workflow_id="slow-1", timeout=1))
    with pytest.raises(WorkflowTimedOut, match="deadline") as info:
        handle.result(timeout=10)
    assert isinstance(info.value, WorkflowCancelled)
    assert time.monotonic() - started < 4
    assert handle.status() == "CANCELLED"
    assert _cancel_reasons(rt, "slow-1") == ["timeout"]
    row = rt.store.get_execution("slow-1")
    assert row is not None
    assert row.error is not None
    assert row.error["type"] == "stepstone.errors:WorkflowTimedOut"


def test_a_step_running_at_the_deadline_finishes_but_is_not_recorded(rt: Runtime) -> None:
    """A step body still running when the deadline passes finishes, but its result is not
    recorded and no later step body runs; a direct caller gets WorkflowTimedOut."""
    bodies: list[str] = []

    @rt.step()
    def long_step() -> str:
        bodies.append("long")
        time.sleep(2)
        return "done"

    @rt.step()
    def after() -> None:
        bodies.append("after")

    @rt.workflow()
    def racing() -> None:
        long_step()
        after()

    rt.launch()
    with pytest.raises(WorkflowTimedOut):
        racing.with_options(workflow_id="racing-1", timeout=0.5)()
    assert bodies == ["long"]
    assert rt.store.list_steps("racing-1") == []
    assert rt.handle("racing-1").status() == "CANCELLED"


def test_a_timed_out_parent_takes_its_children_with_it(rt: Runtime) -> None:
    """A parent past its deadline is cancelled with its unfinished children (each with
    reason parent_cancelled in its audit log)."""
    started = threading.Event()

    @rt.workflow()
    def child() -> None:
        started.set()
        stepstone.sleep(3600)

    @rt.workflow()
    def parent() -> None:
        child.with_options(workflow_id="timed-child")()

    rt.launch()
    handle = rt.start(parent.with_options(workflow_id="timed-parent", timeout=1))
    assert started.wait(10)
    with pytest.raises(WorkflowTimedOut):
        handle.result(timeout=10)
    wait_for(lambda: rt.handle("timed-child").status() == "CANCELLED")
    assert _cancel_reasons(rt, "timed-child") == ["parent_cancelled"]


def test_a_workflow_that_ends_in_time_is_not_affected(rt: Runtime) -> None:
    """A deadline that is not reached changes nothing."""

    @rt.workflow()
    def brisk() -> str:
        stepstone.sleep(0.1)
        return "in time"

    rt.launch()
    assert rt.start(brisk.with_options(timeout=30)).result(timeout=10) == "in time"


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, "5", 1e12])
def test_a_bad_timeout_is_refused_at_with_options(rt: Runtime, bad: Any) -> None:
    """A timeout that is not a positive finite number of seconds (at most 100 years) is
    refused where it is given, naming it."""

    @rt.workflow()
    def anything() -> None:
        pass

    with pytest.raises(UsageError, match="timeout must be"):
        anything.with_options(timeout=bad)
