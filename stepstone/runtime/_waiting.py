"""What an execution does besides steps, each recorded at its position like a step: waits
(sleep, receive, another execution's state or end), messages it sends, the children it
runs, and continue-as-new. Their I/O is written once as plans: the sync `Execution` drives
them with plain calls, `AsyncExecution` awaits them (`*_async` twins). Mixed into
`Execution`, which provides what is declared here for type checkers."""

from __future__ import annotations

import hashlib
import os
import sys
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeAlias, TypeVar, cast

from stepstone.errors import (
    ContinuedAsNew,
    NonDeterminismError,
    OwnershipLost,
    PersistenceError,
    Suspended,
    UsageError,
)
from stepstone.persistence.ids import MAX_WORKFLOW_ID_LENGTH
from stepstone.persistence.plans import drive
from stepstone.persistence.rows import RecordedStep, WaitKind, WaitOutcome, WaitRequest
from stepstone.runtime._journal import now
from stepstone.runtime._signatures import check_arguments, check_decodable
from stepstone.runtime.retry import NO_RETRY, RetryPolicy

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Callable
    from types import FrameType

    from stepstone.errors import Interrupted
    from stepstone.persistence._statements import Statements
    from stepstone.persistence.plans import Plan, Statement
    from stepstone.persistence.store import Store
    from stepstone.runtime._engine import Engine
    from stepstone.runtime._execution import Execution
    from stepstone.runtime._journal import Journal
    from stepstone.runtime.definitions import Workflow, _StepBase
    from stepstone.telemetry import Telemetry

__all__ = ["CONTINUE_AS_NEW", "AnyStep", "Waiting"]

R = TypeVar("R")

_PACKAGE_DIR = os.path.dirname(os.path.dirname(__file__))  # noqa: PTH120 - compared with frame paths


