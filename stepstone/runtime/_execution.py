"""One execution being run or replayed: its steps, its state, its completion.

It never builds SQL: every write goes through the Store, one call per step commit and one
for the completion.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace

from stepstone.errors import (
    NonDeterminismError,
    OwnershipLost,
    PersistenceError,
    StepstoneError,
    UsageError,
    WorkflowCancelled,
    WorkflowFailed,
)
from stepstone.persistence.ids import MAX_WORKFLOW_ID_LENGTH
from stepstone.persistence.recorded_errors import encode_error, error_summary, rebuild_error
from stepstone.persistence.rows import StepCommit
from stepstone.runtime.context import State, WorkflowContext
from stepstone.runtime.retry import NO_RETRY, RetryPolicy
from stepstone.telemetry import Telemetry

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

    from stepstone.persistence.rows import RecordedStep
    from stepstone.runtime._engine import Engine
    from stepstone.runtime.definitions import Workflow, _StepBase

__all__ = ["Execution"]

R = TypeVar("R")

_PACKAGE_DIR = os.path.dirname(os.path.dirname(__file__))  # noqa: PTH120 - compared with frame paths


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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

    def __init__(self, name: str, run: Callable[..., Any]) -> None:
        self.name = name
        self.fn = run


class Execution:
    """One execution being run (or replayed) in this thread."""

    def __init__(
        self,
        engine: Engine,
        workflow: Workflow[Any, Any],
        workflow_id: str,
        epoch: int,
        recorded: dict[int, RecordedStep] | None = None,
        committed_state: dict[str, str] | None = None,
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
        self.workflow_id = workflow_id
        self.owner = engine.executor_id
        self.epoch = epoch
        self.recorded = recorded or {}
        self.seq = 0
        self.state = State(self)
        self.committed = dict(committed_state or {})
        self.context = WorkflowContext(self)
        self.doomed: StepstoneError | None = None
        self.in_step = False

    @property
    def replaying(self) -> bool:
        return self.seq in self.recorded

    # -- steps -------------------------------------------------------------------------------

    def run_step(
        self, step: _StepBase[Any, Any] | _ChildStep, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self.in_step:
            # A step called from a step's body is part of that step.
            if step.kind != "step":
                raise UsageError(
                    f"{step.kind} {step.name!r} was called inside the body of another step of "
                    f"workflow {self.workflow_id!r}: call it from the workflow body instead"
                )
            return step.fn(*args, **kwargs)
        seq = self.seq
        self.seq += 1
        if self.doomed is not None:
            raise self.doomed
        recorded = self.recorded.get(seq)
        if recorded is not None:
            return self._replay(recorded, step.name, seq)
        return self._run_new(step, seq, args, kwargs)

    def run_child(
        self, workflow: Workflow[Any, R], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> R:
        child_id = workflow.options.workflow_id or self._child_id(self.seq)

        def run() -> R:
            try:
                return self.engine.run(workflow, child_id, args, kwargs, parent_id=self.workflow_id)
            except (OwnershipLost, PersistenceError):
                # The child goes on elsewhere, or here once the database is back: what the
                # parent records is the child's outcome, not this interruption.
                outcome: R = self.engine.wait_outcome(child_id, None)
                return outcome

        child = _ChildStep(workflow.name, run)
        result: R = self.run_step(child, (), {})
        return result

    def _child_id(self, seq: int) -> str:
        candidate = f"{self.workflow_id}/{seq}"
        if len(candidate) <= MAX_WORKFLOW_ID_LENGTH:
            return candidate
        return f"{hashlib.sha256(self.workflow_id.encode()).hexdigest()}/{seq}"

    def _replay(self, recorded: RecordedStep, name: str, seq: int) -> Any:
        if recorded.name != name:
            error = NonDeterminismError(self.workflow_id, seq, recorded.name, name, _call_site())
            self.doomed = error
            raise error
        if recorded.error is not None:
            raise rebuild_error(recorded.error, self.store.serializer)
        return self.store.decode(recorded.output) if recorded.output is not None else None

    def _run_new(
        self,
        step: _StepBase[Any, Any] | _ChildStep,
        seq: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        clock = time.perf_counter()
        retries: list[str] = []
        telemetry = self.telemetry
        span = telemetry.step_span(step.name, seq, self.workflow_id)
        token = otel_context.attach(trace.set_span_in_context(span))
        outcome = "succeeded"
        try:
            result = self._attempts(step, seq, args, kwargs, retries)
            if telemetry.log.enabled(logging.DEBUG):
                telemetry.log.debug(
                    "step_committed",
                    workflow_id=self.workflow_id,
                    step=step.name,
                    seq=seq,
                    kind=step.kind,
                    attempts=len(retries) + 1,
                )
        except BaseException as exc:
            abandoned = isinstance(exc, StepstoneError) or not isinstance(exc, Exception)
            outcome = "abandoned" if abandoned else "failed"
            Telemetry.failed(span, exc)
            raise
        finally:
            otel_context.detach(token)
            span.end()
            telemetry.step_finished(
                self.workflow.name,
                step.name,
                step.kind,
                outcome,
                time.perf_counter() - clock,
                len(retries),
            )
        return result

    def _attempts(
        self,
        step: _StepBase[Any, Any] | _ChildStep,
        seq: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        retries: list[str],
    ) -> Any:
        policy = step.retry
        started = _now()
        attempt = 0
        while True:
            attempt += 1
            self.in_step = True
            try:
                if step.kind == "transaction":
                    return self._run_transaction(step, seq, args, kwargs, attempt, started, retries)
                result = step.fn(*args, **kwargs)
            except (OwnershipLost, PersistenceError, WorkflowCancelled) as exc:
                # This executor may no longer write this execution: stop running it here.
                self.doomed = exc
                raise
            except Exception as exc:
                if policy.retries(exc, attempt):
                    error = f"{type(exc).__name__}: {exc}"[:500]
                    retries.append(error)
                    self.in_step = False
                    delay = policy.delay(attempt)
                    span = trace.get_current_span()
                    span.add_event(
                        "retry", {"stepstone.step.attempt": attempt, "exception.message": error}
                    )
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
                    time.sleep(delay)
                    continue
                if isinstance(exc, UsageError):
                    raise  # misuse (unserializable output, ...): nothing is recorded for it
                self._commit(self._record(step, seq, None, exc, attempt, started, retries))
                raise
            finally:
                self.in_step = False
            self._commit(self._record(step, seq, result, None, attempt, started, retries))
            return result

    def _run_transaction(
        self,
        step: _StepBase[Any, Any] | _ChildStep,
        seq: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        attempt: int,
        started: dt.datetime,
        retries: list[str],
    ) -> Any:
        def body(conn: Any) -> Any:
            return step.fn(conn, *args, **kwargs)

        built: list[tuple[StepCommit, float]] = []

        def record(value: Any) -> StepCommit:
            commit = self._record(step, seq, value, None, attempt, started, retries)
            built.append((commit, time.perf_counter()))
            return commit

        result = self.store.run_transaction_step(body, record)
        self._committed(*built[0])
        return result

    def _record(
        self,
        step: _StepBase[Any, Any] | _ChildStep,
        seq: int,
        result: Any,
        error: BaseException | None,
        attempts: int,
        started: dt.datetime,
        retries: list[str],
    ) -> StepCommit:
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
        changed, deleted = self._state_delta()
        logs: list[dict[str, Any]] = []
        if retries:
            logs.append(
                {
                    "event": "step_retried",
                    "details": {"step": step.name, "attempts": attempts, "errors": retries},
                }
            )
        if recorded_error is not None:
            error_type, message = error_summary(recorded_error)
            logs.append(
                {
                    "event": "step_failed",
                    "details": {"step": step.name, "error": f"{error_type}: {message}"[:1000]},
                }
            )
        return StepCommit(
            execution_id=self.workflow_id,
            owner=self.owner,
            epoch=self.epoch,
            seq=seq,
            name=step.name,
            kind=step.kind,
            output=output,
            error=recorded_error,
            attempts=attempts,
            started_at=started,
            finished_at=_now(),
            state=changed,
            deleted=deleted,
            logs=logs or None,
        )

    def _commit(self, commit: StepCommit) -> None:
        since = time.perf_counter()
        try:
            self.store.commit_step(commit)
        except (OwnershipLost, PersistenceError, WorkflowCancelled) as exc:
            self.doomed = exc
            raise
        self._committed(commit, since)

    def _committed(self, commit: StepCommit, since: float) -> None:
        """The step is durable: what it wrote is now the committed state."""
        self.telemetry.step_committed(commit.kind, time.perf_counter() - since)
        if commit.state:
            self.committed.update(commit.state)
        for key in commit.deleted or ():
            self.committed.pop(key, None)

    # -- state -------------------------------------------------------------------------------

    def _state_delta(self) -> tuple[dict[str, str] | None, list[str] | None]:
        data = self.state._data
        if not data and not self.committed:
            return None, None
        changed = {}
        for key, value in data.items():
            text = self.store.encode(value, functools.partial(_state_key, key, self.workflow_id))
            if self.committed.get(key) != text:
                changed[key] = text
        deleted = [key for key in self.committed if key not in data]
        return changed or None, deleted or None

    # -- completion --------------------------------------------------------------------------

    def succeed(self, result: Any) -> Any:
        if self.doomed is not None:
            return self.fail(self.doomed)
        unreplayed = [seq for seq in self.recorded if seq >= self.seq]
        if unreplayed:
            first = min(unreplayed)
            error = NonDeterminismError(
                self.workflow_id,
                first,
                self.recorded[first].name,
                None,
                _definition_site(self.workflow),
            )
            return self.fail(error)
        try:
            output = self.store.encode(result, f"output of workflow {self.workflow_id!r}")
            changed, deleted = self._state_delta()
        except UsageError as exc:
            return self.fail(exc)
        self.store.finish_execution(
            self.workflow_id,
            self.owner,
            self.epoch,
            status="SUCCEEDED",
            output=output,
            error=None,
            seq=self.seq,
            state=changed,
            deleted=deleted,
        )
        return result

    def fail(self, exc: BaseException) -> NoReturn:
        doomed = self.doomed
        if isinstance(doomed, OwnershipLost | PersistenceError | WorkflowCancelled):
            raise doomed
        if isinstance(exc, OwnershipLost | PersistenceError | WorkflowCancelled):
            raise exc
        cause = doomed if doomed is not None else exc
        record = encode_error(cause, self.store.serializer)
        try:
            changed, deleted = self._state_delta()
        except UsageError:
            changed, deleted = None, None  # the failure is recorded even if the state is not
        error_type, message = error_summary(record)
        self.store.finish_execution(
            self.workflow_id,
            self.owner,
            self.epoch,
            status="FAILED",
            output=None,
            error=record,
            seq=self.seq,
            state=changed,
            deleted=deleted,
            details={"error": f"{error_type}: {message}"[:1000]},
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


def _state_key(key: str, workflow_id: str) -> str:
    return f"state key {key!r} of workflow {workflow_id!r}"


def _definition_site(workflow: Workflow[Any, Any]) -> str:
    code = getattr(workflow.fn, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code is not None else workflow.name
