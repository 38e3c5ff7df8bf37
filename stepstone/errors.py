"""The errors stepstone raises: one root, a few typed subtrees.

Every message says what happened, names the ids and values involved and says what
to do about it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigurationError",
    "ContinuedAsNew",
    "DatabaseUnreachable",
    "DuplicateRegistration",
    "ExecutionCancelled",
    "ExecutorIdInUse",
    "HandedBack",
    "Interrupted",
    "InvalidWorkflowId",
    "MigrationError",
    "NonDeterminismError",
    "NotLaunched",
    "OwnershipLost",
    "PersistenceError",
    "RecoveryLimitExceeded",
    "RecvTimeout",
    "ResultTimeout",
    "SerializationError",
    "ShuttingDown",
    "StepError",
    "StepOutsideWorkflow",
    "StepstoneError",
    "Suspended",
    "UnregisteredWorkflow",
    "UsageError",
    "WorkflowCancelled",
    "WorkflowFailed",
    "WorkflowIdConflict",
    "WorkflowNotFound",
    "WorkflowOutcome",
    "WorkflowTimedOut",
]


class StepstoneError(Exception):
    """The root of every error stepstone raises."""


# -- configuration and misuse -------------------------------------------------------------


class ConfigurationError(StepstoneError):
    """A setting is invalid: a DSN, a schema name, a pool size, a retry policy."""


class ExecutorIdInUse(ConfigurationError):
    """Another live process holds this executor id."""


class UsageError(StepstoneError):
    """The library was called in a way it does not support."""


class NotLaunched(UsageError):
    """A workflow was called before `Runtime.launch()` (or after `shutdown()`)."""


class StepOutsideWorkflow(UsageError):
    """A step or transaction step was called outside a running workflow."""


class DuplicateRegistration(UsageError):
    """Two workflows, or two steps, were registered under one name."""


class UnregisteredWorkflow(UsageError):
    """A workflow object does not belong to this runtime, or a Client enqueued a workflow
    name (or version) that no worker registered."""


class WorkflowNotFound(UsageError, LookupError):
    """No execution has the workflow id asked for."""


class InvalidWorkflowId(UsageError, ValueError):
    """A workflow id is empty, too long or not a string."""


class SerializationError(UsageError, TypeError):
    """A value cannot be serialized, or is larger than the configured limit."""


# -- persistence --------------------------------------------------------------------------


class PersistenceError(StepstoneError):
    """The database refused or failed an operation; the driver's error is the cause."""


class DatabaseUnreachable(PersistenceError):
    """No connection to PostgreSQL could be made."""


class MigrationError(PersistenceError):
    """The schema could not be migrated, or an applied migration file was changed."""


# -- workflow outcomes --------------------------------------------------------------------


class WorkflowOutcome(StepstoneError):
    """A workflow ended without a result: it failed or was cancelled."""

    def __init__(self, message: str, workflow_id: str) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id


class WorkflowFailed(WorkflowOutcome):
    """The workflow raised. `error_type` and `error_message` are the recorded error;
    `__cause__` is the exception itself when it can be rebuilt in this process."""

    def __init__(self, workflow_id: str, error_type: str, error_message: str) -> None:
        super().__init__(
            f"workflow {workflow_id!r} failed with {error_type}: {error_message}",
            workflow_id,
        )
        self.error_type = error_type
        self.error_message = error_message


class WorkflowCancelled(WorkflowOutcome):
    """The workflow was cancelled before it finished."""


class WorkflowTimedOut(WorkflowCancelled):
    """The workflow passed its deadline (`with_options(timeout=...)`): it was cancelled."""


class StepError(StepstoneError):
    """A recorded step error whose exception type cannot be rebuilt in this process.

    A replay raises it as a subclass that stands in for the recorded type: same `__name__`,
    `__qualname__` and `__module__`, `str()` the recorded message, the recorded notes and
    what attributes could be decoded (an exception group's stand-in is also an
    ExceptionGroup of its members). `error_type` is the recorded type's dotted name and
    `error_message` the message."""

    def __init__(self, error_type: str, error_message: str) -> None:
        super().__init__(f"{error_type}: {error_message}")
        self.error_type = error_type
        self.error_message = error_message


class ResultTimeout(StepstoneError, TimeoutError):
    """`WorkflowHandle.result(timeout=...)` gave up waiting; the workflow goes on."""


class RecvTimeout(StepstoneError, TimeoutError):
    """`stepstone.recv(topic, timeout=...)` ran out of time with no message. It is recorded:
    a replay of the workflow raises it again at the same receive."""


class StateTimeout(StepstoneError, TimeoutError):
    """`wait_state(workflow_id, key, timeout=...)` ran out of time before the key was
    committed. In a workflow it is recorded: a replay raises it again at the same wait."""


class StateNotSet(StepstoneError):
    """`wait_state(workflow_id, key)` waited for an execution that ended without ever
    committing the key, which therefore can never come. Recorded like StateTimeout."""


# -- durability guards --------------------------------------------------------------------


