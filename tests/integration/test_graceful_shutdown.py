"""A graceful shutdown (`Runtime.shutdown(grace=...)`): no new work, running executions stop
at their next step boundary and are released at once (no owner, next epoch, no recovery
counted); a step body still running when the grace period ends is fenced out."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from stepstone import ConfigurationError, Runtime, UsageError
from tests.support.runtime import FAST, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


@pytest.fixture
def runtimes(db: str) -> Iterator[Callable[..., Runtime]]:
    """Makes Runtimes on the test's database (fast timings, a long lease), shut down at the
    end."""
    made: list[Runtime] = []

    def make(executor_id: str, **options: Any) -> Runtime:
        runtime = Runtime(db, executor_id=executor_id, **{**FAST, "lease_seconds": 60.0, **options})
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.shutdown()


def _row(db: str, workflow_id: str) -> tuple[Any, ...] | None:
    with psycopg.connect(db) as conn:
        return conn.execute(
            "SELECT status, owner, epoch, recoveries FROM stepstone.executions WHERE id = %s",
            [workflow_id],
        ).fetchone()


def _steps(db: str, workflow_id: str) -> list[str]:
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT name FROM stepstone.steps WHERE execution_id = %s ORDER BY seq", [workflow_id]
        ).fetchall()
    return [str(r[0]) for r in rows]


def _define(rt: Runtime, entered: threading.Event, release: threading.Event) -> Any:
    @rt.step(name="slow")
    def slow() -> str:
        entered.set()
        assert release.wait(30)
        return "slow done"

    @rt.step(name="after")
    def after() -> str:
        return "after done"

    @rt.workflow(name="two_steps")
    def two_steps() -> list[str]:
        return [slow(), after()]

    return two_steps


def _shutdown_in_thread(rt: Runtime, grace: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: rt.shutdown(grace=grace))
    thread.start()
    return thread


def test_the_running_step_finishes_and_the_execution_is_handed_back(
    db: str, runtimes: Callable[..., Runtime]
) -> None:
    """A step body running at shutdown finishes and is recorded; the next step does not
    start; the execution is released (no owner, next epoch, no recovery) and another
    executor resumes it at once (long before the 60 s lease) and finishes it."""
    entered, release = threading.Event(), threading.Event()
    a = runtimes("a")
    wf = _define(a, entered, release)
    a.launch()
    a.start(wf.with_options(workflow_id="w"))
    assert entered.wait(10)
    stopping = _shutdown_in_thread(a, grace=20)
    wait_for(lambda: a._engine.stopping)
    release.set()
    stopping.join(20)
    assert not stopping.is_alive()
    assert _row(db, "w") == ("RUNNING", None, 2, 0)
    assert _steps(db, "w") == ["slow"]

    b = runtimes("b")
    _define(b, threading.Event(), release)
    b.launch()
    assert b.handle("w").result(timeout=10) == ["slow done", "after done"]
    assert _row(db, "w") == ("SUCCEEDED", "b", 3, 0)


def test_a_step_still_running_when_the_grace_period_ends_is_not_recorded(
    db: str, runtimes: Callable[..., Runtime]
) -> None:
    """When the grace period ends with a step body running, shutdown returns and the
    execution is released from there; the body goes on, but its result is fenced out and
    never recorded (the step runs again where the execution resumes)."""
    entered, release = threading.Event(), threading.Event()
    a = runtimes("a")
    wf = _define(a, entered, release)
    a.launch()
    a.start(wf.with_options(workflow_id="w"))
    assert entered.wait(10)
    a.shutdown(grace=0.2)
    assert _row(db, "w") == ("RUNNING", None, 2, 0)
    release.set()  # the body returns now: its commit is fenced out

    b = runtimes("b")
    again = threading.Event()
    _define(b, again, release)
    b.launch()
    assert b.handle("w").result(timeout=10) == ["slow done", "after done"]
    assert again.is_set()  # the step ran again in b
    assert _steps(db, "w") == ["slow", "after"]
    assert _row(db, "w") == ("SUCCEEDED", "b", 3, 0)


def test_queued_executions_are_handed_back_without_running(
    db: str, runtimes: Callable[..., Runtime]
) -> None:
    """Executions queued behind busy workers at shutdown are released without running a
    line of them, and not counted as recoveries."""
    entered, release = threading.Event(), threading.Event()
    a = runtimes("a", workers=1)
    wf = _define(a, entered, release)
    a.launch()
    a.start(wf.with_options(workflow_id="first"))
    assert entered.wait(10)
    entered.clear()
    a.start(wf.with_options(workflow_id="second"))
    stopping = _shutdown_in_thread(a, grace=20)
    wait_for(lambda: _row(db, "second") == ("RUNNING", None, 2, 0))
    assert not entered.is_set()
    release.set()
    stopping.join(20)
    assert _row(db, "first") == ("RUNNING", None, 2, 0)


def test_leaving_a_with_block_by_ctrl_c_hands_back(db: str) -> None:
    """A KeyboardInterrupt leaving `with Runtime(...)` shuts down gracefully: the running
    execution is handed back at its next step boundary, not waited for to the end."""
    entered, release = threading.Event(), threading.Event()
    rt = Runtime(db, executor_id="a", **{**FAST, "lease_seconds": 60.0})
    wf = _define(rt, entered, release)

    def interrupted_block() -> None:
        with rt:
            rt.start(wf.with_options(workflow_id="w"))
            assert entered.wait(10)
            threading.Timer(0.3, release.set).start()
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted_block()
    assert _row(db, "w") == ("RUNNING", None, 2, 0)
    assert _steps(db, "w") == ["slow"]


def test_set_workers_and_grace_are_checked(db: str, runtimes: Callable[..., Runtime]) -> None:
    """set_workers takes a positive int before launch only; a grace period is a number of
    seconds >= 0 and needs wait=True."""
    rt = runtimes("a")
    rt.set_workers(3)
    assert rt.workers == 3
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigurationError, match="workers must be an int >= 1"):
            rt.set_workers(bad)  # type: ignore[arg-type]
    for grace in (-1, float("nan"), "5"):
        with pytest.raises(ConfigurationError, match="grace must be a number of seconds"):
            rt.shutdown(grace=grace)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="a grace period is a wait"):
        rt.shutdown(wait=False, grace=1)
    rt.launch()
    with pytest.raises(UsageError, match="before launching"):
        rt.set_workers(2)
