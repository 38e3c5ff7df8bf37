"""`Runtime`: the object users create, decorate with and launch."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
import secrets
import socket
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    ParamSpec,
    Protocol,
    Self,
    TypeVar,
    cast,
    overload,
)

from stepstone._background import Loop
from stepstone._version import __version__
from stepstone.errors import ConfigurationError, DuplicateRegistration, UsageError
from stepstone.persistence.ids import check_text, check_workflow_id
from stepstone.persistence.notifications import Listener
from stepstone.persistence.plans import adrive, drive
from stepstone.persistence.serialization import DEFAULT_MAX_SIZE, Serializer
from stepstone.persistence.store import Store
from stepstone.recovery.heartbeat import Heartbeat
from stepstone.recovery.sweeper import Sweeper, recover_own
from stepstone.runtime._dispatcher import Dispatcher
from stepstone.runtime._engine import Engine
from stepstone.runtime.context import _CURRENT
from stepstone.runtime.definitions import Step, TransactionStep, Workflow
from stepstone.runtime.handle import WorkflowHandle
from stepstone.runtime.queues import Queue, QueueLimits, check_queue_name
from stepstone.runtime.retry import NO_RETRY, RetryPolicy
from stepstone.runtime.waits import check_state_wait
from stepstone.telemetry import Telemetry

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    import psycopg
    from opentelemetry._logs import LoggerProvider
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from stepstone.persistence.executors import ExecutorSession
    from stepstone.persistence.listing import ExecutionFilter, ExecutionPage
    from stepstone.persistence.plans import Plan
    from stepstone.persistence.rows import HealthStatus

__all__ = ["DEFAULT_GRACE", "Runtime", "TransactionDecorator", "default_executor_id"]

DEFAULT_GRACE = 30.0
"""Seconds a graceful shutdown gives the step bodies in flight (`stepstone worker --grace`,
and `with Runtime(...)` left by Ctrl-C)."""

P = ParamSpec("P")
R = TypeVar("R")


def default_executor_id() -> str:
    """host name, process id and a random suffix: unique to this process."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _no_bare_decorator(fn: object, decorator: str) -> None:
    if fn is not None:
        raise UsageError(f"write @rt.{decorator}() with parentheses, not @rt.{decorator}")


