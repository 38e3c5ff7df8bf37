"""The objects `@rt.workflow()`, `@rt.step()` and `@rt.transaction()` return.

Each keeps the decorated function's signature for type checkers (ParamSpec), and for
transaction steps drops the injected connection (Concatenate).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from typing import TYPE_CHECKING, Any, Concatenate, Generic, Literal, ParamSpec, TypeVar, cast

from stepstone.errors import StepOutsideWorkflow
from stepstone.runtime._options import StartOptions, start_options
from stepstone.runtime.context import _CURRENT

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Callable

    import psycopg

    from stepstone.runtime._engine import Engine
    from stepstone.runtime.retry import RetryPolicy

__all__ = ["Step", "TransactionStep", "Workflow"]

P = ParamSpec("P")
R = TypeVar("R")


def fingerprint(fn: Callable[..., Any]) -> str:
    """A short hash of a function's source (of its bytecode if the source is unavailable)."""
    try:
        material = inspect.getsource(fn).encode()
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        material = code.co_code if code is not None else repr(fn).encode()
    return hashlib.sha256(material).hexdigest()[:16]


class Workflow(Generic[P, R]):
    """A durable workflow. Call it to run it in this thread; `Runtime.start` runs it in the
    worker pool. `with_options(workflow_id=...)` fixes the id of the next execution."""

    def __init__(
        self,
        engine: Engine,
        fn: Callable[P, R],
        name: str,
        version: str,
        options: StartOptions | None = None,
    ) -> None:
        self._engine = engine
        self.fn = fn
        self.name = name
        self.version = version
        self.fingerprint = fingerprint(fn)
        self.options = options or StartOptions()
        self.is_async = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if self.is_async:
            # A coroutine: nothing is written until it is awaited.
            coroutine: Any = self._engine.call_async(self, args, kwargs)
            return cast("R", coroutine)
        return self._engine.call(self, args, kwargs)

    def with_options(
        self,
        *,
        workflow_id: str | None = None,
        attributes: dict[str, Any] | None = None,
        timeout: float | dt.timedelta | None = None,
        priority: int = 0,
        dedup_key: str | None = None,
        delay: float | dt.timedelta | None = None,
        partition_key: str | None = None,
    ) -> Workflow[P, R]:
        """This workflow with options for the executions started through the result: a
        fixed `workflow_id`; `attributes` (a JSON object stored with the execution, for
        filtering listings: string keys; str, finite int and float, bool, None, lists and
        dicts as values; no NUL characters or lone surrogates; UsageError names the first
        key that breaks these rules); and `timeout`, the execution's deadline (seconds or a
        timedelta from its start, by the database's clock): past it, the execution ends
        CANCELLED with its unfinished children, and its callers get WorkflowTimedOut.

        For `Queue.enqueue` also: `priority` (lower starts first; FIFO within a priority),
        `dedup_key` (Deduplicated while an unfinished execution of the queue has it),
        `delay` (seconds or a timedelta before it may start; its deadline counts from its
        start) and `partition_key` (the queue's partition_concurrency caps each key).

        >>> checkout.with_options(workflow_id="order-42", attributes={"tenant": "acme"})("42")  # doctest: +SKIP
        """
        bound: Workflow[P, R] = Workflow.__new__(Workflow)
        bound.__dict__.update(self.__dict__)
        bound.options = start_options(
            workflow_id=workflow_id,
            attributes=attributes,
            timeout=timeout,
            priority=priority,
            dedup_key=dedup_key,
            delay=delay,
            partition_key=partition_key,
        )
        return bound

    def __repr__(self) -> str:
        return f"<stepstone workflow {self.name!r} version {self.version!r}>"


class _StepBase(Generic[P, R]):
    kind: Literal["step", "transaction"]

    def __init__(self, fn: Callable[..., R], name: str, retry: RetryPolicy) -> None:
        self.fn = fn
        self.name = name
        self.retry = retry
        self.is_async = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        execution = _CURRENT.get()
        if execution is None:
            raise StepOutsideWorkflow(
                f"{self.kind} {self.name!r} was called outside a workflow: call it from the body "
                "of a function decorated with @rt.workflow()"
            )
        if self.is_async:
            # Its position is taken now, in call order; the coroutine runs the rest.
            coroutine: R = execution.run_async_step(self, args, kwargs)
            return coroutine
        result: R = execution.run_step(self, args, kwargs)
        return result

    def __repr__(self) -> str:
        return f"<stepstone {self.kind} {self.name!r}>"


class Step(_StepBase[P, R]):
    """A step: its body runs at least once, and once its result is committed it never runs
    again for that execution."""

    kind: Literal["step", "transaction"] = "step"

    def __init__(self, fn: Callable[P, R], name: str, retry: RetryPolicy) -> None:
        super().__init__(fn, name, retry)


class TransactionStep(_StepBase[P, R]):
    """A transaction step: its body's SQL, its result and the workflow's state commit in one
    PostgreSQL transaction, exactly once. The body receives the connection first (a
    `psycopg.Connection`, or for an `async def` body a `psycopg.AsyncConnection`)."""

    kind: Literal["step", "transaction"] = "transaction"

    def __init__(
        self,
        fn: Callable[Concatenate[psycopg.Connection[Any], P], R]
        | Callable[Concatenate[psycopg.AsyncConnection[Any], P], R],
        name: str,
        retry: RetryPolicy,
    ) -> None:
        super().__init__(fn, name, retry)
