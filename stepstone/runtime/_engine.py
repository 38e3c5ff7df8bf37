"""The engine: starts, finds and resumes executions, and runs each in this thread (or
task), in the worker pool (sync ones), or on the event loop thread (async ones). Its parts
each have a module: the registry of definitions, the runs of this process (`_runs`), the
worker pool, the loop thread, outcomes in the database; what happens inside one execution
is in `_execution` and `_async_execution` (the drivers) and `_journal` (its decisions).

Where a run ends, what it raised becomes what its caller sees:

- a result, WorkflowFailed or WorkflowCancelled: the outcome, to every caller;
- `Suspended`: the execution waits, WAITING in the database (a sleep, a receive, another
  execution's end), holding no thread; a caller in a workflow waits durably for it too, a
  caller outside one waits for the outcome of whichever executor resumes it;
- `OwnershipLost`: the execution goes on elsewhere; callers wait for its outcome;
- `Interrupted` (the database failed): the execution is left to this executor's sweep,
  which resumes it when the database answers; a direct caller gets the PersistenceError;
- `ShuttingDown` (a graceful shutdown stopped it at a step boundary): the execution is
  released at once, not counted as a recovery, for any executor to resume; a direct
  caller gets NotLaunched;
- any other BaseException (KeyboardInterrupt, SystemExit...): the execution is handed
  back at once (released for any executor to claim); the exception goes on in the thread
  that ran it, and other callers wait for the outcome.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
import uuid
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from opentelemetry import trace

from stepstone.errors import (
    ContinuedAsNew,
    ExecutionCancelled,
    HandedBack,
    Interrupted,
    NotLaunched,
    OwnershipLost,
    PersistenceError,
    RecoveryLimitExceeded,
    ResultTimeout,
    ShuttingDown,
    Suspended,
    UnregisteredWorkflow,
    UsageError,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowIdConflict,
)
from stepstone.persistence.ids import check_workflow_id
from stepstone.persistence.plans import adrive, drive
from stepstone.persistence.rows import ResumeRecord, StartRequest, StartResult, WokenRecord
from stepstone.runtime._async_engine import AsyncEngine, for_caller
from stepstone.runtime._async_execution import AsyncExecution
from stepstone.runtime._execution import Execution
from stepstone.runtime._journal import Journal
from stepstone.runtime._loop_thread import LoopThread
from stepstone.runtime._outcomes import Outcomes
from stepstone.runtime._pool import WorkerPool
from stepstone.runtime._registry import Registry
from stepstone.runtime._requests import Call
from stepstone.runtime._runs import LocalRuns, Run, RunState, elsewhere
from stepstone.runtime._signatures import (
    check_arguments,
    check_decodable,
    decode_arguments,
    function_types,
)
from stepstone.runtime.context import _CURRENT
from stepstone.telemetry import Telemetry

if TYPE_CHECKING:
    from collections.abc import Callable

    from stepstone.persistence.plans import AsyncStatements, Plan
    from stepstone.persistence.store import Store
    from stepstone.runtime._execution import Execution as Waiter
    from stepstone.runtime.definitions import Workflow

__all__ = ["Engine"]

R = TypeVar("R")


class Engine(AsyncEngine):
    """Runs the executions of one Runtime (one executor)."""

    def __init__(
        self,
        store: Store,
        executor_id: str,
        workers: int,
        max_recoveries: int,
        telemetry: Telemetry,
        max_async: int = 1000,
    ) -> None:
        self.store = store
        self.telemetry = telemetry
        self.log = telemetry.log
        self.executor_id = executor_id
        self.max_recoveries = max_recoveries
        self.registry = Registry()
        self.runs = LocalRuns()
        self.pool = WorkerPool(workers)
        # Where the async executions this runtime resumes, wakes, dispatches or starts from
        # sync code run: one event loop thread, up to `max_async` at once.
        self.loop = LoopThread(store, max_async)
        self.outcomes = Outcomes(store)
        self.io = store.io
        # Told how soon a wait or a deadline this engine recorded is due (the sweep acts then).
        self.due_in: Callable[[float], None] | None = None
        # Told when a run in the worker pool ended (the dispatcher's slot is free then).
        self.run_ended: Callable[[str], None] | None = None
        self.launched = False
        # The tasks of async executions started here (start_async), until they end.
        self.tasks: set[asyncio.Task[None]] = set()
        # A graceful shutdown began: every execution here stops at its next step boundary
        # and is released (see stop_runs); read by each execution before each step.
        self.stopping = False

    # -- registration and lifecycle ----------------------------------------------------------

    def registered(self) -> list[tuple[str, str]]:
        """(name, version) of every registered workflow: this executor's sweeps and
        dispatcher run them (sync ones in the worker pool, async ones on the loop thread)."""
        return [(w.name, w.version) for w in self.registry.workflows()]

    def register_workflow(self, workflow: Workflow[Any, Any]) -> None:
        self.registry.add_workflow(workflow)
        if self.launched:
            self._save_definition(workflow)

    def register_step(self, name: str) -> None:
        self.registry.add_step(name)

    def launch(self) -> None:
        for workflow in self.registry.workflows():
            self._save_definition(workflow)
        self.stopping = False
        self.pool.start()
        self.loop.open()
        if any(w.is_async for w in self.registry.workflows()):
            # At launch rather than at the first async run, so that a database that cannot
            # be reached for it fails the launch, not a sweep.
            self.loop.start()
        self.launched = True

    def _save_definition(self, workflow: Workflow[Any, Any]) -> None:
        """Register the definition; warn (`workflow_code_changed`) when unfinished executions
        of its name and version started with other code: their replay runs this code, which
        may take another path than the one that recorded their steps."""
        found = self.store.register_workflow(workflow.name, workflow.version, workflow.fingerprint)
        if found.changed_executions:
            self.log.warning(
                "workflow_code_changed",
                workflow=workflow.name,
                version=workflow.version,
                fingerprint=workflow.fingerprint,
                previous_fingerprint=found.previous_fingerprint,
                started_with=",".join(found.changed_fingerprints),
                executions=found.changed_executions,
                oldest_ids=",".join(found.oldest_changed_ids),
                hint=(
                    "give the workflow a new version for changed code, or let these "
                    "executions finish on the old code; `stepstone executions show ID` "
                    "says which code each started with"
                ),
            )

    def shutdown(self, *, wait: bool) -> None:
        """Take no more work; let the pool and the loop thread finish what they run and have
        queued (if `wait`; else the loop's tasks are cancelled: each hands its execution
        back); close the loop's pool and join its thread."""
        self.launched = False
        self.pool.shutdown(wait=wait)
        self.loop.stop(None if wait else 0)

    def stop_runs(self, grace: float) -> int:
        """A graceful stop: take no more work; every execution here stops at its next step
        boundary and is released (not a recovery), and a queued one is released without
        running; step bodies in flight get `grace` seconds to end. Then whatever still runs
        is released from here: its step body is not stopped, but its result is fenced out
        (never recorded) and the step runs again wherever the execution resumes. Returns
        how many were released at the end of the grace period."""
        self.launched = False
        self.stopping = True
        deadline = time.monotonic() + grace
        for workflow_id, run, execution in self.runs.take_queued():
            self._release_unstarted(workflow_id, run, execution)
        idle = self.pool.wait_idle(grace)
        # The loop's tasks still running then are cancelled: each hands its execution back.
        released = self.loop.stop(_remaining(deadline))
        if idle:
            return released
        for execution in self.runs.executions():
            if self._release(execution, "the grace period ended at shutdown", interrupted=False):
                released += 1
        return released

    def check_launched(self) -> None:
        if not self.launched:
            raise NotLaunched("call rt.launch() first (or use `with Runtime(...) as rt:`)")

    def check_readable(self, what: str) -> None:
        """NotLaunched unless the runtime's pool is open: reads and operations work from
        launch() until shutdown() closes the pool (while running executions finish too),
        where calls need it launched (check_launched)."""
        if not self.store.opened:
            raise NotLaunched(
                f"{what} was called before Runtime.launch() (or after shutdown()): call "
                "rt.launch() first, or use `with Runtime(...) as rt:`"
            )

    def get_state(self, workflow_id: str) -> dict[str, Any]:
        """The latest committed state of `workflow_id`; WorkflowNotFound if there is none."""
        return self.store.require_state(workflow_id)

    def check_registered(self, workflow: Workflow[Any, Any]) -> None:
        """UnregisteredWorkflow unless `workflow` is this runtime's; NotLaunched unless the
        runtime runs."""
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
        """A workflow called like a function: run it durably in this thread (inside a
        workflow: as its child)."""
        parent = _CURRENT.get()
        if parent is not None:
            return parent.run_child(workflow, args, kwargs)
        self.check_registered(workflow)
        workflow_id = workflow.options.workflow_id or str(uuid.uuid4())
        try:
            result: R = self.run(workflow, workflow_id, args, kwargs, parent_id=None)
        except (Suspended, OwnershipLost):
            outcome: R = self.await_outcome(workflow_id, declared=workflow.fn)
            return outcome
        except (ShuttingDown, Interrupted) as signal:
            raise for_caller(workflow_id, signal) from signal
        return result

    def run(
        self,
        workflow: Workflow[Any, R],
        workflow_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        parent_id: str | None,
        waiter: Waiter | None = None,
    ) -> R:
        """Run (or join, or resume) execution `workflow_id` in this thread. `waiter`: the
        workflow calling it, which waits durably rather than block while the execution
        runs elsewhere."""
        opened = drive(
            self._open(workflow, workflow_id, args, kwargs, parent_id, "running"), self.io
        )
        if opened is None:
            found: R = self.await_outcome(workflow_id, waiter=waiter, declared=workflow.fn)
            return found
        run, execution, body = opened
        result: R = self._run_here(workflow_id, run, self._job(execution, body))
        return result

    def start(
        self, workflow: Workflow[Any, R], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> str:
        """Start an execution (a sync one in the worker pool, an async one on the loop
        thread); its id."""
        if _CURRENT.get() is not None and workflow.options.workflow_id is None:
            raise UsageError(
                "Runtime.start() inside a workflow needs an explicit workflow id "
                "(with_options(workflow_id=...)) so that a replay does not start a second "
                "execution; or call the workflow directly to run it as a child"
            )
        self.check_registered(workflow)
        workflow_id = workflow.options.workflow_id or str(uuid.uuid4())
        if workflow.is_async:
            self.loop.start()  # registered after launch: started at its first run
        state: RunState = "running" if workflow.is_async else "queued"
        opened = drive(self._open(workflow, workflow_id, args, kwargs, None, state), self.io)
        if opened is not None:
            run, execution, body = opened
            if workflow.is_async:
                self._on_loop(workflow_id, run, execution, body)
            else:
                self._submit(workflow_id, execution, self._job(execution, body))
        return workflow_id

    def _job(self, execution: Execution, body: Call) -> Callable[[], Any]:
        """What runs `execution` in a thread (this one, or a worker's)."""
        return lambda: drive(self._execute(execution, body), self.io)

    def _open(
        self,
        workflow: Workflow[Any, R],
        workflow_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        parent_id: str | None,
        state: RunState,
    ) -> Plan[tuple[Run, Execution, Call] | None]:
        """Make `workflow_id` a run of this process (running in this thread or task, or
        queued for the pool) with its execution and the request that runs its body; None
        when it is known here already, or is someone else's to run or ended (its callers
        read its outcome)."""
        run, mine = self.runs.begin(workflow_id, state)
        if not mine:
            return None
        try:
            job = yield from self._start_or_find(workflow, workflow_id, args, kwargs, parent_id)
        except BaseException as exc:
            self.runs.end(workflow_id, run, error=exc)
            raise
        if job is None:
            self.runs.end(workflow_id, run, error=elsewhere(workflow_id, "is not run here"))
            return None
        execution, body = job
        return run, execution, body

    def cancel(self, workflow_id: str, actor: str) -> None:
        """Cancel an execution (and its children) and stop it here before its next step."""
        self.store.cancel_execution(workflow_id, actor)
        self.runs.request_cancel(workflow_id, confirmed=True)

    def cancel_hint(self, workflow_id: str) -> None:
        """Another process may have cancelled `workflow_id`: check before its next step."""
        self.runs.request_cancel(workflow_id, confirmed=False)

    # -- outcomes ----------------------------------------------------------------------------

    def await_outcome(
        self,
        workflow_id: str,
        *,
        waiter: Waiter | None = None,
        deadline: float | None = None,
        declared: Callable[..., Any] | None = None,
    ) -> Any:
        """The outcome of `workflow_id`. A queued run of it is taken and run in this thread.
        `declared`: its workflow's function, whose result annotation decodes a stored result
        (without it, the result decodes as stored).
        With a `waiter` (a workflow waiting for it), an execution that is not done is waited
        for durably (the waiter is suspended); otherwise this blocks until it is done, or
        until `deadline`."""
        if waiter is not None and waiter.workflow_id == workflow_id:
            raise UsageError(
                f"workflow {workflow_id!r} waits for its own outcome, which cannot come while "
                "it waits: wait for it from outside, or for another execution"
            )
        stolen = self.runs.steal(workflow_id)
        if stolen is not None:
            try:
                with contextlib.suppress(Suspended, OwnershipLost):  # it goes on elsewhere
                    return self._run_here(workflow_id, *stolen)
            finally:
                self._slot_free(workflow_id)
        future = self.runs.future(workflow_id)
        if future is not None and (waiter is None or future.done()):
            try:
                return future.result(_remaining(deadline))
            except HandedBack:
                pass  # it goes on elsewhere, or waits: its outcome is in the database
            except concurrent.futures.TimeoutError:
                raise ResultTimeout(
                    f"workflow {workflow_id!r} did not finish in time; it goes on running: "
                    "call result() again to keep waiting"
                ) from None
        annotation = None if declared is None else function_types(declared).returns
        if waiter is None:
            return self.outcomes.wait(workflow_id, deadline, annotation)
        status, output, error = waiter.await_execution(workflow_id)
        return self.outcomes.outcome(workflow_id, status, output, error, annotation)

    # -- resuming ---------------------------------------------------------------------------

    def capacity(self) -> int:
        """How many more executions this executor should take on now: room in the worker
        pool, plus room on the loop thread when async workflows are registered. (A claim
        does not choose sync or async: sync executions claimed beyond the pool's room wait
        in its queue.)"""
        room = self.pool.capacity()
        if any(w.is_async for w in self.registry.workflows()):
            room += self.loop.capacity()
        return room

    def active_ids(self) -> set[str]:
        return self.runs.active_ids()

    def take_orphans(self) -> tuple[set[str], bool]:
        return self.runs.take_orphans()

    def give_back_orphans(self, orphans: set[str]) -> None:
        self.runs.give_back_orphans(orphans)

    def recovered(self, reason: str, count: int) -> None:
        self.telemetry.recovered(reason, count)

    def resume(
        self,
        record: ResumeRecord,
        *,
        recovered: bool = True,
        woken: tuple[str, float] | None = None,
    ) -> bool:
        """Run a claimed execution in the worker pool; False if it cannot run here.
        `recovered`: it was interrupted (not woken from a wait, resumed or forked by an
        operator: none of which is a recovery). `woken`: (wait kind, when it was due by
        time.perf_counter()) for a run after a wake."""
        workflow = self.registry.find(record.workflow_name, record.workflow_version)
        if workflow is None or not self.pool.running or self.stopping:
            return False
        if workflow.is_async:
            self.loop.start()  # registered after launch: started at its first run
            if not self.loop.running:
                return False
        try:
            execution, body = self._resumed(workflow, record, recovered=recovered)
        except Undecodable as exc:
            self._refuse(workflow, record, str(exc))
            return False
        if workflow.is_async:
            run = self.runs.running(record.id, execution)
            return self._on_loop(record.id, run, execution, body, woken)
        self._submit(
            record.id, execution, lambda: drive(self._execute(execution, body, woken), self.io)
        )
        return True

    def _on_loop(
        self,
        workflow_id: str,
        run: Run,
        execution: Execution,
        body: Call,
        woken: tuple[str, float] | None = None,
    ) -> bool:
        """Run async `execution` as a task on the loop thread; False (its run ended with
        NotLaunched) if the loop takes no more work."""

        async def task(aio: AsyncStatements) -> None:
            try:
                if self.stopping:
                    await adrive(self._release_unstarted_plan(workflow_id, run, execution), aio)
                    return
                # The outcome is in the run's future, and interruptions were logged (as a
                # worker thread does; a cancellation still cancels the task).
                with contextlib.suppress(Exception, HandedBack):
                    await self._run_here_async(workflow_id, run, execution, body, aio, woken)
            finally:
                self._slot_free(workflow_id)

        if self.loop.submit(task):
            return True
        error = NotLaunched("the runtime was shut down before the execution could run")
        self.runs.end(workflow_id, run, error=error)
        return False

    def _refuse(self, workflow: Workflow[Any, Any], record: ResumeRecord, reason: str) -> None:
        """A claimed execution whose inputs this process cannot decode cannot run here: it
        is handed back, refused by this executor (whose sweeps pass it over until it
        restarts), for another executor to claim; the audit log and health show it."""
        self.telemetry.log.warning(
            "execution_refused",
            workflow_id=record.id,
            workflow=workflow.name,
            version=workflow.version,
            epoch=record.epoch,
            reason=reason,
        )
        try:
            self.store.refuse_execution(record.id, self.executor_id, record.epoch, reason)
        except PersistenceError:
            self.runs.orphan(record.id)  # this executor's sweep claims it and tries again

    def wake(self, woken: WokenRecord, due: float) -> bool:
        """Run an execution a sweep woke (no recovery); its wake latency is measured from
        `due` (a time.perf_counter() reading) to the start of its run."""
        if woken.received:
            # The wake's transaction consumed the message, whether or not it runs here.
            self.telemetry.message_received(woken.record.workflow_name)
        return self.resume(woken.record, recovered=False, woken=(woken.wait_kind, due))

    def _submit(self, workflow_id: str, execution: Execution, job: Callable[[], Any]) -> None:
        run = self.runs.queue(workflow_id, execution, job)
        if not self.pool.submit(lambda queued: self._work(workflow_id, run, queued)):
            error = NotLaunched("the runtime was shut down before the execution could run")
            self.runs.end(workflow_id, run, error=error)

    def _work(self, workflow_id: str, run: Run, queued: bool) -> None:
        """A worker's part: run `run` unless a waiting thread took it, or it was cancelled
        while it waited in the queue."""
        job = self.runs.take(workflow_id, run)
        if job is None:
            return
        # Whichever way it ends here, its slot is free (a queue's worker_concurrency).
        try:
            if self.stopping and run.execution is not None:
                self._release_unstarted(workflow_id, run, run.execution)
                return
            if (queued or run.cancel is not None) and self._ended_meanwhile(run, workflow_id):
                return
            # The outcome is in the run's future, and interruptions were logged.
            with contextlib.suppress(BaseException):
                self._run_here(workflow_id, run, job)
        finally:
            self._slot_free(workflow_id)

    def _slot_free(self, workflow_id: str) -> None:
        """A queued run of `workflow_id` ended (in a worker, or in the thread that took it
        from the queue): the dispatcher's slot for it is free."""
        if self.run_ended is not None:
            self.run_ended(workflow_id)

    def _ended_meanwhile(self, run: Run, workflow_id: str) -> bool:
        """True (and the run ended with the outcome) if the execution was cancelled or
        ended before its run could start: no body of it may run then."""
        if run.cancel == "confirmed":
            self.runs.end(workflow_id, run, error=_cancelled(workflow_id))
            return True
        try:
            ended, outcome = self.outcomes.ended(workflow_id)
        except (PersistenceError, UsageError):
            return False  # the fence decides
        if not ended:
            return False
        try:
            result = outcome()
        except Exception as exc:  # noqa: BLE001 - the recorded outcome, handed to the callers
            self.runs.end(workflow_id, run, error=exc)
        else:
            self.runs.end(workflow_id, run, result=result)
        return True

    def _run_here(self, workflow_id: str, run: Run, job: Callable[[], Any]) -> Any:
        """Run `job` (an execution of `workflow_id`) in this thread and settle its run."""
        try:
            result = job()
        except BaseException as exc:
            self._settle(workflow_id, run, exc)
            raise
        self.runs.end(workflow_id, run, result=result)
        return result

    def _settle(self, workflow_id: str, run: Run, exc: BaseException) -> None:
        """The run of `workflow_id` here ended with `exc`: what its other callers get."""
        if isinstance(exc, Suspended):
            # WAITING in the database, no owner: whichever executor wakes it runs it.
            self.runs.end(workflow_id, run, error=elsewhere(workflow_id, "is waiting"))
            if exc.wake_in is not None and self.due_in is not None:
                self.due_in(exc.wake_in)
        elif isinstance(exc, Interrupted):
            self.runs.orphan(workflow_id)
            self.runs.end(workflow_id, run, error=exc)
        elif isinstance(exc, HandedBack | Exception):
            self.runs.end(workflow_id, run, error=exc)
        else:
            handed = elsewhere(workflow_id, f"was handed back after {type(exc).__name__}")
            self.runs.end(workflow_id, run, error=handed)

    # -- starting and finding ----------------------------------------------------------------

    def _start_or_find(
        self,
        workflow: Workflow[Any, R],
        workflow_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        parent_id: str | None,
    ) -> Plan[tuple[Execution, Call] | None]:
        """Write the execution (or find it). Returns it and the request that runs its body
        here, or None when it is someone else's to run (or ended) and its outcome has to
        be awaited."""
        check_workflow_id(workflow_id)
        check_arguments(workflow.fn, workflow.name, args, kwargs, "nothing was started")
        inputs = self.store.encode(
            {"args": list(args), "kwargs": kwargs}, lambda: f"inputs of workflow {workflow.name!r}"
        )
        check_decodable(
            workflow.fn,
            workflow.name,
            lambda: self.store.decode_plain(inputs),
            "nothing was started",
        )
        # The span exists before the execution row so that its trace context is stored with
        # it (a recovered run continues that trace). If the id exists already, the span is
        # dropped unended: it is never exported.
        span = self.telemetry.workflow_span(
            workflow.name, workflow_id, parent=None, recovered=False
        )
        found: StartResult = yield self.store.start_statement(
            StartRequest(
                workflow_id,
                workflow.name,
                workflow.version,
                inputs,
                self.executor_id,
                parent_id,
                trace_context=self.telemetry.carrier(span),
                attributes=workflow.options.attributes,
                timeout=workflow.options.timeout,
            )
        )
        if found.created:
            self.telemetry.workflow_started(workflow.name)
            if workflow.options.timeout is not None and self.due_in is not None:
                self.due_in(workflow.options.timeout)  # the sweep ends it at its deadline
            journal = Journal(workflow_id, self.executor_id, found.epoch)
            driver = AsyncExecution if workflow.is_async else Execution
            execution = driver(self, workflow, journal, span=span, recovered=False)
            return execution, Call(workflow.fn, args, kwargs)
        return (yield from self._existing(workflow, workflow_id, found))

    def _existing(
        self, workflow: Workflow[Any, R], workflow_id: str, found: StartResult
    ) -> Plan[tuple[Execution, Call] | None]:
        if found.workflow_name != workflow.name:
            raise WorkflowIdConflict(workflow_id, found.workflow_name, workflow.name)
        if found.status == "RUNNING" and found.owner == self.executor_id:
            # Ours, and not running in this process (a restart or a database error stopped
            # it): resume it here.
            record = yield self.store.claim_own_statement(workflow_id, self.executor_id)
            if record is not None:
                try:
                    execution, body = self._resumed(workflow, record)
                except Undecodable as exc:
                    self._refuse(workflow, record, str(exc))
                    return None
                self.telemetry.recovered("called_again", 1)
                return execution, body
        return None

    def _resumed(
        self, workflow: Workflow[Any, R], record: ResumeRecord, *, recovered: bool = True
    ) -> tuple[Execution, Call]:
        """The execution a claim took over, continuing its stored trace, and the request
        that runs its body.
        Undecodable if its inputs cannot be decoded here (by the workflow's annotations)."""
        if record.recoveries <= self.max_recoveries:
            args, kwargs, run = self._inputs(workflow, record)
        span = self.telemetry.workflow_span(
            workflow.name,
            record.id,
            parent=self.telemetry.parent_from(record.trace_context),
            recovered=recovered,
        )
        journal = Journal(record.id, self.executor_id, record.epoch, record.steps, record.state)
        driver = AsyncExecution if workflow.is_async else Execution
        execution = driver(self, workflow, journal, span=span, recovered=recovered)
        if record.recoveries > self.max_recoveries:
            error = RecoveryLimitExceeded(record.id, record.recoveries, self.max_recoveries)
            return execution, Call(_raise, (error,), {})

        execution.run = run  # set by continue-as-new
        return execution, Call(workflow.fn, args, kwargs)

    def _inputs(
        self, workflow: Workflow[Any, Any], record: ResumeRecord
    ) -> tuple[tuple[Any, ...], dict[str, Any], int]:
        """The stored arguments of `record` as the workflow's annotations describe them,
        and its run number; Undecodable says why they cannot be."""
        try:
            stored = self.store.decode_plain(record.inputs)
            args, kwargs = decode_arguments(workflow.fn, stored["args"], stored["kwargs"])
            return args, kwargs, int(stored.get("run", 1))
        except Exception as exc:
            raise Undecodable(
                f"the inputs of workflow {workflow.name!r} cannot be decoded by this executor "
                f"({type(exc).__name__}: {exc})"
            ) from exc

    # -- one run of an execution -------------------------------------------------------------

    def _execute(
        self,
        execution: Execution,
        body: Call,
        woken: tuple[str, float] | None = None,
    ) -> Plan[Any]:
        """Run one execution in this thread and report how it ended: its runs one after
        the other, while one continues as new (its next run was written by then).
        `woken`: (wait kind, when it was due by time.perf_counter()) for a run after a wake."""
        clock = time.perf_counter()
        if woken is not None:
            self.telemetry.woken(execution.workflow.name, woken[0], max(0.0, clock - woken[1]))
        while True:
            try:
                return (yield from self._execute_run(execution, body, clock))
            except ContinuedAsNew as signal:
                if signal.workflow_id != execution.workflow_id:
                    raise
                record: ResumeRecord = signal.next_run
                execution, body = self._resumed(execution.workflow, record, recovered=False)
                execution.span.set_attribute("stepstone.workflow.run", signal.run)

    def _execute_run(self, execution: Execution, body: Call, clock: float) -> Plan[Any]:
        """Run one run of an execution in this thread (or task), inside its span."""
        telemetry = self.telemetry
        name, workflow_id = execution.workflow.name, execution.workflow_id
        with trace.use_span(
            execution.span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        ):
            token = _CURRENT.set(execution)
            self._started(execution)
            try:
                # A sync body is no I/O of stepstone's: called here, not through the driver.
                ok, result = (yield body) if execution.workflow.is_async else body.run(None)
                if ok:
                    outcome = yield from execution.succeed(result)
                elif isinstance(result, Exception):
                    yield from execution.fail(result)  # every workflow error is recorded
                else:
                    raise result
            except WorkflowFailed as failed:
                self._ended(execution, "FAILED", clock, failed.__cause__ or failed)
                raise
            except ExecutionCancelled as signal:
                if signal.workflow_id != workflow_id:
                    raise
                cancelled = yield from self._cancellation(workflow_id)
                self._ended(execution, "CANCELLED", clock, cancelled)
                raise cancelled from signal
            except Suspended as signal:
                telemetry.log.debug("workflow_waiting", workflow_id=workflow_id, wait=str(signal))
                raise
            except ContinuedAsNew as signal:
                if signal.workflow_id != workflow_id:
                    raise
                execution.span.add_event("continued_as_new", {"stepstone.workflow.run": signal.run})
                telemetry.log.info(
                    "workflow_continued_as_new",
                    workflow_id=workflow_id,
                    workflow=name,
                    run=signal.run,
                )
                raise
            except ShuttingDown:
                # Its own, or a child's that ran in this thread: this one stops here too.
                yield from self._handed_back(execution)
                raise
            except HandedBack as signal:
                self._interrupted(execution, signal)
                raise
            except BaseException as exc:
                yield from self._hand_back(execution, exc)
                raise
            finally:
                telemetry.workflow_running(-1)
                _CURRENT.reset(token)
            self._ended(execution, "SUCCEEDED", clock, None)
            return outcome

    def _started(self, execution: Execution) -> None:
        """A run of `execution` begins in this thread (or task)."""
        execution.bind()
        self.runs.attach(execution.workflow_id, execution)
        self.telemetry.workflow_running(1)
        self.telemetry.log.info(
            "workflow_started",
            workflow_id=execution.workflow_id,
            workflow=execution.workflow.name,
            epoch=execution.epoch,
            recovered=execution.recovered,
        )

    def _cancellation(self, workflow_id: str) -> Plan[WorkflowCancelled]:
        """How the cancellation of `workflow_id` reads to its callers (WorkflowTimedOut when
        its deadline passed)."""
        try:
            ended, outcome = yield from self.outcomes.ended_plan(workflow_id)
            if ended:
                outcome()
        except WorkflowCancelled as exc:
            return exc
        except Exception:  # noqa: BLE001, S110 - the plain cancellation says enough
            pass
        return _cancelled(workflow_id)

    def _interrupted(self, execution: Execution, signal: BaseException) -> None:
        Telemetry.failed(execution.span, signal)
        self.telemetry.log.warning(
            "workflow_interrupted",
            workflow_id=execution.workflow_id,
            workflow=execution.workflow.name,
            epoch=execution.epoch,
            reason=type(signal).__name__,
            error=str(signal)[:500],
        )

    def _hand_back(self, execution: Execution, exc: BaseException) -> Plan[None]:
        """A KeyboardInterrupt, SystemExit, CancelledError... stopped the run: release the
        execution at once so that any executor (this one included) resumes it. It was
        interrupted mid-run: a recovery is counted, unless a graceful shutdown cancelled
        its task (the async twin of a hand-back at a step boundary).
        A task cancelled again while it releases (or any error of the release) leaves it
        to this executor's sweep, or to its lease's end if this executor stops."""
        self._interrupted(execution, exc)
        at_shutdown = self.stopping and isinstance(exc, asyncio.CancelledError)
        try:
            yield from self._release_plan(
                execution,
                "cancelled at shutdown"
                if at_shutdown
                else f"{type(exc).__name__} raised while it ran",
                interrupted=not at_shutdown,
            )
        except BaseException:
            self.runs.orphan(execution.workflow_id)
            raise

    def _handed_back(self, execution: Execution) -> Plan[None]:
        """A graceful shutdown stopped the run at a step boundary: release the execution
        (not a recovery) for any executor to resume at once."""
        execution.span.add_event("handed_back", {"stepstone.step.seq": execution.journal.seq})
        self.telemetry.log.info(
            "workflow_handed_back",
            workflow_id=execution.workflow_id,
            workflow=execution.workflow.name,
            epoch=execution.epoch,
            seq=execution.journal.seq,
        )
        yield from self._release_plan(execution, "handed back at shutdown", interrupted=False)

    def _release_unstarted(self, workflow_id: str, run: Run, execution: Execution) -> None:
        """A claimed execution that had not started here when a graceful shutdown began:
        release it without running it (not a recovery)."""
        drive(self._release_unstarted_plan(workflow_id, run, execution), self.io)

    def _release_unstarted_plan(
        self, workflow_id: str, run: Run, execution: Execution
    ) -> Plan[None]:
        # Its span is dropped unended (never exported): the resumed run continues the trace.
        try:
            yield from self._release_plan(
                execution, "handed back at shutdown before it ran", interrupted=False
            )
        finally:
            self.runs.end(workflow_id, run, error=elsewhere(workflow_id, "was handed back"))

    def _release(self, execution: Execution, reason: str, *, interrupted: bool) -> bool:
        return drive(self._release_plan(execution, reason, interrupted=interrupted), self.io)

    def _release_plan(self, execution: Execution, reason: str, *, interrupted: bool) -> Plan[bool]:
        """Release `execution` (see Store.release_execution); True if it was ours to
        release. A database error leaves it to this executor's sweep (an orphan), or to the
        lease's end if this executor stops."""
        try:
            released: bool = yield self.store.release_statement(
                execution.workflow_id,
                self.executor_id,
                execution.epoch,
                reason,
                interrupted=interrupted,
            )
            return released
        except PersistenceError:
            self.runs.orphan(execution.workflow_id)  # this executor's sweep resumes it
        except HandedBack:
            pass  # not ours any more
        return False

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


class Undecodable(Exception):
    """The inputs of a claimed execution cannot be decoded in this process: it cannot run
    here (another executor, or this one once its code is fixed, may run it)."""


def _cancelled(workflow_id: str) -> WorkflowCancelled:
    return WorkflowCancelled(f"workflow {workflow_id!r} was cancelled", workflow_id)


def _raise(error: BaseException) -> NoReturn:
    raise error


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
