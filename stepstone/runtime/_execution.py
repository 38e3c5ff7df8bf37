"""One execution being run (or replayed) in this thread: the sync driver of its journal.

The journal (`_journal`) decides; this module does the I/O around the decisions: it runs
step bodies with their retry policy, records each step with one Store call (one round
trip), and finishes the execution with one more. It never builds SQL.

What a step body raises decides what happens:

- an `Exception` is the step's own failure: retried per its policy, then recorded, and
  raised in the workflow (where its code may catch it; a replay raises the same error);
- a `HandedBack` signal (fenced out, cancelled, suspended, interrupted, shutting down)
  unwinds the workflow without recording anything;
- any other `BaseException` (KeyboardInterrupt, SystemExit, asyncio.CancelledError) is an
  interruption: nothing is recorded, and the engine hands the execution back at once.
"""

from __future__ import annotations

import copy
import functools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeAlias, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace

from stepstone.errors import (
    ExecutionCancelled,
    HandedBack,
    Interrupted,
    NonDeterminismError,
    PersistenceError,
    ShuttingDown,
    Suspended,
    UsageError,
    WorkflowFailed,
)
from stepstone.persistence.ids import check_state_key
from stepstone.persistence.plans import drive
from stepstone.persistence.recorded_errors import encode_error, error_summary, rebuild_error
from stepstone.runtime._journal import now, retry_note
from stepstone.runtime._requests import Sleep, StepBody, run_body
from stepstone.runtime._signatures import function_types
from stepstone.runtime._waiting import Waiting, _call_site, _ChildStep
from stepstone.runtime.context import State, WorkflowContext
from stepstone.telemetry import Telemetry

if TYPE_CHECKING:
    import datetime as dt
    from contextvars import Token

    from stepstone.persistence.plans import Plan, Statement
    from stepstone.persistence.rows import RecordedStep, StepCommit
    from stepstone.runtime._engine import Engine
    from stepstone.runtime._journal import Journal
    from stepstone.runtime._waiting import AnyStep
    from stepstone.runtime.definitions import Workflow, _StepBase

__all__ = ["Execution"]

R = TypeVar("R")
T = TypeVar("T")

if TYPE_CHECKING:
    _Begun: TypeAlias = "tuple[float, trace.Span, Token[otel_context.Context], dt.datetime]"
    """A new step's (duration clock, span, context token, first attempt's start)."""


