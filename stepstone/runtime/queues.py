"""`Queue`: hand work from any process to the workers that serve the queue.

`rt.queue(name, concurrency=..., ...)` declares a queue and its limits; `queue.enqueue(wf,
*args)` (or `await queue.enqueue_async(wf, *args)`) writes the execution ENQUEUED in one
round trip (optionally in the caller's own transaction) and returns its handle. Every Runtime that serves the queue has a dispatcher
that claims startable executions within the queue's limits (see `_dispatcher`).
"""

from __future__ import annotations

import math
import uuid
from typing import TYPE_CHECKING, Any, TypeVar, overload

from opentelemetry import trace

from stepstone.errors import (
    Deduplicated,
    UsageError,
    WorkflowIdConflict,
)
from stepstone.persistence.ids import check_storable
from stepstone.persistence.plans import adrive, drive, on_connection
from stepstone.persistence.rows import EnqueueRequest, EnqueueResult
from stepstone.runtime._signatures import check_arguments, check_decodable
from stepstone.runtime.context import _CURRENT
from stepstone.runtime.handle import WorkflowHandle
from stepstone.telemetry import Telemetry

if TYPE_CHECKING:
    from collections.abc import Coroutine

    import psycopg

    from stepstone.persistence.plans import Plan
    from stepstone.runtime._engine import Engine
    from stepstone.runtime._options import StartOptions
    from stepstone.runtime.definitions import Workflow

__all__ = [
    "MAX_QUEUE_NAME_LENGTH",
    "Queue",
    "QueueLimits",
    "check_enqueued",
    "check_queue_name",
    "enqueued_id",
]

R = TypeVar("R")

MAX_QUEUE_NAME_LENGTH = 255
_MAX_LIMIT = 2**31 - 1


class QueueLimits:
    """The limits of a queue, checked: `concurrency` (RUNNING executions across all
    processes), `worker_concurrency` (per process), `rate_limit` ((starts, seconds) across
    all processes), `partition_concurrency` (RUNNING executions per partition key)."""

    __slots__ = ("concurrency", "partition_concurrency", "rate_limit", "worker_concurrency")

    def __init__(
        self,
        concurrency: object = None,
        worker_concurrency: object = None,
        rate_limit: object = None,
        partition_concurrency: object = None,
    ) -> None:
        self.concurrency = _count("concurrency", concurrency)
        self.worker_concurrency = _count("worker_concurrency", worker_concurrency)
        self.partition_concurrency = _count("partition_concurrency", partition_concurrency)
        self.rate_limit = _rate(rate_limit)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QueueLimits) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[Any, ...]:
        return (
            self.concurrency,
            self.worker_concurrency,
            self.rate_limit,
            self.partition_concurrency,
        )

    def __repr__(self) -> str:
        return (
            f"concurrency={self.concurrency}, worker_concurrency={self.worker_concurrency}, "
            f"rate_limit={self.rate_limit}, partition_concurrency={self.partition_concurrency}"
        )


