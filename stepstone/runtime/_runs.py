"""The executions this process is running or has queued, by id.

Each has a `Run`: the future its callers here wait on (it resolves with the workflow's
result or outcome error; with a `HandedBack` signal when the execution goes on somewhere
else, or waits, which tells them to read the outcome from the database instead). A queued
run may be taken by a thread that waits for it (so a parent waiting for its child never
waits for a worker the parent itself occupies).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Literal

from stepstone.errors import HandedBack

if TYPE_CHECKING:
    from collections.abc import Callable

    from stepstone.runtime._execution import Execution

__all__ = ["LocalRuns", "Run"]

RunState = Literal["queued", "running"]


class Run:
    """One execution in this process."""

    __slots__ = ("cancel", "execution", "future", "job", "state")

    def __init__(self, state: RunState, future: Future[Any] | None = None) -> None:
        self.future: Future[Any] = future if future is not None else Future()
        self.state: RunState = state
        self.job: Callable[[], Any] | None = None
        self.execution: Execution | None = None
        # A cancellation learned of while no body ran: "confirmed" (this process cancelled
        # it) or "hint" (a notification: the database has the last word).
        self.cancel: Literal["confirmed", "hint"] | None = None


class LocalRuns:
    """The runs of this process, and the executions a database error left behind (orphans),
    under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, Run] = {}
        self._orphans: set[str] = set()
        self._reconcile = False

    # -- running -----------------------------------------------------------------------------

    def begin(self, workflow_id: str, state: RunState = "running") -> tuple[Run, bool]:
        """The run of `workflow_id`, and True if this call created it (running in this
        thread, or queued for the pool); False if it is already known here."""
        with self._lock:
            run = self._runs.get(workflow_id)
            if run is not None:
                return run, False
            run = self._runs[workflow_id] = Run(state)
            return run, True

    def queue(self, workflow_id: str, execution: Execution, job: Callable[[], Any]) -> Run:
        """Queue `job`, which runs `execution`, as the run of `workflow_id`. A queued run of
        it (a start's, not yet given its job) keeps its future; a running one is replaced
        (the claim that led here fenced it out)."""
        with self._lock:
            current = self._runs.get(workflow_id)
            if current is not None and current.state == "queued":
                run = current
            else:
                run = self._runs[workflow_id] = Run("queued")
            run.job = job
            run.execution = execution
            return run

    def running(self, workflow_id: str, execution: Execution) -> Run:
        """`execution` runs as the run of `workflow_id` in a task of the loop thread (no
        thread can take it). A queued run of it keeps its future; a running one is
        replaced (the claim that led here fenced it out)."""
        with self._lock:
            current = self._runs.get(workflow_id)
            if current is not None and current.state == "queued" and current.job is None:
                run = current
                run.state = "running"
            else:
                run = self._runs[workflow_id] = Run("running")
            run.execution = execution
            return run

    def take_queued(self) -> list[tuple[str, Run, Execution]]:
        """Take every queued run that has its job (no worker or waiting thread will run
        them): their ids, runs and executions, for a shutdown to hand them back."""
        with self._lock:
            taken = []
            for workflow_id, run in self._runs.items():
                if run.state == "queued" and run.job is not None and run.execution is not None:
                    run.state, run.job = "running", None
                    taken.append((workflow_id, run, run.execution))
            return taken

    def executions(self) -> list[Execution]:
        """The executions running here now."""
        with self._lock:
            return [run.execution for run in self._runs.values() if run.execution is not None]

    def take(self, workflow_id: str, run: Run) -> Callable[[], Any] | None:
        """A worker starts a queued run: its job, or None if a waiting thread took it."""
        with self._lock:
            if self._runs.get(workflow_id) is not run or run.state != "queued":
                return None
            run.state = "running"
            job, run.job = run.job, None
            return job

    def steal(self, workflow_id: str) -> tuple[Run, Callable[[], Any]] | None:
        """Take a queued run to run it in this thread (None if it is not queued)."""
        with self._lock:
            run = self._runs.get(workflow_id)
            if run is None or run.state != "queued" or run.job is None:
                return None
            run.state = "running"
            job, run.job = run.job, None
            return run, job

    def future(self, workflow_id: str) -> Future[Any] | None:
        with self._lock:
            run = self._runs.get(workflow_id)
            return run.future if run is not None else None

    def attach(self, workflow_id: str, execution: Execution) -> None:
        """`execution` runs `workflow_id`'s run now (cancellations learned of meanwhile
        reach it)."""
        with self._lock:
            run = self._runs.get(workflow_id)
            if run is None:
                return
            run.execution = execution
            if run.cancel is not None:
                execution.request_cancel(confirmed=run.cancel == "confirmed")

    def end(
        self,
        workflow_id: str,
        run: Run,
        *,
        result: Any = None,
        error: BaseException | None = None,
    ) -> None:
        """The run ended: resolve its future."""
        with self._lock:
            if self._runs.get(workflow_id) is run:
                del self._runs[workflow_id]
        if run.future.done():
            return
        if error is not None:
            run.future.set_exception(error)
        else:
            run.future.set_result(result)

    # -- cancellation ------------------------------------------------------------------------

    def request_cancel(self, workflow_id: str, *, confirmed: bool) -> None:
        """Stop `workflow_id` before its next step body, if it is here."""
        with self._lock:
            run = self._runs.get(workflow_id)
            if run is None:
                return
            if run.cancel != "confirmed":
                run.cancel = "confirmed" if confirmed else "hint"
            if run.execution is not None:
                run.execution.request_cancel(confirmed=confirmed)

    # -- what the sweep needs ----------------------------------------------------------------

    def active_ids(self) -> set[str]:
        """Every execution run or queued here: it must not be claimed again by this
        executor."""
        with self._lock:
            return set(self._runs)

    def orphan(self, workflow_id: str) -> None:
        """A database error stopped `workflow_id` here: still RUNNING and ours."""
        with self._lock:
            self._orphans.add(workflow_id)
            self._reconcile = True

    def take_orphans(self) -> tuple[set[str], bool]:
        with self._lock:
            orphans, self._orphans = self._orphans, set()
            reconcile, self._reconcile = self._reconcile, False
            return orphans, reconcile

    def give_back_orphans(self, orphans: set[str]) -> None:
        with self._lock:
            self._orphans |= orphans
            self._reconcile = True


def elsewhere(workflow_id: str, why: str) -> HandedBack:
    """What a run's future holds when the execution goes on outside this run."""
    return HandedBack(f"workflow {workflow_id!r} {why}", workflow_id)
