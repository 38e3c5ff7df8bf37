"""Plain records the Store reads and writes. Payloads stay serialized text: decode them with
the store's serializer (`Store.decode`) where you need the values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import datetime as dt

__all__ = [
    "Checkpoint",
    "DispatchResult",
    "EnqueueRequest",
    "EnqueueResult",
    "ExecutionRow",
    "ExecutorRow",
    "HealthStatus",
    "LogRow",
    "ReceivedMessage",
    "RecordedStep",
    "ResumeRecord",
    "SlowStep",
    "StartRequest",
    "StartResult",
    "StepCommit",
    "StepRow",
    "SweepResult",
    "UnreadMessages",
    "WaitOutcome",
    "WaitRequest",
    "WokenRecord",
    "WorkflowRegistration",
    "WorkflowRow",
    "WorkflowStats",
]

WaitKind = Literal["sleep", "recv", "wait_state"]
StepKind = Literal["step", "transaction", "workflow", "sleep", "recv", "send", "wait_state"]


@dataclass(frozen=True, slots=True)
class WorkflowRow:
    """A registered workflow definition."""

    name: str
    version: str
    fingerprint: str
    first_seen: dt.datetime
    last_seen: dt.datetime


@dataclass(frozen=True, slots=True)
class WorkflowRegistration:
    """What registering a workflow definition met (`Store.register_workflow`): the row as
    saved, the fingerprint registered before (None: the version is new), and the unfinished
    (ENQUEUED, RUNNING, WAITING) executions of the version that started with another
    fingerprint: how many, their fingerprints, and the ids of the ten oldest."""

    workflow: WorkflowRow
    previous_fingerprint: str | None
    changed_executions: int
    changed_fingerprints: list[str]
    oldest_changed_ids: list[str]


@dataclass(frozen=True, slots=True)
class ExecutorRow:
    """A registered executor: its host and process, when it started, the age of its last
    heartbeat in seconds (None: it shut down and ended its lease), its lease, how many
    RUNNING executions it owns, and whether its lease is current."""

    id: str
    hostname: str
    pid: int
    started_at: dt.datetime
    heartbeat_age: float | None
    lease_seconds: float
    running: int
    alive: bool


@dataclass(frozen=True, slots=True)
class ExecutionRow:
    """One execution of a workflow. `error` is the recorded error (type, message, traceback).
    A WAITING execution has `waiting` (what it waits for: kind "sleep", "recv", "wait_state"
    or "execution", the wait's position `seq` and `name`, the `topic` of a receive, the
    `target` execution and the state `key` waited for, `timeout` in seconds, `timeout_at`
    and `started_at`) and `wake_at`, when it is due (None: when something happens). `run`
    is which run of the execution this is: 1, then one more at each continue-as-new.
    `fingerprint` is the fingerprint of its workflow version's code registered when it was
    created (or last continued as new), `registered_fingerprint` the one registered now;
    either is None where unknown (see `code_changed`)."""

    id: str
    workflow_name: str
    workflow_version: str
    status: str
    inputs: str
    output: str | None
    error: dict[str, Any] | None
    owner: str | None
    epoch: int
    parent_id: str | None
    attributes: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    wake_at: dt.datetime | None = None
    waiting: dict[str, Any] | None = None
    run: int = 1
    fingerprint: str | None = None
    registered_fingerprint: str | None = None

    @property
    def code_changed(self) -> bool | None:
        """Whether its workflow version's registered code differs from the code it started
        with: its replay runs other code than the one that recorded its steps. None when
        either fingerprint is unknown."""
        if self.fingerprint is None or self.registered_fingerprint is None:
            return None
        return self.fingerprint != self.registered_fingerprint


@dataclass(frozen=True, slots=True)
class StepRow:
    """One completed step of an execution."""

    execution_id: str
    seq: int
    name: str
    kind: str
    output: str | None
    error: dict[str, Any] | None
    attempts: int
    started_at: dt.datetime
    finished_at: dt.datetime


@dataclass(frozen=True, slots=True)
class LogRow:
    """One audit log entry of an execution."""

    execution_id: str
    id: int
    at: dt.datetime
    event: str
    actor: str | None
    seq: int | None
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The state of an execution after its first `seq` steps; values are serialized text."""

    execution_id: str
    seq: int
    state: dict[str, str]