class NonDeterminismError(StepstoneError):
    """On replay the workflow called a different step than the one recorded."""

    def __init__(
        self,
        workflow_id: str,
        seq: int,
        recorded: str | None,
        called: str | None,
        call_site: str,
    ) -> None:
        recorded_text = repr(recorded) if recorded is not None else "nothing"
        called_text = (
            f"step {called!r}" if called is not None else "no step (the workflow returned)"
        )
        super().__init__(
            f"workflow {workflow_id!r} diverged from its recorded history at step {seq}: "
            f"recorded {recorded_text}, called {called_text} at {call_site}. "
            "Workflow code must call the same steps in the same order when it is replayed; "
            "keep the old code path for executions started before the change, or start a new "
            "execution"
        )
        self.workflow_id = workflow_id
        self.seq = seq
        self.recorded = recorded
        self.called = called
        self.call_site = call_site


class RecoveryLimitExceeded(StepstoneError):
    """An execution was recovered more often than the runtime's max_recoveries."""

    def __init__(self, workflow_id: str, recoveries: int, limit: int) -> None:
        super().__init__(
            f"workflow {workflow_id!r} was recovered {recoveries} times, more than "
            f"max_recoveries={limit}: it was marked FAILED to end a crash loop; find what kills "
            "the process while it runs, then start it again under a new id"
        )
        self.workflow_id = workflow_id
        self.recoveries = recoveries
        self.limit = limit


class WorkflowIdConflict(StepstoneError):
    """The workflow id already belongs to an execution of another workflow."""

    def __init__(self, workflow_id: str, existing: str, requested: str) -> None:
        super().__init__(
            f"workflow id {workflow_id!r} already belongs to an execution of {existing!r}, "
            f"not {requested!r}: choose another workflow id"
        )
        self.workflow_id = workflow_id
        self.existing = existing
        self.requested = requested


class Deduplicated(StepstoneError):
    """An unfinished execution of the queue (ENQUEUED, RUNNING or WAITING) has the dedup
    key asked for; `existing` is its workflow id. Nothing was enqueued."""

    def __init__(self, queue: str, dedup_key: str, existing: str) -> None:
        super().__init__(
            f"queue {queue!r} already has an unfinished execution with dedup key "
            f"{dedup_key!r}: workflow {existing!r}; nothing was enqueued (wait for it with "
            f"rt.handle({existing!r}).result(), or enqueue again once it has ended)"
        )
        self.queue = queue
        self.dedup_key = dedup_key
        self.existing = existing


# -- control flow -------------------------------------------------------------------------
#
# These unwind a workflow body without failing its execution. They derive from
# BaseException, so that a workflow's own `except Exception` cannot swallow them, and they
# never reach the caller of a workflow: the runtime turns each into what the caller sees
# (the outcome of the execution, or a wait for it).


class HandedBack(BaseException):
    """The execution stops running in this thread without being failed: it is handed back
    (to another executor, to a later run here, or to its cancellation)."""

    def __init__(self, message: str, workflow_id: str) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id


class OwnershipLost(HandedBack):
    """Another executor claimed this execution; this one must stop running it."""

    def __init__(
        self, workflow_id: str, executor_id: str, epoch: int, detail: str | None = None
    ) -> None:
        found = f" ({detail})" if detail else ""
        super().__init__(
            f"executor {executor_id!r} no longer owns workflow {workflow_id!r} at epoch {epoch}"
            f"{found}: another executor claimed it, so nothing more of it was committed here "
            "and this executor stopped running it",
            workflow_id,
        )
        self.executor_id = executor_id
        self.epoch = epoch


class ExecutionCancelled(HandedBack):
    """The running execution itself was cancelled: it stops at its next step boundary.
    Its callers get WorkflowCancelled."""


class ShuttingDown(HandedBack):
    """The runtime is shutting down gracefully (`Runtime.shutdown(grace=...)`): the
    execution stops at its next step boundary, before a new step body, and is released (no
    owner, the next epoch; not a recovery) for any executor to resume at once."""


class Interrupted(HandedBack):
    """The database or the connection pool failed under the execution (the cause says how):
    it stays RUNNING, and this executor resumes it when the database answers again."""


class Suspended(HandedBack):
    """The execution waits, durably: a sleep, a receive, or another execution's end is
    recorded in the database (the execution is WAITING, with no owner), and its thread is
    free at once. When the wait is due, any executor that runs its workflow resumes it by
    replay. `wake_in`: seconds until it is due by the database's clock (None: when
    something happens)."""

    def __init__(self, workflow_id: str, what: str, wake_in: float | None = None) -> None:
        super().__init__(f"workflow {workflow_id!r} waits {what}", workflow_id)
        self.wake_in = wake_in


class ContinuedAsNew(HandedBack):
    """The workflow called `stepstone.continue_as_new(...)`: its run ended, recorded in the
    database (the history is empty, the new arguments stored), and the execution starts
    afresh as run number `run`, at once and in the same thread. Its callers get the outcome
    of the last run. `next_run` is what the runtime runs it with."""

    def __init__(self, workflow_id: str, run: int, next_run: Any = None) -> None:
        super().__init__(f"workflow {workflow_id!r} continued as new (run {run})", workflow_id)
        self.run = run
        self.next_run = next_run
