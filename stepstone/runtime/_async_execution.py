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
- a plain `def` step is refused (its blocking body would stall the event loop), and so are
  the features that have no async twin yet (waits, children, sends, continue-as-new).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, NoReturn

from stepstone.errors import UsageError
from stepstone.persistence.plans import adrive
from stepstone.runtime._execution import Execution, _call_site

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Callable, Coroutine, Iterator

    from opentelemetry import trace

    from stepstone.persistence.plans import AsyncStatements
    from stepstone.persistence.rows import RecordedStep, WaitKind
    from stepstone.runtime._engine import Engine
    from stepstone.runtime._execution import AnyStep
    from stepstone.runtime._journal import Journal
    from stepstone.runtime.definitions import Workflow, _StepBase

__all__ = ["AsyncExecution", "running_on"]

_IN_STEP: ContextVar[bool] = ContextVar("stepstone_in_step", default=False)
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
        return _IN_STEP.get()

    @in_step.setter
    def in_step(self, value: bool) -> None:
        _IN_STEP.set(value)

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
        self, step: _StepBase[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
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

    async def _replayed(self, recorded: RecordedStep, step: AnyStep) -> Any:
        return self._replay(recorded, step)

    async def _run_async(
        self, step: AnyStep, seq: int, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        aio = self.aio
        assert aio is not None  # noqa: S101 - bound before its body runs
        if self._cancel is not None or self.engine.stopping:
            await adrive(self._check_stop_plan(), aio)
        ok, value = await adrive(self._run_new(step, seq, args, kwargs), aio)
        if ok:
            return value
        raise value

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

    # -- not yet for async workflows ---------------------------------------------------------

    def _not_yet(self, what: str) -> NoReturn:
        raise UsageError(
            f"{what} was called from async workflow {self.workflow.name!r} "
            f"({self.workflow_id!r}): async workflows do not support it yet; use a sync "
            "workflow for it"
        )

    def wait(
        self,
        kind: WaitKind,
        waiting: dict[str, Any],
        seconds: float | None,
        until: dt.datetime | None,
    ) -> Any:
        self._not_yet(f"stepstone.{kind}()")

    def await_execution(self, target: str) -> tuple[str, str | None, dict[str, Any] | None]:
        self._not_yet(f"waiting for workflow {target!r}")

    def send(self, send: Callable[[str], None]) -> None:
        self._not_yet("Runtime.send()")

    def run_child(
        self, workflow: Workflow[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        self._not_yet(f"workflow {workflow.name!r} (as a child)")

    def continue_as_new(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> NoReturn:
        self._not_yet("stepstone.continue_as_new()")