class Runtime:
    """Durable workflows in one PostgreSQL database.

    The database is `dsn`, else the STEPSTONE_DATABASE_URL environment variable, else
    libpq's variables when PGHOST, PGDATABASE or PGSERVICE is set, else the embedded
    PostgreSQL of ./.stepstone (started if it is not running; `stepstone[embedded]`).
    Tables live in `schema`. Each
    Runtime is one executor: `executor_id` names it in the database (by default host name,
    process id and a random suffix). `workers` threads run the sync workflows started with
    `start()`, resumed or dequeued here; the async ones run as tasks on one event loop
    thread of the runtime (with an async pool of its own: a thousand async executions
    waiting on I/O need that one thread), and its sweeps and queues take on at most
    `max_async` of them at once (what `start()` starts is not limited); the connection
    pool (and each async pool) holds `pool_min_size` to `pool_max_size` connections,
    and the server ends a pooled session left idle inside a transaction for longer than
    `idle_in_transaction_timeout` seconds (a frozen process cannot hold row locks). When
    `dsn` goes through PgBouncer in transaction pooling mode, `session_dsn` (else the
    STEPSTONE_SESSION_DATABASE_URL environment variable) connects directly to the same
    database for what needs a session of its own: the executor's lock on its id, LISTEN
    and the migrations' lock; the pool then makes no prepared statements and sets no
    session settings. With `notify=False` the executor holds no LISTEN session: it finds
    due work by its sweep alone, every `sweep_interval` and when a timer it recorded is
    due. Spans, metrics and log records go to the OpenTelemetry providers
    given here, else to the global ones.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        session_dsn: str | None = None,
        schema: str = "stepstone",
        executor_id: str | None = None,
        workers: int = 8,
        max_async: int = 1000,
        pool_min_size: int = 1,
        pool_max_size: int = 10,
        serializer: Serializer | None = None,
        max_value_size: int = DEFAULT_MAX_SIZE,
        connect_timeout: float = 10.0,
        idle_in_transaction_timeout: float = 300.0,
        lease_seconds: float = 30.0,
        heartbeat_interval: float = 5.0,
        sweep_interval: float = 5.0,
        dispatch_interval: float = 10.0,
        notify: bool = True,
        max_recoveries: int = 20,
        retention: dt.timedelta | None = None,
        retention_interval: float = 3600.0,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        logger_provider: LoggerProvider | None = None,
    ) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ConfigurationError(f"workers must be an int >= 1, got {workers!r}")
        if isinstance(max_async, bool) or not isinstance(max_async, int) or max_async < 1:
            raise ConfigurationError(f"max_async must be an int >= 1, got {max_async!r}")
        _check_timings(lease_seconds, heartbeat_interval, sweep_interval)
        if not isinstance(notify, bool):
            raise ConfigurationError(f"notify must be True or False, got {notify!r}")
        if (
            isinstance(dispatch_interval, bool)
            or not isinstance(dispatch_interval, int | float)
            or not 0 < dispatch_interval <= 3600
        ):
            raise ConfigurationError(
                "dispatch_interval must be a number of seconds above 0 and at most 3600, "
                f"got {dispatch_interval!r}"
            )
        if not isinstance(max_recoveries, int) or max_recoveries < 0:
            raise ConfigurationError(f"max_recoveries must be an int >= 0, got {max_recoveries!r}")
        if retention is not None and (
            not isinstance(retention, dt.timedelta) or retention <= dt.timedelta(0)
        ):
            raise ConfigurationError(
                f"retention must be a positive timedelta or None, got {retention!r}"
            )
        if (
            isinstance(retention_interval, bool)
            or not isinstance(retention_interval, int | float)
            or not retention_interval > 0
        ):
            raise ConfigurationError(
                f"retention_interval must be a number of seconds > 0, got {retention_interval!r}"
            )
        if executor_id is not None and (
            not isinstance(executor_id, str) or not 0 < len(executor_id) <= 255
        ):
            raise ConfigurationError(
                f"executor_id must be a string of 1 to 255 characters, got {executor_id!r}"
            )
        self.store = Store(
            dsn,
            schema=schema,
            min_size=pool_min_size,
            max_size=pool_max_size,
            serializer=serializer,
            max_value_size=max_value_size,
            connect_timeout=connect_timeout,
            idle_in_transaction_timeout=idle_in_transaction_timeout,
            session_conninfo=session_dsn,
        )
        self.executor_id = executor_id or default_executor_id()
        self.telemetry = Telemetry(
            __version__,
            self.store.pool_stats,
            self.executor_id,
            self.store.count_waiting,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            logger_provider=logger_provider,
        )
        self._engine = Engine(
            self.store, self.executor_id, workers, max_recoveries, self.telemetry, max_async
        )
        self._connect_timeout = connect_timeout
        self._lease = float(lease_seconds)
        self._heartbeat_interval = float(heartbeat_interval)
        self._sweep_interval = float(sweep_interval)
        self._dispatch_interval = float(dispatch_interval)
        self._queues: dict[str, Queue] = {}
        self._served: frozenset[str] | None = None  # None: every queue declared here
        self._dispatcher: Dispatcher | None = None
        self._session: ExecutorSession | None = None
        self._heartbeat: Heartbeat | None = None
        self._sweeper: Sweeper | None = None
        self._notify = notify
        self._listener: Listener | None = None
        self._retention = retention
        self._retention_interval = float(retention_interval)
        self._purger: Loop | None = None

    # -- decorators --------------------------------------------------------------------------

    def workflow(
        self, fn: None = None, /, *, name: str | None = None, version: str = "1"
    ) -> Callable[[Callable[P, R]], Workflow[P, R]]:
        """Make a function a durable workflow, registered under `name` (default: its
        qualified name, e.g. `checkout` or `Orders.checkout`) and `version`."""
        _no_bare_decorator(fn, "workflow")
        check_text("workflow name", name)
        check_text("workflow version", str(version))

        def decorate(func: Callable[P, R]) -> Workflow[P, R]:
            workflow = Workflow(self._engine, func, name or _default_name(func), str(version))
            self._engine.register_workflow(workflow)
            if self._session is not None:
                self._session.register(self._engine.registered())
            return workflow

        return decorate

    def step(
        self, fn: None = None, /, *, name: str | None = None, retry: RetryPolicy | None = None
    ) -> Callable[[Callable[P, R]], Step[P, R]]:
        """Make a function a step: once its result is committed it never runs again for
        that execution. `retry` says how a failing body is tried again (default: never)."""
        _no_bare_decorator(fn, "step")
        check_text("step name", name)
        policy = _policy(retry)

        def decorate(func: Callable[P, R]) -> Step[P, R]:
            step = Step(func, name or _default_name(func), policy)
            self._engine.register_step(step.name)
            return step

        return decorate

    def transaction(
        self, fn: None = None, /, *, name: str | None = None, retry: RetryPolicy | None = None
    ) -> TransactionDecorator:
        """Make a function a transaction step: it receives a psycopg connection as its first
        argument (callers omit it; an `async def` step receives a `psycopg.AsyncConnection`),
        and its SQL commits together with the step's result and the workflow's state,
        exactly once."""
        _no_bare_decorator(fn, "transaction")
        check_text("transaction step name", name)
        policy = _policy(retry)

        def decorate(func: Callable[..., Any]) -> TransactionStep[Any, Any]:
            step: TransactionStep[Any, Any] = TransactionStep(
                func, name or _default_name(func), policy
            )
            self._engine.register_step(step.name)
            return step

        return cast("TransactionDecorator", decorate)

    # -- lifecycle ---------------------------------------------------------------------------

    def launch(self) -> None:
        """Connect and migrate; take this executor id (waiting up to connect_timeout for a
        previous holder to go away); register the workflows; resume the executions this
        executor id owned before it restarted and those whose owner's lease expired; start
        the heartbeat and the sweep. Idempotent."""
        if self._engine.launched:
            return
        self.store.open(migrate=True)
        session = self.store.executor_session(
            self.executor_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            lease_seconds=self._lease,
            workflows=self._engine.registered(),
        )
        try:
            session.open(wait=self._connect_timeout)
        except BaseException:
            self.store.close()
            raise
        self._session = session
        self._heartbeat = Heartbeat(session, self._heartbeat_interval)
        self._sweeper = Sweeper(self._engine, self.store, self._sweep_interval)
        self._engine.due_in = self._sweeper.run_in
        if self._notify:
            self._listener = Listener(self.store, self._notified, on_reconnect=self._sweeper.nudge)
        self.telemetry.open()
        try:
            self._engine.launch()
            self._heartbeat.start()
            if self._listener is not None:
                self._listener.start(wait=self._connect_timeout)
            recover_own(self._engine, self.store)
            self._sweeper.sweep_once()
        except BaseException:
            self.shutdown(wait=False)  # gives the executor id back
            raise
        self._sweeper.start()
        self._start_dispatcher()
        if self._retention is not None:
            retention = self._retention
            self._purger = Loop(
                "purge", self._retention_interval, lambda: self._purge_batch(retention)
            )
            self._purger.start()

    async def launch_async(self) -> None:
        """`launch()` for asyncio applications, and what async workflows need: the
        launch itself (migrations, the executor's session, heartbeat and sweep, the sync
        pool) runs in a worker thread so that the event loop is not blocked, then psycopg's
        AsyncConnectionPool opens on this loop; async workflows and steps do all their
        database work on it. Idempotent."""
        if not self._engine.launched:
            await asyncio.to_thread(self.launch)
        try:
            await self.store.open_async()
        except BaseException:
            await asyncio.to_thread(self.shutdown, wait=False)
            raise

    async def shutdown_async(self, *, wait: bool = True, grace: float | None = None) -> None:
        """`shutdown()` for asyncio applications: the async executions that start_async()
        started on this loop are awaited (with `wait` and no `grace`) or else cancelled
        (a cancelled one is handed back: RUNNING with no owner, never failed, for any
        executor to resume; its interrupted step runs again there); then the shutdown
        itself runs in a worker thread, so that the event loop is not blocked, and the
        async pool closes."""
        tasks = list(self._engine.tasks)
        if tasks and (not wait or grace is not None):
            # Claim nothing more first: this executor's sweep would take back at once what
            # the cancelled tasks hand back.
            await asyncio.to_thread(self._stop_claiming)
            if grace is not None:
                self._engine.stopping = True  # a hand-back at shutdown: not a recovery
            for task in tasks:
                task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await asyncio.to_thread(self.shutdown, wait=wait, grace=grace)
        finally:
            await self.store.close_async()

    async def __aenter__(self) -> Self:
        await self.launch_async()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        # As __exit__: Ctrl-C (or SystemExit, or the task's cancellation) hands back.
        if exc_type is not None and not issubclass(exc_type, Exception):
            await self.shutdown_async(grace=DEFAULT_GRACE)
        else:
            await self.shutdown_async()

    def _start_dispatcher(self) -> None:
        for queue in self._queues.values():
            self._declare(queue)
        served = {
            name: queue
            for name, queue in self._queues.items()
            if self._served is None or name in self._served
        }
        if served:
            self._dispatcher = Dispatcher(self._engine, self.store, served, self._dispatch_interval)
            self._engine.run_ended = self._dispatcher.ended
            self._dispatcher.start()

    def _declare(self, queue: Queue) -> None:
        limits = queue.limits
        self.store.declare_queue(
            queue.name,
            concurrency=limits.concurrency,
            rate_limit=limits.rate_limit,
            partition_concurrency=limits.partition_concurrency,
        )

    def _notified(self, payload: str) -> None:
        event, _, subject = payload.partition(":")
        if event == "cancelled":
            self._engine.cancel_hint(subject)
        elif event == "due" and self._sweeper is not None:
            self._sweeper.nudge()
        elif event == "enqueued":
            dispatcher = self._dispatcher
            if dispatcher is not None and subject in dispatcher.queues:
                dispatcher.nudge()

    def _purge_batch(self, older_than: dt.timedelta) -> bool:
        # One bounded batch per round; True (go again at once) while batches come back full.
        batch = 1000
        return (
            self.store.purge(older_than, self.executor_id, batch_size=batch, max_batches=1) >= batch
        )

    def shutdown(self, *, wait: bool = True, grace: float | None = None) -> None:
        """Stop claiming work (the dispatcher and the sweep stop), wait for running
        workflows (if `wait`), end this executor's lease (so another executor can claim
        anything left at once), close the pool.

        With `grace` (seconds), the shutdown is a hand-back instead, for deploys: each
        running execution stops at its next step boundary (before a new step body, wait or
        continue-as-new; one that finishes first just finishes) and is released at once,
        with no owner and the next epoch, for any executor to resume; a release is not a
        recovery (it does not count toward max_recoveries). Step bodies in flight get
        `grace` seconds to end. An execution whose step body is still running then is
        released from here: the body is not stopped (Python cannot stop a thread), but its
        result is not recorded (the release fenced it out), so the step runs again where
        the execution resumes. An async execution on the runtime's loop thread still in a
        step then is cancelled instead: its task hands it back (released the same way), and
        the step runs again where it resumes. The loop thread stops last (with `wait` and
        no grace, after its executions end; with wait=False its tasks are cancelled and
        hand their executions back), then its pool closes. A KeyboardInterrupt during the
        wait stops waiting at once: what is left is taken over when this executor's lease
        expires."""
        if grace is not None:
            grace = _check_grace(grace)
            if not wait:
                raise UsageError("shutdown(wait=False, grace=...): a grace period is a wait")
        self._stop_claiming()
        if grace is not None and self._engine.launched:
            left = self._engine.stop_runs(grace)
            if left:
                self.telemetry.log.warning(
                    "shutdown_grace_ended", grace=grace, released=left, executor_id=self.executor_id
                )
        self._engine.shutdown(wait=wait and grace is None)
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if self._session is not None:
            self._session.close(expire=True)
            self._session = None
        self.telemetry.close()
        self.store.close()

    def _stop_claiming(self) -> None:
        """Stop the purge, the dispatcher and the sweep: nothing more is claimed here."""
        if self._purger is not None:
            self._purger.stop()
            self._purger = None
        if self._dispatcher is not None:
            self._dispatcher.stop()
            self._dispatcher = None
            self._engine.run_ended = None
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None

    def __enter__(self) -> Self:
        self.launch()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        # Ctrl-C (or SystemExit) leaves the block: hand the running executions back rather
        # than wait for them to end.
        if exc_type is not None and not issubclass(exc_type, Exception):
            self.shutdown(grace=DEFAULT_GRACE)
        else:
            self.shutdown()

    # -- executions --------------------------------------------------------------------------

    @overload
    def start(
        self,
        workflow: Workflow[P, Coroutine[Any, Any, R]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> WorkflowHandle[R]: ...

    @overload
    def start(
        self, workflow: Workflow[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> WorkflowHandle[R]: ...

    def start(
        self, workflow: Workflow[P, Any], /, *args: P.args, **kwargs: P.kwargs
    ) -> WorkflowHandle[Any]:
        """Start an execution and return its handle at once: a sync workflow runs in the
        worker pool, an async one as a task on the runtime's event loop thread.

        The execution is durable when this returns. Its id is generated unless the
        workflow comes with one: `rt.start(wf.with_options(workflow_id="..."), ...)`. An id
        that exists already returns that execution's handle and runs nothing.
        """
        workflow_id = self._engine.start(workflow, args, kwargs)
        return WorkflowHandle(self._engine, workflow_id, workflow.fn)

    @overload
    async def start_async(
        self,
        workflow: Workflow[P, Coroutine[Any, Any, R]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> WorkflowHandle[R]: ...

    @overload
    async def start_async(
        self, workflow: Workflow[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> WorkflowHandle[R]: ...

    async def start_async(
        self, workflow: Workflow[P, Any], /, *args: P.args, **kwargs: P.kwargs
    ) -> WorkflowHandle[Any]:
        """`start()` for asyncio code: the execution is durable when this returns (one
        round trip on the async pool). An async workflow then runs in a task of this event
        loop (`await handle.result_async()` for its outcome); a sync one runs in the worker
        pool. An id that exists already returns that execution's handle and runs nothing.
        Needs `launch_async()`."""
        workflow_id = await self._engine.start_async(workflow, args, kwargs)
        return WorkflowHandle(self._engine, workflow_id, workflow.fn)

    def queue(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        worker_concurrency: int | None = None,
        rate_limit: tuple[int, float] | None = None,
        partition_concurrency: int | None = None,
    ) -> Queue:
        """Declare queue `name` and its limits, and return it: `concurrency`, at most so
        many RUNNING executions of the queue across all processes (exact: a WAITING one
        holds no slot); `worker_concurrency`, at most so many in this process;
        `rate_limit=(starts, seconds)`, at most so many starts per period across all
        processes; `partition_concurrency`, at most so many RUNNING per partition key. None:
        no limit. The limits are written at launch (the last process to launch sets them);
        this process serves the queue (see `serve`). Declaring a name again returns the
        same queue if the limits are the same; other limits raise DuplicateRegistration."""
        check_queue_name(name)
        limits = QueueLimits(concurrency, worker_concurrency, rate_limit, partition_concurrency)
        existing = self._queues.get(name)
        if existing is not None:
            if existing.limits != limits:
                raise DuplicateRegistration(
                    f"queue {name!r} is declared already with {existing.limits!r}, not "
                    f"{limits!r}: declare it once"
                )
            return existing
        if self._engine.launched:
            raise UsageError(
                f"queue {name!r} was declared after launch(): declare queues before launching"
            )
        queue = Queue(self._engine, name, limits)
        self._queues[name] = queue
        return queue

    @property
    def workers(self) -> int:
        """How many threads run this runtime's executions (see `set_workers`)."""
        return self._engine.pool.workers

    def set_workers(self, workers: int) -> None:
        """Run executions on `workers` threads instead of the number given to the
        constructor (what `stepstone worker --workers N` calls). Call it before launch()."""
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigurationError(f"workers must be an int >= 1, got {workers!r}")
        if self._engine.launched:
            raise UsageError("set_workers() was called after launch(): call it before launching")
        self._engine.pool.resize(workers)

    @property
    def queues(self) -> dict[str, Queue]:
        """The queues declared here, by name (a copy)."""
        return dict(self._queues)

    @property
    def served_queues(self) -> list[str]:
        """The names of the queues this runtime serves (see `serve`), sorted."""
        return sorted(name for name in self._queues if self._served is None or name in self._served)

    def serve(self, *queues: str) -> None:
        """Serve only these queues (their executions run in this process); with none, serve
        no queue (a process that only enqueues). By default every queue declared here is
        served. Call it before launch()."""
        for name in queues:
            check_queue_name(name)
            if name not in self._queues:
                raise UsageError(
                    f"queue {name!r} is not declared here: declare it with rt.queue({name!r}, "
                    f"...) first (declared: {sorted(self._queues) or 'none'})"
                )
        if self._engine.launched:
            raise UsageError("serve() was called after launch(): call it before launching")
        self._served = frozenset(queues)

    def handle(self, workflow_id: str) -> WorkflowHandle[Any]:
        """A handle to any execution by id."""
        check_workflow_id(workflow_id)
        return WorkflowHandle(self._engine, workflow_id)

    def send(
        self,
        workflow_id: str,
        message: Any,
        *,
        topic: str = "",
        idempotency_key: str | None = None,
        conn: psycopg.Connection[Any] | None = None,
    ) -> None:
        """Send `message` to execution `workflow_id` on `topic`, for its `stepstone.recv`.
        Messages wait in a mailbox per (workflow id, topic) until received, in send order;
        one sent before the workflow waits for it is kept. The same `idempotency_key` for
        the same workflow stores one message however often it is sent. In a workflow body
        the send is recorded like a step: sent once, even on replay (in a step's body it is
        part of that step). With `conn` (a psycopg connection in a transaction of yours),
        the message is sent when you commit, and not at all if you roll back.
        WorkflowNotFound for an unknown id; UsageError, naming its status, for an execution
        that has ended."""
        self._engine.check_readable("rt.send()")
        payload = self.store.encode_message(workflow_id, topic, message, idempotency_key)
        execution = _CURRENT.get()
        if execution is not None and conn is None and not execution.in_step:
            execution.send(
                lambda key: self._send_plan(workflow_id, topic, payload, idempotency_key or key)
            )
            return
        if conn is not None:
            _, stored = self.store.send(
                workflow_id,
                topic,
                payload,
                idempotency_key=idempotency_key,
                sender=self.executor_id,
                conn=conn,
            )
            if stored:
                self.telemetry.message_sent()
            return
        drive(self._send_plan(workflow_id, topic, payload, idempotency_key), self.store.io)

    async def send_async(
        self,
        workflow_id: str,
        message: Any,
        *,
        topic: str = "",
        idempotency_key: str | None = None,
    ) -> None:
        """`send`, awaited: in an async workflow's body recorded like a step (sent once,
        even on replay); elsewhere one statement on the async pool (NotLaunched before
        `await rt.launch_async()`)."""
        self._engine.check_readable("rt.send_async()")
        payload = self.store.encode_message(workflow_id, topic, message, idempotency_key)
        execution = _CURRENT.get()
        if execution is not None and not execution.in_step:
            await execution.send_async(
                lambda key: self._send_plan(workflow_id, topic, payload, idempotency_key or key)
            )
            return
        aio = self._engine.async_io("rt.send_async()")
        await adrive(self._send_plan(workflow_id, topic, payload, idempotency_key), aio)

    def _send_plan(self, workflow_id: str, topic: str, payload: str, key: str | None) -> Plan[None]:
        """One send on a pooled connection, written once for both drivers."""
        statement = self.store.send_statement(
            workflow_id, topic, payload, idempotency_key=key, sender=self.executor_id
        )
        _, stored = yield statement
        if stored:
            self.telemetry.message_sent()

    def wait_state(
        self, workflow_id: str, key: str, timeout: float | dt.timedelta | None = None
    ) -> Any:
        """The value of state key `key` of execution `workflow_id`, from any process, once it
        is committed (at once if it is). StateTimeout if it did not come within `timeout`
        (seconds or a timedelta; None: no limit), StateNotSet if the execution ended
        without it, WorkflowNotFound if there is none. In a workflow body it is a durable
        wait, as `stepstone.wait_state`."""
        self._engine.check_readable("rt.wait_state()")
        target, key, limit = check_state_wait(workflow_id, key, timeout)
        execution = _CURRENT.get()
        if execution is not None and not execution.in_step:
            return execution.wait_state(target, key, limit)
        return self._engine.outcomes.wait_state(target, key, limit)

    async def wait_state_async(
        self, workflow_id: str, key: str, timeout: float | dt.timedelta | None = None
    ) -> Any:
        """`wait_state()` for asyncio code outside a workflow: polled on the async pool,
        without blocking the event loop (needs `launch_async()`); in a step's body too. In
        a workflow body use `await stepstone.wait_state_async(...)`, a durable wait."""
        self._engine.check_readable("rt.wait_state_async()")
        target, key, limit = check_state_wait(workflow_id, key, timeout)
        execution = _CURRENT.get()
        if execution is not None and not execution.in_step:
            raise UsageError(
                f"rt.wait_state_async() for {target!r} was called in a workflow body: use "
                "`await stepstone.wait_state_async(...)` there, a durable wait"
            )
        aio = self._engine.async_io("rt.wait_state_async()")
        return await adrive(self._engine.outcomes.wait_state_plan(target, key, limit), aio)

    def get_state(self, workflow_id: str) -> dict[str, Any]:
        """The latest committed state of an execution, from any process; WorkflowNotFound
        if there is none."""
        self._engine.check_readable("rt.get_state()")
        check_workflow_id(workflow_id)
        return self._engine.get_state(workflow_id)

    async def get_state_async(self, workflow_id: str) -> dict[str, Any]:
        """`get_state()` for asyncio code, on the async pool (needs `launch_async()`)."""
        self._engine.check_readable("rt.get_state_async()")
        check_workflow_id(workflow_id)
        aio = self._engine.async_io("rt.get_state_async()")
        return await adrive(self.store.require_state_plan(workflow_id), aio)

    def health_status(self) -> HealthStatus:
        """Whether the database is reachable, its latency, schema version and pool statistics.
        Works before launch() too (on a connection of its own): it is how an operator finds
        out why a launch fails."""
        return self.store.health_status()

    # -- inspecting and operating ------------------------------------------------------------

    def list_executions(
        self,
        flt: ExecutionFilter | None = None,
        *,
        sort: str = "created",
        direction: str = "desc",
        limit: int = 50,
        cursor: str | None = None,
    ) -> ExecutionPage:
        """One page of executions (see `Store.list_executions`)."""
        self._engine.check_readable("rt.list_executions()")
        return self.store.list_executions(
            flt, sort=sort, direction=direction, limit=limit, cursor=cursor
        )

    def cancel(self, workflow_id: str) -> None:
        """Cancel a running, waiting or enqueued execution and its unfinished descendants:
        each ends CANCELLED at once, the executor running it stops before its next step
        body, nothing wakes a waiting one any more (a message to it is refused), and its
        callers get WorkflowCancelled."""
        self._engine.check_readable("rt.cancel()")
        check_workflow_id(workflow_id)
        self._engine.cancel(workflow_id, self.executor_id)

    def resume(self, workflow_id: str) -> WorkflowHandle[Any]:
        """Run a FAILED or CANCELLED execution again, here, from its last recorded step (a
        step that failed runs again), with a fresh recovery count; return its handle.

        A wait it was cancelled in was never recorded, so the replay reaches it again and
        records it anew: a sleep of n seconds sleeps n seconds from now, and messages sent
        before the cancel and not received are received. The descendants its cancellation
        cancelled (a child it waited for) run again too. A WAITING execution is refused
        (UsageError): it resumes by itself when its wait is due."""
        check_workflow_id(workflow_id)
        self._engine.check_launched()
        self.store.resume_execution(workflow_id, self.executor_id, owner=self.executor_id)
        return self._take_over(workflow_id, "resumed")

    def fork(
        self, workflow_id: str, from_step: int, *, new_workflow_id: str | None = None
    ) -> WorkflowHandle[Any]:
        """Start, here, a new execution of the same workflow and inputs that reuses the
        recorded steps before position `from_step` and the state checkpointed there, and
        runs from it (to re-run after a fix); return its handle. Forking a WAITING
        execution from its pending wait's position (its number of recorded steps) makes a
        new execution that reaches that wait itself, with its own, empty mailbox; the
        source waits on, untouched."""
        check_workflow_id(workflow_id)
        if new_workflow_id is not None:
            check_workflow_id(new_workflow_id)
        self._engine.check_launched()
        forked = self.store.fork_execution(
            workflow_id, from_step, self.executor_id, new_id=new_workflow_id, owner=self.executor_id
        )
        return self._take_over(forked, "forked")

    def _take_over(self, workflow_id: str, reason: str) -> WorkflowHandle[Any]:
        record = self.store.claim_own(workflow_id, self.executor_id, reason=reason)
        if record is not None and not self._engine.resume(record, recovered=False):
            # Not registered here: give it to an executor that runs its workflow.
            self.store.release_unregistered(self.executor_id, self._engine.registered())
        return WorkflowHandle(self._engine, workflow_id)

    def purge(self, older_than: dt.timedelta) -> int:
        """Delete executions that ended more than `older_than` ago, with everything that
        belongs to them, in bounded batches; return how many were deleted."""
        self._engine.check_readable("rt.purge()")
        return self.store.purge(older_than, self.executor_id)