class Queue:
    """A named queue with limits (see `Runtime.queue`). `enqueue` hands a workflow to the
    workers that serve it."""

    def __init__(self, engine: Engine, name: str, limits: QueueLimits) -> None:
        self._engine = engine
        self.name = name
        self.limits = limits

    @overload
    def enqueue(
        self,
        workflow: Workflow[Any, Coroutine[Any, Any, R]],
        *args: Any,
        conn: psycopg.Connection[Any] | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle[R]: ...

    @overload
    def enqueue(
        self,
        workflow: Workflow[Any, R],
        *args: Any,
        conn: psycopg.Connection[Any] | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle[R]: ...

    def enqueue(
        self,
        workflow: Workflow[Any, Any],
        *args: Any,
        conn: psycopg.Connection[Any] | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle[Any]:
        """Enqueue an execution of `workflow` with these arguments; durable once this
        returns (with `conn`, a psycopg connection in a transaction of yours: once you
        commit, and not at all if you roll back). Returns its handle. The workflow's
        options (`with_options`) give its id (enqueuing an id that exists enqueues nothing
        and returns that execution), priority, dedup key, delay, partition key and
        deadline. Deduplicated if an unfinished execution of this queue has its dedup key.
        `conn` is enqueue's own keyword: it is not passed to the workflow."""
        request = self._request(workflow, args, kwargs)
        drive(self._enqueue_plan(request, conn), self._engine.store.io)
        return WorkflowHandle(self._engine, request.id, workflow.fn)

    @overload
    async def enqueue_async(
        self,
        workflow: Workflow[Any, Coroutine[Any, Any, R]],
        *args: Any,
        conn: psycopg.AsyncConnection[Any] | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle[R]: ...

    @overload
    async def enqueue_async(
        self,
        workflow: Workflow[Any, R],
        *args: Any,
        conn: psycopg.AsyncConnection[Any] | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle[R]: ...

    async def enqueue_async(
        self,
        workflow: Workflow[Any, Any],
        *args: Any,
        conn: psycopg.AsyncConnection[Any] | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle[Any]:
        """`enqueue()` for asyncio code: the same checks, then one round trip on the async
        pool (with `conn`, a psycopg AsyncConnection in a transaction of yours: enqueued
        once you commit, and not at all if you roll back). Needs `launch_async()`."""
        request = self._request(workflow, args, kwargs)
        aio = self._engine.async_io("Queue.enqueue_async()")
        await adrive(self._enqueue_plan(request, conn), aio)
        return WorkflowHandle(self._engine, request.id, workflow.fn)

    def _request(
        self, workflow: Workflow[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> EnqueueRequest:
        """What enqueuing `workflow` with these arguments writes, once they are checked
        (nothing is written when a check fails)."""
        engine = self._engine
        engine.check_registered(workflow)
        check_arguments(workflow.fn, workflow.name, args, kwargs, "nothing was enqueued")
        options = workflow.options
        workflow_id = enqueued_id(options.workflow_id, workflow.name, self.name)
        inputs = engine.store.encode(
            {"args": list(args), "kwargs": kwargs},
            lambda: f"inputs of workflow {workflow.name!r} enqueued on {self.name!r}",
        )
        check_decodable(
            workflow.fn,
            workflow.name,
            lambda: engine.store.decode_plain(inputs),
            "nothing was enqueued",
        )
        return enqueue_request(
            options,
            workflow_id,
            workflow.name,
            workflow.version,
            inputs,
            self.name,
            engine.executor_id,
        )

    def _enqueue_plan(self, request: EnqueueRequest, conn: object) -> Plan[None]:
        """The enqueue's one statement (on the caller's `conn` if given), for either driver."""
        statement = self._engine.store.enqueue_statement(request)
        check_enqueued((yield on_connection(conn, statement)), request)

    def __repr__(self) -> str:
        return f"<stepstone queue {self.name!r} ({self.limits!r})>"


def enqueued_id(workflow_id: str | None, workflow_name: str, queue: str) -> str:
    """The id to enqueue under: `workflow_id`, or a new one outside a workflow body (a
    replay would enqueue a new id a second time: UsageError there)."""
    if workflow_id is not None:
        return workflow_id
    if _CURRENT.get() is not None:
        raise UsageError(
            f"enqueuing {workflow_name!r} on queue {queue!r} inside a workflow needs an "
            "explicit workflow id (with_options(workflow_id=...), or Client.enqueue's "
            "workflow_id=...) so that a replay does not enqueue it a second time"
        )
    return str(uuid.uuid4())


def enqueue_request(
    options: StartOptions,
    workflow_id: str,
    workflow_name: str,
    version: str | None,
    inputs: str,
    queue: str,
    actor: str,
) -> EnqueueRequest:
    """What an enqueue with these options writes, in the caller's current trace."""
    return EnqueueRequest(
        workflow_id,
        workflow_name,
        version,
        inputs,
        queue,
        actor,
        priority=options.priority,
        dedup_key=options.dedup_key,
        partition_key=options.partition_key,
        delay=options.delay,
        timeout=options.timeout,
        trace_context=Telemetry.carrier(trace.get_current_span()),
        attributes=options.attributes,
    )


def check_enqueued(result: EnqueueResult, request: EnqueueRequest) -> None:
    """Raise what an enqueue that wrote nothing means: no such queue (UsageError), the
    dedup key taken (Deduplicated), the id taken by another workflow (WorkflowIdConflict).
    An id taken by the same workflow is that execution: no error."""
    if result.outcome == "no_queue":
        raise UsageError(
            f"no queue named {request.queue!r} is declared in this database: launch the "
            "runtime that declares it (rt.queue(...)) first"
        )
    if result.outcome == "deduplicated":
        assert request.dedup_key is not None  # noqa: S101 - only a dedup key conflicts
        raise Deduplicated(request.queue, request.dedup_key, str(result.existing))
    if result.outcome == "exists" and result.workflow_name != request.workflow_name:
        raise WorkflowIdConflict(request.id, str(result.workflow_name), request.workflow_name)


def check_queue_name(name: object) -> str:
    """`name` if it can name a queue; UsageError naming it otherwise."""
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_QUEUE_NAME_LENGTH:
        raise UsageError(
            f"a queue name must be a string of 1 to {MAX_QUEUE_NAME_LENGTH} characters, "
            f"got {name!r}"
        )
    return check_storable(name, "the queue name")


def _count(what: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_LIMIT:
        raise UsageError(f"{what} must be a whole number of at least 1 (or None), got {value!r}")
    return value


def _rate(value: object) -> tuple[int, float] | None:
    if value is None:
        return None
    problem = f"rate_limit must be (starts, seconds), e.g. (50, 60.0), got {value!r}"
    if not isinstance(value, tuple) or len(value) != 2:
        raise UsageError(problem)
    count, period = value
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= _MAX_LIMIT:
        raise UsageError(f"{problem}: starts must be a whole number of at least 1")
    if (
        isinstance(period, bool)
        or not isinstance(period, int | float)
        or not math.isfinite(period)
        or not 0 < period <= 366 * 86400
    ):
        raise UsageError(f"{problem}: seconds must be above 0 and at most a year")
    return count, float(period)
