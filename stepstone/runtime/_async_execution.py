"""One async execution being run (or replayed) in one task: the async driver of its journal.

It shares everything with the sync `Execution` — the journal's decisions, the plans of a
step (attempts, retries, the commit, the transaction step) and of completion — and differs
only in how it does the I/O: `adrive` awaits each request on psycopg's async pool, and
pauses between attempts with `asyncio.sleep`. Three things are its own:

- a step's position is taken when the step is called (when its coroutine is made), not when
  the coroutine first runs: steps started together (`asyncio.gather`) get their positions
  in call order, so a replay that calls them in the same order meets the same records;
- "inside a step's body" is per task (a context variable), since the bodies of concurrent
  steps interleave;
- a plain `def` step or child workflow is refused (its blocking body would stall the event
  loop), and so are the sync entry points of waits, sends and continue-as-new: their async
  twins drive the same plans (`wait_plan`, `await_plan`, `continue_plan`, the send step)
  with `adrive`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, NoReturn

from stepstone.errors import HandedBack, OwnershipLost, PersistenceError, Suspended, UsageError
from stepstone.persistence.plans import adrive
from stepstone.runtime._execution import Execution
from stepstone.runtime._waiting import _call_site, _ChildStep, _SendStep

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Callable, Coroutine, Iterator

    from opentelemetry import trace

    from stepstone.persistence.plans import AsyncStatements, Plan
    from stepstone.persistence.rows import RecordedStep, WaitKind
    from stepstone.runtime._engine import Engine
    from stepstone.runtime._journal import Journal
    from stepstone.runtime._waiting import AnyStep
    from stepstone.runtime.definitions import Workflow, _StepBase

__all__ = ["AsyncExecution", "current_io", "running_on"]

# The execution whose step body the current task runs: a child run in that body (in the
# same task) is not inside a step of its own.
_IN_STEP: ContextVar[AsyncExecution | None] = ContextVar("stepstone_in_step", default=None)
_AIO: ContextVar[AsyncStatements | None] = ContextVar("stepstone_aio", default=None)


@contextlib.contextmanager
def running_on(aio: AsyncStatements) -> Iterator[None]:
    """Async executions that start running in this task (and tasks made from it) do
    their I/O with `aio`, the async pool of the loop that runs them."""
    token = _AIO.set(aio)
    try:
        yield
    finally:
        _AIO.reset(token)


def current_io() -> AsyncStatements | None:
    """The async pool async executions in this task do their I/O with (`running_on`)."""
    return _AIO.get()


class AsyncExecution(Execution):
    """One execution of an `async def` workflow, run in one task of one event loop."""

    def __init__(
        self,
        engine: Engine,
        workflow: Workflow[Any, Any],
        journal: Journal,
        *,
        span: trace.Span,
        recovered: bool,
    ) -> None:
        super().__init__(engine, workflow, journal, span=span, recovered=recovered)
        # The async pool of the loop that runs it (the application's, or the runtime's
        # loop thread's): set when it starts running (bind).
        self.aio: AsyncStatements | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def in_step(self) -> bool:
        """Whether the current task runs a step's body."""
        return _IN_STEP.get() is self

    @in_step.setter
    def in_step(self, value: bool) -> None:
        _IN_STEP.set(self if value else None)

    def bind(self) -> None:
        """The execution starts running in this task: its steps are called on its loop,
        and do their I/O on the async pool of whoever runs it (`running_on`)."""
        aio = _AIO.get()
        if aio is None:
            raise UsageError(
                f"async workflow {self.workflow.name!r} needs an async pool: launch the "
                "runtime with `await rt.launch_async()` (or `async with rt:`)"
            )
        self.aio = aio
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()

    # -- steps -------------------------------------------------------------------------------

    def run_step(self, step: AnyStep, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A plain `def` step called from this async workflow: refused, unless it is called
        from inside an async step's body (e.g. in `asyncio.to_thread`), where it is part of
        that step."""
        if self.in_step and step.kind == "step":
            return step.fn(*args, **kwargs)
        raise UsageError(
            f"{step.kind} {step.name!r} is a plain `def`, called from async workflow "
            f"{self.workflow.name!r} ({self.workflow_id!r}): its blocking body would stall the "
            f"event loop. Make it `async def`, and inside it run blocking code with "
            "`await asyncio.to_thread(...)`"
        )

    def run_async_step(
        self, step: _StepBase[Any, Any] | AnyStep, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]:
        """Take the step's position now (call order), and return the coroutine that replays
        its record or runs it."""
        if self.in_step:
            # A step called from a step's body is part of that step.
            if step.kind != "step":
                raise UsageError(
                    f"{step.kind} {step.name!r} was called inside the body of another step of "
                    f"workflow {self.workflow_id!r}: call it from the workflow body instead"
                )
            body: Coroutine[Any, Any, Any] = step.fn(*args, **kwargs)
            return body
        self._check_loop(f"{step.kind} {step.name!r}")
        seq, recorded = self.journal.next_step(step.name, _call_site)
        if recorded is not None:
            return self._replayed(recorded, step)
        return self._run_async(step, seq, args, kwargs)

    def _bound(self) -> AsyncStatements:
        aio = self.aio
        assert aio is not None  # noqa: S101 - bound before its body runs
        return aio

    async def _replayed(self, recorded: RecordedStep, step: AnyStep) -> Any:
        return self._replay(recorded, step)

    async def _run_async(
        self, step: AnyStep, seq: int, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run a new step. A plain async step whose first attempt succeeds is awaited and
        committed here directly (`Execution._run_plain` for async: the hot path, one
        coroutine level); any other step, or first outcome, goes through its plan."""
        aio = self._bound()
        if self._cancel is not None or self.engine.stopping:
            await adrive(self._check_stop_plan(), aio)
        if step.kind != "step":
            ok, value = await adrive(self._run_new(step, seq, args, kwargs), aio)
            if ok:
                return value
            raise value
        begun = self._begin(step, seq)
        token = _IN_STEP.set(self)  # as StepBody.arun runs a body
        try:
            ok, value = True, await step.fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - the plan decides what it means
            ok, value = False, exc
        finally:
            _IN_STEP.reset(token)
        if not ok:
            ok, value = await adrive(
                self._run_new(step, seq, args, kwargs, begun, (ok, value)), aio
            )
            if ok:
                return value
            raise value
        try:
            commit = self._record(step, seq, value, ok, 1, begun[3], [])
            since = time.perf_counter()
            try:
                await self.store.commit_step_async(commit, aio)
            except (HandedBack, PersistenceError) as exc:
                raise self._commit_failed(seq, exc)  # noqa: B904 - its cause is set
            self._committed(commit, since)
        except BaseException as exc:
            if not isinstance(exc, Exception):
                self.journal.doom(exc)
            self._end(step, seq, begun, ok=False, value=exc, retried=0)
            raise
        self._end(step, seq, begun, ok=True, value=value, retried=0)
        return value

    def _check_loop(self, what: str) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not self.loop:
            raise UsageError(
                f"{what} of async workflow {self.workflow_id!r} was called outside the "
                "workflow's event loop: call steps from the workflow body (or tasks it starts "
                "on its loop)"
            )

    def _check_caller(self, what: str) -> None:
        self._check_loop(what)

    # -- waits, messages, children and continue-as-new ---------------------------------------
    # The same plans as the sync driver's, awaited; their sync entry points are refused
    # (their I/O would block the event loop).

    async def wait_async(
        self,
        kind: WaitKind,
        waiting: dict[str, Any],
        seconds: float | None,
        until: dt.datetime | None,
    ) -> Any:
        """`Execution.wait`, awaited."""
        return await adrive(self.wait_plan(kind, waiting, seconds, until), self._bound())

    async def wait_state_async(self, target: str, key: str, seconds: float | None) -> Any:
        """`Execution.wait_state`, awaited."""
        return await adrive(self.wait_state_plan(target, key, seconds), self._bound())

    async def await_execution_async(
        self, target: str
    ) -> tuple[str, str | None, dict[str, Any] | None]:
        """`Execution.await_execution`, awaited."""
        return await adrive(self.await_plan(target), self._bound())

    async def continue_as_new_async(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> NoReturn:
        """`Execution.continue_as_new`, awaited."""
        await adrive(self.continue_plan(args, kwargs), self._bound())
        raise AssertionError  # the plan never returns

    async def send_async(self, send: Callable[[str], Plan[None]]) -> None:
        """`Execution.send`, awaited: the send is a step of this workflow."""
        key = self._send_key()
        step = _SendStep(lambda: adrive(send(key), self._bound()), is_async=True)
        await self.run_async_step(step, (), {})

    def run_child_async(
        self, workflow: Workflow[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]:
        """An async workflow called from this one: its child, recorded at the position it was
        called at (taken now, like a step's). It runs in this task when it can; when it
        waits or goes on elsewhere, this execution waits for it durably and unwinds
        (Suspended) until it has ended."""
        child_id = workflow.options.workflow_id or self._child_id(self.journal.seq)
        engine = self.engine

        async def run() -> Any:
            try:
                try:
                    return await engine.run_async(
                        workflow, child_id, args, kwargs, self.workflow_id, waiter=self
                    )
                except (Suspended, OwnershipLost):
                    return await engine.await_outcome_async(
                        child_id, None, workflow.fn, waiter=self
                    )
            except PersistenceError as exc:
                raise self._interrupted(f"starting or finding child {child_id!r}", exc) from exc

        step = _ChildStep(workflow.name, run, workflow.fn, is_async=True)
        return self.run_async_step(step, (), {})

    def _sync_refused(self, called: str, instead: str) -> NoReturn:
        raise UsageError(
            f"{called} was called from async workflow {self.workflow.name!r} "
            f"({self.workflow_id!r}): its I/O would block the event loop; {instead}"
        )

    def wait(
        self,
        kind: WaitKind,
        waiting: dict[str, Any],
        seconds: float | None,
        until: dt.datetime | None,
    ) -> Any:
        self._sync_refused(f"stepstone.{kind}()", f"`await stepstone.{kind}_async(...)` instead")

    def wait_state(self, target: str, key: str, seconds: float | None) -> Any:
        self._sync_refused(
            f"waiting for state key {key!r} of {target!r}",
            "`await stepstone.wait_state_async(...)` instead",
        )

    def await_execution(self, target: str) -> tuple[str, str | None, dict[str, Any] | None]:
        self._sync_refused(f"waiting for workflow {target!r}", "await it instead")

    def send(self, send: Callable[[str], Plan[None]]) -> None:
        self._sync_refused("rt.send()", "`await rt.send_async(...)` instead")

    def run_child(
        self, workflow: Workflow[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        raise UsageError(
            f"workflow {workflow.name!r} is a plain `def`, called from async workflow "
            f"{self.workflow.name!r} ({self.workflow_id!r}): a plain workflow's call returns "
            "its result, so it would block the event loop until the child ended. Make "
            f"{workflow.name!r} `async def` and await it, or start it with rt.start_async() "
            "and an explicit workflow id"
        )

    def continue_as_new(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> NoReturn:
        self._sync_refused(
            "stepstone.continue_as_new()", "`await stepstone.continue_as_new_async(...)` instead"
        )