def _call_site() -> str:
    """file:line of the innermost frame outside the stepstone package."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "<unknown>"


class _ChildStep:
    """A child workflow called from a workflow, recorded in the parent like a step."""

    kind: Literal["workflow"] = "workflow"
    retry: RetryPolicy = NO_RETRY

    def __init__(
        self,
        name: str,
        run: Callable[..., Any],
        declared: Callable[..., Any],
        *,
        is_async: bool = False,
    ) -> None:
        self.name = name
        self.fn = run
        self.declared = declared  # the child's function: its result's annotation
        self.is_async = is_async  # `run` returns a coroutine (an async parent's)


class _SendStep:
    """`Runtime.send` inside a workflow, recorded in it like a step."""

    kind: Literal["send"] = "send"
    name = "send"
    retry: RetryPolicy = NO_RETRY

    def __init__(self, run: Callable[[], Any], *, is_async: bool = False) -> None:
        self.fn: Callable[..., Any] = run
        self.is_async = is_async  # `run` returns a coroutine (an async workflow's)


if TYPE_CHECKING:
    AnyStep: TypeAlias = "_StepBase[Any, Any] | _ChildStep | _SendStep"

CONTINUE_AS_NEW = "continue_as_new"
"""The name a continue-as-new is checked under on replay (it records no step)."""


class Waiting:
    """Waits, sends, children and continue-as-new of one execution (see the module)."""

    if TYPE_CHECKING:
        engine: Engine
        store: Store
        telemetry: Telemetry
        workflow: Workflow[Any, Any]
        workflow_id: str
        journal: Journal
        io: Statements
        run: int
        in_step: bool
        _cancel: Literal["confirmed", "hint"] | None

        def run_step(self, step: AnyStep, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any: ...

        def _check_caller(self, what: str) -> None: ...

        def _replay(self, recorded: RecordedStep, step: AnyStep | None = None) -> Any: ...

        def _check_stop_plan(self) -> Plan[None]: ...

        def _state_delta(self) -> tuple[dict[str, str] | None, list[str] | None]: ...

        def _write(self, what: str, statement: Statement) -> Plan[Any]: ...

        def _interrupted(self, what: str, exc: PersistenceError) -> Interrupted: ...

    def wait(
        self,
        kind: WaitKind,
        waiting: dict[str, Any],
        seconds: float | None,
        until: dt.datetime | None,
    ) -> Any:
        """A sleep, a receive or a wait for another execution's state at the next position:
        on replay its recorded outcome; else one statement that either completes it now or
        records the execution WAITING, and then unwinds it (Suspended) until it is due."""
        return drive(self.wait_plan(kind, waiting, seconds, until), self.io)

    def wait_plan(
        self,
        kind: WaitKind,
        waiting: dict[str, Any],
        seconds: float | None,
        until: dt.datetime | None,
    ) -> Plan[Any]:
        """`wait` written once for both drivers."""
        if self.in_step:
            raise UsageError(
                f"stepstone.{kind}() was called inside the body of a step of workflow "
                f"{self.workflow_id!r}: waits belong to the workflow body (a replay skips step "
                "bodies); call it there"
            )
        self._check_caller(f"stepstone.{kind}()")
        seq, recorded = self.journal.next_step(kind, _call_site)
        if recorded is not None:
            return self._replay(recorded)
        if self._cancel is not None or self.engine.stopping:
            yield from self._check_stop_plan()
        changed, deleted = self._state_delta()
        request = WaitRequest(
            self.workflow_id,
            self.journal.owner,
            self.journal.epoch,
            seq,
            kind,
            kind,
            waiting,
            seconds,
            until,
            now(),
            changed,
            deleted,
        )
        outcome: WaitOutcome = yield from self._write(
            f"recording a {kind}", self.store.wait_statement(request)
        )
        if not outcome.resolved:
            when = f"until {outcome.wake_at.isoformat()}" if outcome.wake_at else "with no timeout"
            self._suspend(f"in a {kind} at step {seq}, {when}", outcome.wake_in)
        self.journal.committed_state(changed, deleted)
        if kind == "recv" and outcome.error is None:
            self.telemetry.message_received(self.workflow.name)
        return self._replay(RecordedStep(seq, kind, kind, outcome.output, outcome.error))

    def wait_state(self, target: str, key: str, seconds: float | None) -> Any:
        """Wait, durably, until execution `target` has committed state key `key`: its value
        (see `wait`; StateTimeout after `seconds`, StateNotSet if `target` ends without
        it, WorkflowNotFound if there is no `target`: each recorded)."""
        return drive(self.wait_state_plan(target, key, seconds), self.io)

    def wait_state_plan(self, target: str, key: str, seconds: float | None) -> Plan[Any]:
        """`wait_state` written once for both drivers."""
        if target == self.workflow_id:
            raise UsageError(
                f"workflow {self.workflow_id!r} waits for its own state key {key!r}, which "
                "cannot change while it waits: read it with stepstone.current().state"
            )
        return (
            yield from self.wait_plan("wait_state", {"target": target, "key": key}, seconds, None)
        )

    def await_execution(self, target: str) -> tuple[str, str | None, dict[str, Any] | None]:
        """Wait, durably, for execution `target` to end: its (status, output, error) if it
        has, else this execution is recorded WAITING on it and unwinds (Suspended); the
        end of `target` makes it due, and the replay comes back here."""
        return drive(self.await_plan(target), self.io)

    def await_plan(self, target: str) -> Plan[tuple[str, str | None, dict[str, Any] | None]]:
        """`await_execution` written once for both drivers."""
        state = self._state_delta()
        statement = self.store.await_statement(
            self.workflow_id,
            self.journal.owner,
            self.journal.epoch,
            self.journal.seq,
            target,
            state,
        )
        ended = yield from self._write(f"waiting for {target!r}", statement)
        if ended is None:
            self._suspend(f"for workflow {target!r} to end", None)
        found: tuple[str, str | None, dict[str, Any] | None] = ended
        return found

    def _suspend(self, what: str, wake_in: float | None) -> NoReturn:
        waits = Suspended(self.workflow_id, what, wake_in)
        self.journal.doom(waits)
        raise waits

    def send(self, send: Callable[[str], Plan[None]]) -> None:
        """A message sent from the workflow: recorded like a step, so it is sent once even
        when the workflow is replayed. `send(key)` is the plan that stores it with an
        idempotency key unique to this position, so a send re-run after a crash before its
        record stores nothing new."""
        key = self._send_key()
        self.run_step(_SendStep(lambda: drive(send(key), self.io)), (), {})

    def _send_key(self) -> str:
        if self.run > 1:
            return f"{self.workflow_id}#r{self.run}#{self.journal.seq}"
        return f"{self.workflow_id}#{self.journal.seq}"

    def run_child(
        self, workflow: Workflow[Any, R], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> R:
        child_id = workflow.options.workflow_id or self._child_id(self.journal.seq)
        waiter = cast("Execution", self)

        def run() -> R:
            # Runs here when it can; when it waits or goes on elsewhere, this execution
            # waits for it, durably, without holding the thread.
            try:
                try:
                    return self.engine.run(
                        workflow, child_id, args, kwargs, parent_id=self.workflow_id, waiter=waiter
                    )
                except (Suspended, OwnershipLost):
                    outcome: R = self.engine.await_outcome(
                        child_id, waiter=waiter, declared=workflow.fn
                    )
                    return outcome
            except PersistenceError as exc:
                raise self._interrupted(f"starting or finding child {child_id!r}", exc) from exc

        result: R = self.run_step(_ChildStep(workflow.name, run, workflow.fn), (), {})
        return result

    def run_child_async(
        self,
        workflow: Workflow[Any, Any],
        args: tuple[Any, ...],  # noqa: ARG002 - refused whatever the arguments
        kwargs: dict[str, Any],  # noqa: ARG002
    ) -> Any:
        """An async workflow called from this (sync) workflow: refused."""
        raise UsageError(
            f"async workflow {workflow.name!r} was called from workflow "
            f"{self.workflow.name!r} ({self.workflow_id!r}), which is not async: make the "
            f"workflow `async def` and await the child, or make {workflow.name!r} a plain `def`"
        )

    async def send_async(self, send: Callable[[str], Plan[None]]) -> None:  # noqa: ARG002
        """`Runtime.send_async` awaited in this (sync) workflow: refused."""
        raise UsageError(
            f"rt.send_async() was awaited in workflow {self.workflow.name!r} "
            f"({self.workflow_id!r}), which is not async: call rt.send() there, or make the "
            "workflow `async def`"
        )

    def _child_id(self, seq: int) -> str:
        # Positions restart at 0 in each run: a later run's children need ids of their own.
        local = str(seq) if self.run == 1 else f"r{self.run}/{seq}"
        candidate = f"{self.workflow_id}/{local}"
        if len(candidate) <= MAX_WORKFLOW_ID_LENGTH:
            return candidate
        return f"{hashlib.sha256(self.workflow_id.encode()).hexdigest()}/{local}"

    # -- continue-as-new ---------------------------------------------------------------------

    def continue_as_new(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> NoReturn:
        """End this run and start the next one with `args` and `kwargs`: checked against the
        workflow's signature and serialized before anything is written (UsageError or
        SerializationError, and the workflow goes on, as if it had not called); then one
        fenced statement replaces the history, and ContinuedAsNew unwinds the body (the
        engine runs the next run)."""
        drive(self.continue_plan(args, kwargs), self.io)
        raise AssertionError  # the plan never returns

    def continue_plan(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Plan[NoReturn]:
        """`continue_as_new` written once for both drivers."""
        what = f"stepstone.continue_as_new() of workflow {self.workflow_id!r}"
        if self.in_step:
            raise UsageError(
                f"{what} was called inside the body of a step: a replay skips step bodies, so "
                "call it from the workflow body (with the step's result)"
            )
        self._check_caller("stepstone.continue_as_new()")
        outcome = "it did not continue as new"
        check_arguments(self.workflow.fn, self.workflow.name, args, kwargs, outcome)
        run = self.run + 1
        inputs = self.store.encode(
            {"args": list(args), "kwargs": kwargs, "run": run}, f"arguments of {what}"
        )
        check_decodable(
            self.workflow.fn, self.workflow.name, lambda: self.store.decode_plain(inputs), outcome
        )
        seq, recorded = self.journal.next_step(CONTINUE_AS_NEW, _call_site)
        diverged = (
            NonDeterminismError(self.workflow_id, seq, recorded.name, CONTINUE_AS_NEW, _call_site())
            if recorded is not None
            else self.journal.unreplayed(_call_site, CONTINUE_AS_NEW)
        )
        if diverged is not None:
            # The recorded run went on past this point: this code took another path.
            self.journal.doom(diverged)
            raise diverged
        if self._cancel is not None or self.engine.stopping:
            yield from self._check_stop_plan()
        statement = self.store.continue_as_new_statement(
            self.workflow_id, self.journal.owner, self.journal.epoch, seq, inputs, run
        )
        record = yield from self._write(f"continuing as new (run {run})", statement)
        signal = ContinuedAsNew(self.workflow_id, run, record)
        self.journal.doom(signal)
        raise signal
