"""The engine: registers definitions, starts, joins and resumes executions, and runs them in
this thread or in the worker pool. What happens inside one execution is in _execution.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import trace

from stepstone.errors import (
    DuplicateRegistration,
    NotLaunched,
    OwnershipLost,
    PersistenceError,
    RecoveryLimitExceeded,
    ResultTimeout,
    UnregisteredWorkflow,
    UsageError,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowIdConflict,
    WorkflowNotFound,
)
from stepstone.persistence.ids import check_workflow_id
from stepstone.persistence.recorded_errors import error_summary, rebuild_error
from stepstone.persistence.rows import ResumeRecord, StartRequest, StartResult
from stepstone.runtime._execution import Execution
from stepstone.runtime.context import _CURRENT
from stepstone.telemetry import Telemetry

if TYPE_CHECKING:
    from collections.abc import Callable

    from stepstone.persistence.store import Store
    from stepstone.runtime.definitions import Workflow

__all__ = ["Engine"]

R = TypeVar("R")

_TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
_MAX_POLL_OUTAGE = 60.0  # seconds a waiting result() tolerates an unreachable database


class Engine:
    """Registers definitions and runs executions for one Runtime (one executor)."""

    def __init__(
        self,
        store: Store,
        executor_id: str,
        workers: int,
        max_recoveries: int,
        telemetry: Telemetry,
    ) -> None:
        self.store = store
        self.telemetry = telemetry
        self.executor_id = executor_id
        self.workflows: dict[str, Workflow[Any, Any]] = {}
        self.steps: dict[str, object] = {}
        self.max_recoveries = max_recoveries
        self._workers = workers
        self._active: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight = 0
        self._queued: dict[str, tuple[Future[Any], Callable[[], Any]]] = {}
        self._orphans: set[str] = set()
        self._reconcile = False
        self.launched = False

    def registered(self) -> list[tuple[str, str]]:
        """(name, version) of every registered workflow."""
        with self._lock:
            return [(w.name, w.version) for w in self.workflows.values()]

    # -- registration ------------------------------------------------------------------------

    def register_workflow(self, workflow: Workflow[Any, Any]) -> None:
        with self._lock:
            if workflow.name in self.workflows:
                raise DuplicateRegistration(
                    f"a workflow named {workflow.name!r} is already registered "
                    f"({self.workflows[workflow.name].fn!r}): pass name= to tell them apart"
                )
            self.workflows[workflow.name] = workflow
        if self.launched:
            self.store.save_workflow(workflow.name, workflow.version, workflow.fingerprint)

    def register_step(self, name: str, step: object) -> None:
        with self._lock:
            if name in self.steps:
                raise DuplicateRegistration(
                    f"a step named {name!r} is already registered: pass name= to tell them apart"
                )
            self.steps[name] = step

    # -- lifecycle ---------------------------------------------------------------------------

    def launch(self) -> None:
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="stepstone-worker")
        for workflow in list(self.workflows.values()):
            self.store.save_workflow(workflow.name, workflow.version, workflow.fingerprint)
        self.launched = True

    def shutdown(self, *, wait: bool) -> None:
        self.launched = False
        if self._pool is not None:
            self._pool.shutdown(wait=wait)
            self._pool = None

    def check_launched(self) -> None:
        if not self.launched:
            raise NotLaunched("call rt.launch() first (or use `with Runtime(...) as rt:`)")

    def _check(self, workflow: Workflow[Any, Any]) -> None:
        if getattr(workflow, "_engine", None) is not self:
            raise UnregisteredWorkflow(
                f"{workflow!r} is not a workflow of this runtime: decorate it with this "
                "runtime's @rt.workflow()"
            )
        if not self.launched:
            raise NotLaunched(
                f"workflow {workflow.name!r} was called before Runtime.launch() (or after "
                "shutdown()): call rt.launch() first, or use `with Runtime(...) as rt:`"
            )

    # -- calls -------------------------------------------------------------------------------

    def call(self, workflow: Workflow[Any, R], args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        """A workflow called like a function: run it durably in this thread."""
        parent = _CURRENT.get()
        if parent is not None:
            return parent.run_child(workflow, args, kwargs)
        self._check(workflow)
        workflow_id = workflow.options.workflow_id or str(uuid.uuid4())
        result: R = self.run(workflow, workflow_id, args, kwargs, parent_id=None)
        return result

    def run(
        self,
        workflow: Workflow[Any, R],
        workflow_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        parent_id: str | None,
    ) -> R:
        """Run (or join, or resume) execution `workflow_id` in this thread."""
        future, mine = self._begin_local(workflow_id)
        if not mine:
            joined: R = self._wait_local(workflow_id, future)
            return joined
        try:
            outcome = self._start_or_find(workflow, workflow_id, args, kwargs, parent_id)
            result: R = outcome() if callable(outcome) else self.wait_outcome(workflow_id, None)
        except BaseException as exc:
            self._end_local(workflow_id, future, error=exc)
            raise
        self._end_local(workflow_id, future, result=result)
        return result

    def start(
        self, workflow: Workflow[Any, R], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Start an execution in the worker pool and return its handle."""
        from stepstone.runtime.handle import WorkflowHandle

        if _CURRENT.get() is not None and workflow.options.workflow_id is None:
            raise UsageError(
                "Runtime.start() inside a workflow needs an explicit workflow id "
                "(with_options(workflow_id=...)) so that a replay does not start a second "
                "execution; or call the workflow directly to run it as a child"
            )
        self._check(workflow)
        workflow_id = workflow.options.workflow_id or str(uuid.uuid4())
        future, mine = self._begin_local(workflow_id)
        if not mine:
            return WorkflowHandle(self, workflow_id, future)
        try:
            outcome = self._start_or_find(workflow, workflow_id, args, kwargs, None)
        except BaseException as exc:
            self._end_local(workflow_id, future, error=exc)
            raise
        if not callable(outcome):
            self._end_local(workflow_id, future, result=None)
            return WorkflowHandle(self, workflow_id, None)
        self._submit(workflow_id, future, outcome)
        return WorkflowHandle(self, workflow_id, future)

    def _submit(
        self,
        workflow_id: str,
        future: Future[Any],
        run: Callable[[], Any],
        *,
        stealable: bool = True,
    ) -> None:
        """Queue `run` in the worker pool. Until a worker starts it, a thread that waits for
        this execution may take it and run it itself (so that a parent waiting for its
        child never waits for a worker that the parent itself occupies)."""
        pool = self._pool
        shut_down = NotLaunched("the runtime was shut down before the execution could run")
        if pool is None:
            self._end_local(workflow_id, future, error=shut_down)
            return
        with self._lock:
            self._in_flight += 1
            if stealable:
                self._queued[workflow_id] = (future, run)
        try:
            pool.submit(self._run_in_worker, workflow_id, future, run, stealable)
        except RuntimeError:  # shutdown() closed the pool meanwhile
            with self._lock:
                self._in_flight -= 1
                self._queued.pop(workflow_id, None)
            self._end_local(workflow_id, future, error=shut_down)

    def _run_in_worker(
        self, workflow_id: str, future: Future[Any], run: Callable[[], Any], stealable: bool
    ) -> None:
        try:
            if stealable:
                with self._lock:
                    queued = self._queued.get(workflow_id)
                    if queued is None or queued[0] is not future:
                        return  # a waiting thread took it and ran it
                    del self._queued[workflow_id]
            self._run_here(workflow_id, future, run)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _run_here(self, workflow_id: str, future: Future[Any], run: Callable[[], Any]) -> Any:
        try:
            result = run()
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
            self._end_local(workflow_id, future, error=exc)
            return None
        self._end_local(workflow_id, future, result=result)
        return result

    # -- recovery ----------------------------------------------------------------------------

    def capacity(self) -> int:
        """How many more executions the worker pool should take on now."""
        with self._lock:
            return max(0, 2 * self._workers - self._in_flight)

    def active_ids(self) -> set[str]:
        with self._lock:
            return set(self._active)

    def take_orphans(self) -> tuple[set[str], bool]:
        """Own executions a database error stopped here, and whether all own running
        executions should be checked (a start may have failed after its commit)."""
        with self._lock:
            orphans, self._orphans = self._orphans, set()
            reconcile, self._reconcile = self._reconcile, False
            return orphans, reconcile

    def give_back_orphans(self, orphans: set[str]) -> None:
        with self._lock:
            self._orphans |= orphans
            self._reconcile = True

    def resume(self, record: ResumeRecord) -> bool:
        """Run a claimed execution in the worker pool; False if it cannot run here."""
        workflow = self.workflows.get(record.workflow_name)
        if workflow is None or workflow.version != record.workflow_version or self._pool is None:
            return False
        execution, body = self._resumed(workflow, record)
        future, mine = self._begin_local(record.id)
        if not mine:
            # A thread here waits for this id (it belonged to another executor when that
            # thread asked). The claim made it ours: run it; the waiter sees the outcome.
            self._submit(
                record.id, Future(), lambda: self._execute(execution, body), stealable=False
            )
            return True
        self._submit(record.id, future, lambda: self._execute(execution, body))
        return True

    def _start_or_find(
        self,
        workflow: Workflow[Any, R],
        workflow_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        parent_id: str | None,
    ) -> Callable[[], R] | None:
        """Write the execution (or find it). Returns what runs it here, or None when it is
        someone else's to run and its outcome has to be awaited."""
        check_workflow_id(workflow_id)
        inputs = self.store.encode(
            {"args": list(args), "kwargs": kwargs}, lambda: f"inputs of workflow {workflow.name!r}"
        )
        # The span exists before the execution row so that its trace context is stored with
        # it (a recovered run continues that trace). If the id exists already, the span is
        # dropped unended: it is never exported.
        span = self.telemetry.workflow_span(
            workflow.name, workflow_id, parent=None, recovered=False
        )
        found = self.store.start_execution(
            StartRequest(
                workflow_id,
                workflow.name,
                workflow.version,
                inputs,
                self.executor_id,
                parent_id,
                trace_context=self.telemetry.carrier(span),
                attributes=workflow.options.attributes,
            )
        )
        if found.created:
            self.telemetry.workflow_started(workflow.name)
            execution = Execution(
                self, workflow, workflow_id, found.epoch, span=span, recovered=False
            )
            return lambda: self._execute(execution, lambda: workflow.fn(*args, **kwargs))
        return self._existing(workflow, workflow_id, found)

    def _existing(
        self, workflow: Workflow[Any, R], workflow_id: str, found: StartResult
    ) -> Callable[[], R] | None:
        if found.workflow_name != workflow.name:
            raise WorkflowIdConflict(workflow_id, found.workflow_name, workflow.name)
        if found.status == "RUNNING" and found.owner == self.executor_id:
            # Ours, and not running in this process (a restart or a database error stopped
            # it): resume it here.
            record = self.store.claim_own(workflow_id, self.executor_id)
            if record is not None:
                self.telemetry.recovered("called_again", 1)
                execution, body = self._resumed(workflow, record)
                return lambda: self._execute(execution, body)
        return None

    def _resumed(
        self, workflow: Workflow[Any, R], record: ResumeRecord
    ) -> tuple[Execution, Callable[[], R]]:
        """The execution a claim took over, continuing its stored trace, and what runs it."""
        span = self.telemetry.workflow_span(
            workflow.name,
            record.id,
            parent=self.telemetry.parent_from(record.trace_context),
            recovered=True,
        )
        execution = Execution(
            self,
            workflow,
            record.id,
            record.epoch,
            record.steps,
            record.state,
            span=span,
            recovered=True,
        )
        if record.recoveries > self.max_recoveries:
            error = RecoveryLimitExceeded(record.id, record.recoveries, self.max_recoveries)

            def refuse() -> R:
                raise error

            return execution, refuse

        def body() -> R:
            # Decoded here, so that inputs this process cannot read fail the execution with
            # the reason instead of stopping the claim of the others.
            stored = self.store.decode(record.inputs)
            return workflow.fn(*tuple(stored["args"]), **stored["kwargs"])

        return execution, body

    def _execute(self, execution: Execution, body: Callable[[], Any]) -> Any:
        """Run one execution in this thread, inside its span, and report how it ended."""
        telemetry = self.telemetry
        name, workflow_id = execution.workflow.name, execution.workflow_id
        clock = time.perf_counter()
        with trace.use_span(
            execution.span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        ):
            token = _CURRENT.set(execution)
            telemetry.workflow_running(1)
            telemetry.log.info(
                "workflow_started",
                workflow_id=workflow_id,
                workflow=name,
                epoch=execution.epoch,
                recovered=execution.recovered,
            )
            try:
                try:
                    result = body()
                except Exception as exc:  # noqa: BLE001 - every workflow error is recorded
                    execution.fail(exc)  # records it and raises
                outcome = execution.succeed(result)
            except WorkflowFailed as failed:
                self._ended(execution, "FAILED", clock, failed.__cause__ or failed)
                raise
            except WorkflowCancelled as cancelled:
                self._ended(execution, "CANCELLED", clock, cancelled)
                raise
            except (OwnershipLost, PersistenceError) as exc:
                Telemetry.failed(execution.span, exc)
                telemetry.log.warning(
                    "workflow_interrupted",
                    workflow_id=workflow_id,
                    workflow=name,
                    epoch=execution.epoch,
                    reason=type(exc).__name__,
                    error=str(exc)[:500],
                )
                raise
            finally:
                telemetry.workflow_running(-1)
                _CURRENT.reset(token)
            self._ended(execution, "SUCCEEDED", clock, None)
            return outcome

    def _ended(
        self, execution: Execution, status: str, clock: float, error: BaseException | None
    ) -> None:
        seconds = time.perf_counter() - clock
        self.telemetry.workflow_completed(
            execution.workflow.name, status, seconds, recovered=execution.recovered
        )
        if error is not None:
            Telemetry.failed(execution.span, error)
        self.telemetry.log.info(
            "workflow_completed",
            workflow_id=execution.workflow_id,
            workflow=execution.workflow.name,
            status=status,
            duration=round(seconds, 6),
        )

    # -- outcomes ----------------------------------------------------------------------------

    def wait_outcome(self, workflow_id: str, deadline: float | None) -> Any:
        """Poll the stored status until the execution ends, then return or raise its outcome."""
        delay = 0.005
        failing_since: float | None = None
        while True:
            try:
                found = self.store.get_status(workflow_id)
                failing_since = None
            except PersistenceError:
                # The database is briefly unreachable (a restart): keep waiting, for a while.
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > _MAX_POLL_OUTAGE or (
                    deadline is not None and now >= deadline
                ):
                    raise
                time.sleep(min(delay, 0.5))
                delay = min(delay * 2, 0.5)
                continue
            if found is None:
                raise WorkflowNotFound(f"no execution has workflow id {workflow_id!r}")
            status, output, error = found
            if status in _TERMINAL:
                return self.outcome(workflow_id, status, output, error)
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultTimeout(
                    f"workflow {workflow_id!r} is still {status}; it goes on running: "
                    "call result() again to keep waiting"
                )
            pause = delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic()))
            time.sleep(pause)
            delay = min(delay * 2, 0.5)

    def outcome(
        self, workflow_id: str, status: str, output: str | None, error: dict[str, Any] | None
    ) -> Any:
        if status == "SUCCEEDED":
            return self.store.decode(output) if output is not None else None
        if status == "CANCELLED":
            raise WorkflowCancelled(f"workflow {workflow_id!r} was cancelled", workflow_id)
        record = error or {}
        error_type, message = error_summary(record)
        raise WorkflowFailed(workflow_id, error_type, message) from rebuild_error(
            record, self.store.serializer
        )

    # -- executions running in this process --------------------------------------------------

    def _begin_local(self, workflow_id: str) -> tuple[Future[Any], bool]:
        with self._lock:
            future = self._active.get(workflow_id)
            if future is not None:
                return future, False
            future = Future()
            self._active[workflow_id] = future
            return future, True

    def _end_local(
        self,
        workflow_id: str,
        future: Future[Any],
        *,
        result: Any = None,
        error: BaseException | None = None,
    ) -> None:
        with self._lock:
            if self._active.get(workflow_id) is future:
                del self._active[workflow_id]
            if isinstance(error, PersistenceError):
                # Stopped by the database, still RUNNING and ours: the sweep resumes it.
                self._orphans.add(workflow_id)
                self._reconcile = True
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def _wait_local(self, workflow_id: str, future: Future[Any]) -> Any:
        with self._lock:
            queued = self._queued.get(workflow_id)
            if queued is not None and queued[0] is future:
                del self._queued[workflow_id]  # not started yet: run it in this thread
            else:
                queued = None
        if queued is not None:
            self._run_here(workflow_id, future, queued[1])
        try:
            return future.result()
        except (OwnershipLost, PersistenceError):
            return self.wait_outcome(workflow_id, None)