@dataclass(frozen=True, slots=True)
class UnreadMessages:
    """The unread messages of one topic of an execution's mailbox: how many, and when the
    oldest of them was sent."""

    execution_id: str
    topic: str
    count: int
    oldest_sent_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """A message an execution received: the receive at position `seq` consumed it, and
    `received_at` is when that receive's step was recorded (None if the step is gone)."""

    execution_id: str
    topic: str
    id: int
    seq: int
    sender: str | None
    sent_at: dt.datetime
    received_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class StartRequest:
    """What `Store.start_execution` writes for a new execution."""

    id: str
    workflow_name: str
    workflow_version: str
    inputs: str
    owner: str
    parent_id: str | None = None
    trace_context: dict[str, str] | None = None
    attributes: dict[str, Any] | None = None
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class EnqueueRequest:
    """What `Store.enqueue` writes: an execution ENQUEUED on `queue`, startable `delay`
    seconds from now (None: at once), with its priority (lower first), dedup and partition
    keys and deadline length (`timeout`, from its start)."""

    id: str
    workflow_name: str
    workflow_version: str | None  # None: the registered one seen last (Store.enqueue)
    inputs: str
    queue: str
    actor: str
    priority: int = 0
    dedup_key: str | None = None
    partition_key: str | None = None
    delay: float | None = None
    timeout: float | None = None
    parent_id: str | None = None
    trace_context: dict[str, str] | None = None
    attributes: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """`Store.enqueue`'s answer: `outcome` is "enqueued", "exists" (an execution has that
    id: its workflow name and status), "deduplicated" (`existing` has the dedup key),
    "no_queue" or, for a registered-only enqueue, "no_workflow" (no worker registered the
    definition); `workflow_version` is the version a registered-only enqueue chose."""

    outcome: str
    workflow_name: str | None
    status: str | None
    existing: str | None
    workflow_version: str | None = None


@dataclass(frozen=True, slots=True)
class DispatchResult:
    """`Store.dispatch`'s answer: the executions claimed, each with its queue, and the
    seconds until the earliest delayed start or rate window of those queues (None: none)."""

    claimed: list[tuple[str, ResumeRecord]]
    next_in: float | None


@dataclass(frozen=True, slots=True)
class StartResult:
    """The outcome of `Store.start_execution`: the new execution, or the existing one."""

    created: bool
    workflow_name: str
    status: str
    owner: str | None
    epoch: int
    output: str | None
    error: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class RecordedStep:
    """A step as replay needs it."""

    seq: int
    name: str
    kind: str
    output: str | None
    error: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class ResumeRecord:
    """An execution claimed for resumption, with everything needed to replay it."""

    id: str
    workflow_name: str
    workflow_version: str
    inputs: str
    epoch: int
    recoveries: int
    steps: dict[int, RecordedStep]
    state: dict[str, str]
    trace_context: dict[str, str] | None = None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> ResumeRecord:
        """From (id, name, version, inputs, epoch, recoveries, steps, state, trace context)."""
        ident, name, version, inputs, epoch, recoveries, steps, state, trace_context = row
        recorded = {s[0]: RecordedStep(s[0], s[1], s[2], s[3], s[4]) for s in steps}
        return cls(ident, name, version, inputs, epoch, recoveries, recorded, state, trace_context)


