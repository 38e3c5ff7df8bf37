"""The objects `@rt.workflow()`, `@rt.step()` and `@rt.transaction()` return.

Each keeps the decorated function's signature for type checkers (ParamSpec), and for
transaction steps drops the injected connection (Concatenate).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import inspect
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Concatenate, Generic, Literal, ParamSpec, TypeVar

from stepstone.errors import StepOutsideWorkflow, UsageError
from stepstone.persistence.ids import check_workflow_id
from stepstone.persistence.serialization import describe_type, unstorable
from stepstone.runtime.context import _CURRENT
from stepstone.runtime.waits import MAX_WAIT_SECONDS

if TYPE_CHECKING:
    from collections.abc import Callable

    import psycopg

    from stepstone.runtime._engine import Engine
    from stepstone.runtime.retry import RetryPolicy

__all__ = ["Step", "TransactionStep", "Workflow"]

P = ParamSpec("P")
R = TypeVar("R")


def _check_attributes(attributes: object) -> dict[str, Any]:
    """A copy of `attributes` if it is a JSON object PostgreSQL can store; UsageError naming
    the offending key (its path, for nested values) and what to do otherwise.

    Checked here, before anything is written: values the database refuses (NaN, infinities,
    a NUL character, a lone surrogate) used to fail the start statement, which looks like a
    database outage. The copy keeps later changes to the caller's dict from bypassing it.
    """
    if not isinstance(attributes, dict):
        raise UsageError(f"attributes must be a dict with string keys, got {attributes!r}")
    for key in attributes:
        if not isinstance(key, str):
            raise UsageError(
                f"attributes must be a dict with string keys, got the key {key!r} "
                f"({describe_type(key)}) in {attributes!r}"
            )
    try:
        checked: dict[str, Any] = _json_value(attributes, "attributes", set())
    except RecursionError:
        raise UsageError(
            "attributes are nested too deeply to be stored as JSON: flatten them"
        ) from None
    return checked


def _json_value(value: object, path: str, containers: set[int]) -> Any:
    """`value` rebuilt from JSON types (tuples become lists), checked for what PostgreSQL's
    jsonb can hold; `path` names it and `containers` holds the ids of those enclosing it."""
    if isinstance(value, str):
        problem = unstorable(value)
        if problem is not None:
            raise UsageError(
                f"{path} {problem}, which PostgreSQL cannot store: remove it, or store the "
                "text encoded (base64, for instance)"
            )
        return value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        try:
            int.__repr__(value)
        except ValueError:  # more digits than Python writes (sys.set_int_max_str_digits)
            raise UsageError(
                f"{path} is an integer too large to write as JSON: store it as a string"
            ) from None
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UsageError(
                f"{path} is {value!r}, which JSON cannot hold: attributes take finite numbers; "
                f"store it as a string ({str(value)!r}) or leave the key out"
            )
        return value
    if isinstance(value, dict | list | tuple):
        if id(value) in containers:
            raise UsageError(
                f"{path} contains itself, which JSON cannot hold: pass a copy without the cycle"
            )
        containers.add(id(value))
        try:
            if isinstance(value, dict):
                return _json_object(value, path, containers)
            return [
                _json_value(item, f"{path}[{index}]", containers)
                for index, item in enumerate(value)
            ]
        finally:
            containers.discard(id(value))
    raise UsageError(
        f"{path} is of type {describe_type(value)}, which is not JSON: attributes take str, int, "
        "float, bool and None, in lists and dicts with string keys; convert it (to a string, "
        "for instance)"
    )


def _json_object(value: dict[Any, Any], path: str, containers: set[int]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise UsageError(
                f"{path} has the key {key!r} ({describe_type(key)}), but JSON object keys are "
                "strings: convert it with str()"
            )
        problem = unstorable(key)
        # A key PostgreSQL cannot store is shown escaped, so that the message itself can be.
        shown = json.dumps(key, ensure_ascii=problem is not None)
        if problem is not None:
            raise UsageError(
                f"the key {shown} of {path} {problem}, which PostgreSQL cannot store: use a "
                "key without it"
            )
        result[key] = _json_value(item, f"{path}[{shown}]", containers)
    return result


def fingerprint(fn: Callable[..., Any]) -> str:
    """A short hash of a function's source (of its bytecode if the source is unavailable)."""
    try:
        material = inspect.getsource(fn).encode()
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        material = code.co_code if code is not None else repr(fn).encode()
    return hashlib.sha256(material).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class StartOptions:
    """Per-call options of a workflow (see `Workflow.with_options`)."""

    workflow_id: str | None = None
    timeout: float | None = None
    attributes: dict[str, Any] | None = None
    # Queue options (used by Queue.enqueue).
    priority: int = 0
    dedup_key: str | None = None
    delay: float | None = None
    partition_key: str | None = None


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
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
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
        if workflow_id is not None:
            check_workflow_id(workflow_id)
        if attributes is not None:
            attributes = _check_attributes(attributes)
        seconds = None if timeout is None else _timeout(timeout)
        bound: Workflow[P, R] = Workflow.__new__(Workflow)
        bound.__dict__.update(self.__dict__)
        bound.options = StartOptions(
            workflow_id=workflow_id,
            attributes=attributes,
            timeout=seconds,
            priority=_priority(priority),
            dedup_key=None if dedup_key is None else _key("dedup_key", dedup_key),
            delay=None if delay is None else _delay(delay),
            partition_key=None if partition_key is None else _key("partition_key", partition_key),
        )
        return bound

    def __repr__(self) -> str:
        return f"<stepstone workflow {self.name!r} version {self.version!r}>"


def _timeout(value: object) -> float:
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= MAX_WAIT_SECONDS
    ):
        raise UsageError(
            f"timeout must be a number of seconds (or a timedelta) above 0 and at most "
            f"{MAX_WAIT_SECONDS:,} (100 years), got {value!r}"
        )
    return float(value)


_PRIORITY_RANGE = (-(2**31), 2**31 - 1)
MAX_KEY_LENGTH = 255  # a dedup or partition key


def _priority(value: object) -> int:
    low, high = _PRIORITY_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(
            f"priority must be an integer from {low} to {high} (lower starts first), got {value!r}"
        )
    return value


def _key(what: str, value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_KEY_LENGTH:
        raise UsageError(
            f"{what} must be a string of 1 to {MAX_KEY_LENGTH} characters, got {value!r}"
        )
    problem = unstorable(value)
    if problem is not None:
        raise UsageError(f"{what} {value!r} {problem}, which PostgreSQL cannot store")
    return value


def _delay(value: object) -> float:
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= MAX_WAIT_SECONDS
    ):
        raise UsageError(
            f"delay must be a number of seconds (or a timedelta) from 0 to "
            f"{MAX_WAIT_SECONDS:,} (100 years), got {value!r}"
        )
    return float(value)


class _StepBase(Generic[P, R]):
    kind: Literal["step", "transaction"]

    def __init__(self, fn: Callable[..., R], name: str, retry: RetryPolicy) -> None:
        self.fn = fn
        self.name = name
        self.retry = retry
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        execution = _CURRENT.get()
        if execution is None:
            raise StepOutsideWorkflow(
                f"{self.kind} {self.name!r} was called outside a workflow: call it from the body "
                "of a function decorated with @rt.workflow()"
            )
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
    PostgreSQL transaction, exactly once. The body receives the connection first."""

    kind: Literal["step", "transaction"] = "transaction"

    def __init__(
        self,
        fn: Callable[Concatenate[psycopg.Connection[Any], P], R],
        name: str,
        retry: RetryPolicy,
    ) -> None:
        super().__init__(fn, name, retry)