class Execution(Waiting):
    """One execution being run (or replayed) in one thread."""

    def __init__(
        self,
        engine: Engine,
        workflow: Workflow[Any, Any],
        journal: Journal,
        *,
        span: trace.Span,
        recovered: bool,
    ) -> None:
        self.engine = engine
        self.store = engine.store
        self.telemetry = engine.telemetry
        self.span = span
        self.recovered = recovered
        self.workflow = workflow
        self.workflow_id = journal.workflow_id
        self.journal = journal
        self.state = State(self)
        self.context = WorkflowContext(self)
        self.in_step = False
        self.io = engine.io
        self.thread: int | None = None
        # Which run of the execution this is (continue-as-new starts the next one): the
        # first run's children and sends keep the ids and keys they always had.
        self.run = 1
        self._cancel: Literal["confirmed", "hint"] | None = None

    @property
    def epoch(self) -> int:
        return self.journal.epoch

    @property
    def replaying(self) -> bool:
        return self.journal.replaying

    def bind(self) -> None:
        """The execution starts running in this thread: its steps are called from it."""
        self.thread = threading.get_ident()

    def request_cancel(self, *, confirmed: bool) -> None:
        """Stop before the next step body: `confirmed` when this process cancelled it, else
        a hint that the database confirms first."""
        if self._cancel != "confirmed":
            self._cancel = "confirmed" if confirmed else "hint"

    # -- steps -------------------------------------------------------------------------------

    def run_step(self, step: AnyStep, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.in_step:
            # A step called from a step's body is part of that step.
            if step.kind != "step":
                raise UsageError(
                    f"{step.kind} {step.name!r} was called inside the body of another step of "
                    f"workflow {self.workflow_id!r}: call it from the workflow body instead"
                )
            return step.fn(*args, **kwargs)
        self._check_thread(f"{step.kind} {step.name!r}")
        seq, recorded = self.journal.next_step(step.name, _call_site)
        if recorded is not None:
            return self._replay(recorded, step)
        if self._cancel is not None or self.engine.stopping:
            self._check_stop()
        if step.kind == "step" and not step.is_async:
            ok, value = self._run_plain(step, seq, args, kwargs)
        else:
            ok, value = drive(self._run_new(step, seq, args, kwargs), self.io)
        if ok:
            return value
        raise value

    def run_async_step(
        self,
        step: _StepBase[Any, Any],
        args: tuple[Any, ...],  # noqa: ARG002 - refused whatever the arguments
        kwargs: dict[str, Any],  # noqa: ARG002
    ) -> Any:
        """An async step called from this (sync) workflow: refused."""
        raise UsageError(
            f"async {step.kind} {step.name!r} was called from workflow "
            f"{self.workflow.name!r}, which is not async: make the workflow `async def` and "
            f"await the {step.kind}, or make the {step.kind} a plain `def`"
        )

    def _check_caller(self, what: str) -> None:
        """UsageError unless called where this execution runs (its thread)."""
        self._check_thread(what)

    def _check_thread(self, what: str) -> None:
        if threading.get_ident() != self.thread:
            raise UsageError(
                f"{what} of workflow {self.workflow_id!r} was called from another thread than "
                "the workflow's: steps get their positions in call order, which threads would "
                "make unrepeatable on replay. Call steps from the workflow body's thread; run "
                "concurrent work inside one step"
            )

    def _replay(self, recorded: RecordedStep, step: AnyStep | None = None) -> Any:
        """A recorded outcome: its error raised, or its value (a step's or child's by the
        annotation of its function's result; a wait's as stored)."""
        if recorded.error is not None:
            raise rebuild_error(recorded.error, self.store.serializer)
        if recorded.output is None:
            return None
        if step is None or step.kind == "send":
            return self.store.decode(recorded.output)
        fn = step.declared if isinstance(step, _ChildStep) else step.fn
        name, kind = step.name, step.kind

        def what() -> str:
            return (
                f"the recorded result of {kind} {name!r} (position {recorded.seq}) of "
                f"workflow {self.workflow_id!r}"
            )

        return self.store.decode_as(recorded.output, function_types(fn).returns, what)

    def _check_stop(self) -> None:
        drive(self._check_stop_plan(), self.io)

    def _check_stop_plan(self) -> Plan[None]:
        """Before a new step body, wait or continue-as-new: stop here if the execution was
        cancelled (ExecutionCancelled) or the runtime is shutting down (ShuttingDown: the
        engine releases it for another executor)."""
        if self._cancel is not None:
            yield from self._check_cancelled()
        if self.engine.stopping:
            signal = ShuttingDown(
                f"workflow {self.workflow_id!r} stopped at step {self.journal.seq}: the runtime "
                "is shutting down, and it is handed back for another executor to resume",
                self.workflow_id,
            )
            self.journal.doom(signal)
            raise signal

    def _check_cancelled(self) -> Plan[None]:
        if self._cancel == "hint":
            try:
                found = yield self.store.status_statement(self.workflow_id)
            except PersistenceError as exc:
                raise self._interrupted("checking for a cancellation", exc) from exc
            if found is None or found[0] != "CANCELLED":
                self._cancel = None
                return
        signal = ExecutionCancelled(
            f"workflow {self.workflow_id!r} was cancelled", self.workflow_id
        )
        self.journal.doom(signal)
        raise signal

    def _run_new(
        self,
        step: AnyStep,
        seq: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        begun: _Begun | None = None,
        first: tuple[bool, Any] | None = None,
    ) -> Plan[tuple[bool, Any]]:
        """Run a new step inside its span: its attempts (retried per its policy) and its
        commit. (True, its result) or (False, what the workflow gets raised). One plan for
        the whole step (this is the hot path: each level of plan costs every step).
        `begun` and `first`: the step's span was opened and its first attempt ran (with
        that outcome) before the plan took over (`_run_plain`)."""
        if begun is None:
            begun = self._begin(step, seq)
        retries: list[str] = []
        ok, value = False, None
        try:
            attempt = 0
            while True:
                attempt += 1
                if first is not None:
                    (ok, value), first = first, None
                elif step.kind == "transaction":
                    # The body and its commit are one transaction: done when it succeeded.
                    ok, value = yield from self._transaction(
                        step, seq, args, kwargs, attempt, begun[3], retries
                    )
                    if ok:
                        break
                elif step.is_async:
                    ok, value = yield StepBody(self, step.fn, args, kwargs)
                else:
                    ok, value = run_body(self, step.fn, args, kwargs)
                if not ok:
                    then = self._after_failure(step, attempt, value)
                    if then is _GIVE_UP:
                        break
                    if then is _RETRY:
                        if self.engine.stopping:
                            yield from self._check_stop_plan()  # the next attempt: not now
                        yield Sleep(self._retry(step, seq, attempt, value, retries))
                        continue
                commit = self._record(step, seq, value, ok, attempt, begun[3], retries)
                since = time.perf_counter()
                try:  # a fenced write, as `_write` does it (inline: the hot path)
                    yield self.store.commit_statement(commit)
                except (HandedBack, PersistenceError) as exc:
                    raise self._commit_failed(seq, exc)  # noqa: B904 - its cause is set
                self._committed(commit, since)
                break
        except BaseException as exc:  # noqa: BLE001 - answered to the driver
            if not isinstance(exc, Exception):
                self.journal.doom(exc)
            ok, value = False, exc
        finally:
            self._end(step, seq, begun, ok, value, len(retries))
        return ok, value

    def _run_plain(
        self, step: AnyStep, seq: int, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[bool, Any]:
        """`_run_new` for a plain `def` step on the sync driver, without the generator
        protocol while its first attempt succeeds (the common case: one body, one commit
        statement sent directly); any other first outcome (a retry, a recorded failure, a
        signal) is handed to the plan, which goes on from there."""
        begun = self._begin(step, seq)
        ok, value = run_body(self, step.fn, args, kwargs)
        if not ok:
            return drive(self._run_new(step, seq, args, kwargs, begun, (ok, value)), self.io)
        try:
            commit = self._record(step, seq, value, ok, 1, begun[3], [])
            since = time.perf_counter()
            try:
                self.store.commit_step(commit)
            except (HandedBack, PersistenceError) as exc:
                raise self._commit_failed(seq, exc)  # noqa: B904 - its cause is set
            self._committed(commit, since)
        except BaseException as exc:  # noqa: BLE001 - answered to the caller
            if not isinstance(exc, Exception):
                self.journal.doom(exc)
            ok, value = False, exc
        finally:
            self._end(step, seq, begun, ok, value, 0)
        return ok, value

    def _begin(self, step: AnyStep, seq: int) -> _Begun:
        """A new step starts: its span (made current), the clock of its duration and the
        time its first attempt started."""
        clock = time.perf_counter()
        span = self.telemetry.step_span(step.name, seq, self.workflow_id)
        token = otel_context.attach(trace.set_span_in_context(span))
        return clock, span, token, now()

    def _end(
        self, step: AnyStep, seq: int, begun: _Begun, ok: bool, value: Any, retried: int
    ) -> None:
        """A new step ended (`ok`, with `value`): its span and its metrics."""
        clock, span, token, _ = begun
        outcome = (
            "succeeded"
            if ok and not self.telemetry.log.enabled(logging.DEBUG)
            else self._step_outcome(step, seq, span, ok, value, retried)
        )
        otel_context.detach(token)
        span.end()
        self.telemetry.step_finished(
            self.workflow.name,
            step.name,
            step.kind,
            outcome,
            time.perf_counter() - clock,
            retried,
        )

    def _commit_failed(self, seq: int, exc: BaseException) -> BaseException:
        """What a failed step commit raises: the fence's signal (the execution is doomed
        with it), or an interruption for a database failure."""
        if isinstance(exc, PersistenceError):
            signal = self._interrupted(f"committing step {seq}", exc)
            signal.__cause__ = exc
            return signal
        self.journal.doom(exc)
        return exc

    def _after_failure(self, step: AnyStep, attempt: int, exc: BaseException) -> object:
        """What follows a failed attempt: _GIVE_UP (a control signal or misuse: nothing is
        recorded), _RETRY (per the step's policy), or _RECORD (its error is the step's
        outcome)."""
        if not isinstance(exc, Exception):
            # A control signal, or an interruption (KeyboardInterrupt, SystemExit,
            # CancelledError...): nothing is recorded, and nothing more runs.
            self.journal.doom(exc)
            return _GIVE_UP
        if isinstance(exc, UsageError):
            return _GIVE_UP  # misuse (a step called where it cannot be)
        return _RETRY if step.retry.retries(exc, attempt) else _RECORD

    def _step_outcome(
        self, step: AnyStep, seq: int, span: trace.Span, ok: bool, value: Any, retried: int
    ) -> str:
        """How the step ended, for its metrics; its span and log say so too."""
        if ok:
            if self.telemetry.log.enabled(logging.DEBUG):
                self.telemetry.log.debug(
                    "step_committed",
                    workflow_id=self.workflow_id,
                    step=step.name,
                    seq=seq,
                    kind=step.kind,
                    attempts=retried + 1,
                )
            return "succeeded"
        if not isinstance(value, Suspended):
            Telemetry.failed(span, value)
        handed_back = isinstance(value, HandedBack | UsageError) or not isinstance(value, Exception)
        return "abandoned" if handed_back else "failed"

    def _retry(
        self,
        step: AnyStep,
        seq: int,
        attempt: int,
        exc: BaseException,
        retries: list[str],
    ) -> float:
        """Note a retry (audit, span, log); the delay before the next attempt."""
        delay = step.retry.delay(attempt)
        error = retry_note(exc)
        retries.append(error)
        span = trace.get_current_span()
        span.add_event("retry", {"stepstone.step.attempt": attempt, "exception.message": error})
        span.set_attribute("stepstone.step.attempt", attempt + 1)
        self.telemetry.log.info(
            "step_retried",
            workflow_id=self.workflow_id,
            step=step.name,
            seq=seq,
            attempt=attempt,
            error=error,
            delay=delay,
        )
        return delay

    def _transaction(
        self,
        step: AnyStep,
        seq: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        attempt: int,
        started: dt.datetime,
        retries: list[str],
    ) -> Plan[tuple[bool, Any]]:
        built: list[tuple[StepCommit, float]] = []

        def body(conn: Any) -> StepBody:
            return StepBody(self, step.fn, (conn, *args), kwargs)

        def record(value: Any) -> StepCommit:
            commit = self._record(step, seq, value, True, attempt, started, retries)  # noqa: FBT003
            built.append((commit, time.perf_counter()))
            return commit

        try:
            ok, value = yield from self.store.transaction_step_plan(body, record)
        except PersistenceError as exc:
            signal = self._interrupted(f"running step {seq}", exc)
            signal.__cause__ = exc
            return False, signal
        except BaseException as exc:  # noqa: BLE001 - the step's failure, or a signal
            return False, exc
        if ok:
            self._committed(*built[0])
        return ok, value

    def _record(
        self,
        step: AnyStep,
        seq: int,
        value: Any,
        ok: bool,
        attempts: int,
        started: dt.datetime,
        retries: list[str],
    ) -> StepCommit:
        """The commit of a step whose last attempt returned `value` (`ok`) or raised it."""
        result = value if ok else None
        error = None if ok else value
        if error is None:
            output = self.store.encode(
                result,
                lambda: (
                    f"output of step {step.name!r} (position {seq}) of workflow {self.workflow_id!r}"
                ),
            )
            recorded_error = None
        else:
            output = None
            recorded_error = encode_error(error, self.store.serializer)
        state = self._state_delta()
        return self.journal.step_commit(
            seq, step.name, step.kind, output, recorded_error, attempts, started, retries, state
        )

    def _write(self, what: str, statement: Statement) -> Plan[Any]:
        """One fenced write of this execution (its result): fenced out or cancelled, the
        execution is doomed with that signal; a database failure is an interruption."""
        try:
            return (yield statement)
        except HandedBack as signal:
            self.journal.doom(signal)
            raise
        except PersistenceError as exc:
            raise self._interrupted(what, exc) from exc

    def _committed(self, commit: StepCommit, since: float) -> None:
        """The step is durable: what it wrote is now the committed state."""
        self.telemetry.step_committed(commit.kind, time.perf_counter() - since)
        if commit.state or commit.deleted:
            self.journal.committed_state(commit.state, commit.deleted)

    def _interrupted(self, what: str, exc: PersistenceError) -> Interrupted:
        signal = Interrupted(
            f"workflow {self.workflow_id!r} was interrupted {what}: {exc}", self.workflow_id
        )
        self.journal.doom(signal)
        return signal

    # -- state -------------------------------------------------------------------------------

    def _state_delta(self) -> tuple[dict[str, str] | None, list[str] | None]:
        data = self.state._data
        if not data and not self.journal.committed:
            return None, None
        return self.journal.state_delta(data, self._encode_state)

    def _encode_state(self, key: str, value: Any) -> str:
        return self.store.encode(value, functools.partial(_state_key, key, self.workflow_id))

    def check_state_key(self, key: object) -> None:
        """UsageError unless `key` can be stored, and unless state may change now."""
        check_state_key(key, f" of workflow {self.workflow_id!r}")
        self.check_state_writable(key)

    def check_state_writable(self, key: object) -> None:
        if self.in_step:
            # A replay skips step bodies, so a change made in one would be lost on recovery.
            raise UsageError(
                f"state key {key!r} of workflow {self.workflow_id!r} was changed inside "
                "a step's body: change state in the workflow body (from the step's result)"
            )

    def read_state(self, value: Any) -> Any:
        """A state value as code reads it: inside a step's body, a copy (changing it in place
        would be lost on replay, which skips the body)."""
        return copy.deepcopy(value) if self.in_step else value

    # -- completion --------------------------------------------------------------------------

    def succeed(self, result: Any) -> Plan[Any]:
        """Record the execution SUCCEEDED with `result` (or FAILED, see `fail`, if it was
        doomed, diverged, or its result or state cannot be stored)."""
        doomed = self.journal.doomed
        if doomed is not None:
            return (yield from self.fail(doomed))
        diverged = self.journal.unreplayed(functools.partial(_definition_site, self.workflow))
        if diverged is not None:
            return (yield from self.fail(diverged))
        try:
            output = self.store.encode(result, f"output of workflow {self.workflow_id!r}")
            changed, deleted = self._state_delta()
        except UsageError as exc:
            return (yield from self.fail(exc))
        yield from self._finish("SUCCEEDED", output, None, changed, deleted, None)
        return result

    def fail(self, exc: BaseException) -> Plan[NoReturn]:
        """Record the execution FAILED with `exc` (or with what doomed it) and raise
        WorkflowFailed; a control signal or interruption that doomed it is raised instead."""
        doomed = self.journal.doomed
        for signal in (doomed, exc):
            if signal is not None and not isinstance(signal, Exception):
                raise signal
        cause = doomed if doomed is not None else exc
        record = encode_error(cause, self.store.serializer)
        try:
            changed, deleted = self._state_delta()
        except UsageError:
            changed, deleted = None, None  # the failure is recorded even if the state is not
        error_type, message = error_summary(record)
        yield from self._finish(
            "FAILED", None, record, changed, deleted, {"error": f"{error_type}: {message}"[:1000]}
        )
        if isinstance(cause, NonDeterminismError):
            self.telemetry.log.error(
                "nondeterminism_detected",
                workflow_id=self.workflow_id,
                seq=cause.seq,
                recorded=cause.recorded,
                called=cause.called,
                call_site=cause.call_site,
            )
        raise WorkflowFailed(self.workflow_id, error_type, message) from cause

    def _finish(
        self,
        status: str,
        output: str | None,
        error: dict[str, Any] | None,
        changed: dict[str, str] | None,
        deleted: list[str] | None,
        details: dict[str, Any] | None,
    ) -> Plan[None]:
        statement = self.store.finish_statement(
            self.workflow_id,
            self.journal.owner,
            self.journal.epoch,
            status=status,
            output=output,
            error=error,
            seq=self.journal.seq,
            state=changed,
            deleted=deleted,
            details=details,
        )
        try:  # a fenced write, as `_write` does it (inline: the hot path)
            yield statement
        except HandedBack as signal:
            self.journal.doom(signal)
            raise
        except PersistenceError as exc:
            raise self._interrupted(f"finishing as {status}", exc) from exc


_GIVE_UP = object()
_RETRY = object()
_RECORD = object()


def _state_key(key: str, workflow_id: str) -> str:
    return f"state key {key!r} of workflow {workflow_id!r}"


def _definition_site(workflow: Workflow[Any, Any]) -> str:
    code = getattr(workflow.fn, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code is not None else workflow.name