@dataclass(frozen=True, slots=True)
class WokenRecord:
    """An execution a sweep woke from a wait: what replays it, how many seconds its wait
    had been due when the database woke it (by the database's clock), the kind of wait
    (sleep, recv, execution), and whether the wake consumed a message (a receive that got
    one rather than timing out)."""

    record: ResumeRecord
    overdue: float
    wait_kind: str
    received: bool

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> WokenRecord:
        """From a resume row followed by (overdue seconds, the `waiting` value it had)."""
        record = ResumeRecord.from_row(row[:9])
        overdue, waited = row[9], row[10] or {}
        kind = str(waited.get("kind", ""))
        step = record.steps.get(int(waited.get("seq", -1)))
        received = kind == "recv" and step is not None and step.error is None
        return cls(record, max(0.0, float(overdue or 0.0)), kind, received)


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one sweep claimed (interrupted executions) and woke (due waits), the expired
    executions it could not run, and in how many seconds (by the database's clock) the next
    wait it could wake is due."""

    claimed: list[ResumeRecord]
    unclaimable: list[tuple[str, str, str]]
    woken: list[WokenRecord] = field(default_factory=list)
    next_wake_in: float | None = None


@dataclass(frozen=True, slots=True)
class WaitRequest:
    """A wait reached by a running execution (see `Store.wait`). `waiting` holds what it
    waits for (the topic of a receive; the target execution and key of a wait for state);
    `seconds` is a sleep's length or a wait's timeout (None: none), `until` a sleep's
    end."""

    execution_id: str
    owner: str
    epoch: int
    seq: int
    name: str
    kind: WaitKind
    waiting: dict[str, Any]
    seconds: float | None
    until: dt.datetime | None
    started_at: dt.datetime
    state: dict[str, str] | None = None
    deleted: list[str] | None = None


@dataclass(frozen=True, slots=True)
class WaitOutcome:
    """`Store.wait`'s answer: done now with this output or error record, or WAITING until
    `wake_at`, `wake_in` seconds from now by the database's clock (None: until a message
    comes)."""

    resolved: bool
    output: str | None
    error: dict[str, Any] | None
    wake_at: dt.datetime | None
    wake_in: float | None


@dataclass(slots=True)
class StepCommit:
    """Everything one step commit writes. `state` maps changed keys to serialized values;
    `deleted` lists removed keys; `logs` are audit entries ({"event": ..., "details": {...}})."""

    execution_id: str
    owner: str
    epoch: int
    seq: int
    name: str
    kind: StepKind
    output: str | None
    error: dict[str, Any] | None
    attempts: int
    started_at: dt.datetime
    finished_at: dt.datetime
    state: dict[str, str] | None = None
    deleted: list[str] | None = None
    logs: list[dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class HealthStatus:
    """What `Store.health_status()` found. The execution counts are read only from a
    reachable database with a current schema (None otherwise): `running`, `enqueued`,
    `expired_lease` (RUNNING, their owner's lease expired or no owner), `unclaimable` (of
    those, no live executor registers their workflow version), `code_changed` (unfinished
    executions that started with other code than their workflow version's registered now)
    and the age of the oldest RUNNING one. `reasons` says why it is not healthy, `warnings`
    what deserves a look though it is."""

    reachable: bool
    latency_ms: float | None
    schema_version: int | None
    expected_schema_version: int
    pool: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    running: int | None = None
    enqueued: int | None = None
    expired_lease: int | None = None
    unclaimable: int | None = None
    oldest_running_seconds: float | None = None
    code_changed: int | None = None

    @property
    def schema_current(self) -> bool:
        """The schema has every migration this version of stepstone ships."""
        return self.schema_version == self.expected_schema_version

    @property
    def healthy(self) -> bool:
        """Reachable with a current schema, and no running execution that no live executor
        can run."""
        return self.reachable and self.schema_current and not self.unclaimable

    @property
    def reasons(self) -> list[str]:
        """Why it is not healthy, one sentence each, saying what to do; empty when healthy."""
        found, expected = self.schema_version, self.expected_schema_version
        if not self.reachable:
            why = " ".join((self.error or "no reason given").split())
            return [f"the database cannot be reached: {why}"]
        reasons = []
        if found is None:
            reasons.append(
                "the schema has no stepstone tables: check the database URL and schema name, "
                f"then create them with `stepstone migrate` (version {expected})"
            )
        elif found < expected:
            reasons.append(
                f"the schema is at version {found}, behind the version {expected} this "
                "stepstone needs: upgrade it with `stepstone migrate` (Runtime.launch() "
                "migrates too)"
            )
        elif found > expected:
            reasons.append(
                f"the schema is at version {found}, ahead of the version {expected} this "
                "stepstone knows: upgrade stepstone here to the version that migrated it"
            )
        if self.unclaimable:
            reasons.append(
                f"{_count(self.unclaimable, 'RUNNING execution')} without a live owner "
                f"{_verb(self.unclaimable)} a workflow version no live executor registers: "
                "start an executor that registers it (`stepstone executions list --status "
                "RUNNING` shows their workflow and version)"
            )
        return reasons

    @property
    def warnings(self) -> list[str]:
        """What deserves a look without making it unhealthy, one sentence each."""
        warnings = []
        claimable = (self.expired_lease or 0) - (self.unclaimable or 0)
        if claimable > 0:
            warnings.append(
                f"{_count(claimable, 'RUNNING execution')} {_verb(claimable, 'has', 'have')} "
                "an owner whose lease expired: a live executor that registers its workflow "
                "takes it over at its next sweep"
            )
        if self.code_changed:
            warnings.append(
                f"{_count(self.code_changed, 'unfinished execution')} started with other code "
                "than its workflow version is registered with now, so its replay may diverge: "
                "`stepstone executions show ID` tells which code each started with (the "
                "workflow_code_changed event at launch names them)"
            )
        return warnings


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _verb(n: int, one: str = "runs", many: str = "run") -> str:
    return one if n == 1 else many


@dataclass(frozen=True, slots=True)
class WorkflowStats:
    """One workflow's executions created in a time window. Durations are in seconds, over
    the executions that ended; `retries` counts failed step attempts that were retried."""

    workflow_name: str
    count: int
    succeeded: int
    failed: int
    cancelled: int
    unfinished: int
    p50_seconds: float | None
    p95_seconds: float | None
    p99_seconds: float | None
    retries: int

    @property
    def success_rate(self) -> float | None:
        """Succeeded among those that ended (None if none has)."""
        ended = self.succeeded + self.failed + self.cancelled
        return self.succeeded / ended if ended else None


@dataclass(frozen=True, slots=True)
class SlowStep:
    """A step among the slowest of a time window."""

    execution_id: str
    workflow_name: str
    seq: int
    step_name: str
    kind: str
    seconds: float
    attempts: int
    failed: bool