def _check_timings(lease: object, heartbeat: object, sweep: object) -> None:
    for name, value in (
        ("lease_seconds", lease),
        ("heartbeat_interval", heartbeat),
        ("sweep_interval", sweep),
    ):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ConfigurationError(f"{name} must be a number of seconds > 0, got {value!r}")
    assert isinstance(lease, int | float)  # noqa: S101 - narrowed above
    assert isinstance(heartbeat, int | float)  # noqa: S101 - narrowed above
    if heartbeat >= lease:
        raise ConfigurationError(
            f"heartbeat_interval ({heartbeat} s) must be shorter than lease_seconds ({lease} s), "
            "or every lease expires between two heartbeats; a third of the lease is usual"
        )


def _check_grace(grace: object) -> float:
    if (
        isinstance(grace, bool)
        or not isinstance(grace, int | float)
        or not math.isfinite(grace)
        or grace < 0
    ):
        raise ConfigurationError(f"grace must be a number of seconds >= 0, got {grace!r}")
    return float(grace)


class TransactionDecorator(Protocol):
    """What `@rt.transaction()` returns: a decorator that keeps the step's signature
    without its first parameter (the connection), for `def` and `async def` bodies."""

    @overload
    def __call__(
        self,
        func: Callable[Concatenate[psycopg.AsyncConnection[Any], P], Coroutine[Any, Any, R]],
        /,
    ) -> TransactionStep[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(
        self, func: Callable[Concatenate[psycopg.Connection[Any], P], R], /
    ) -> TransactionStep[P, R]: ...


def _default_name(func: Callable[..., Any]) -> str:
    # The qualified name, without the enclosing function of a nested definition.
    return func.__qualname__.rpartition("<locals>.")[2]


def _policy(retry: RetryPolicy | None) -> RetryPolicy:
    if retry is None:
        return NO_RETRY
    if not isinstance(retry, RetryPolicy):
        raise ConfigurationError(f"retry must be a RetryPolicy, got {retry!r}")
    return retry
