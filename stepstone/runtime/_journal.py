"""The journal of one execution: what happens next, decided without any I/O.

For each step call the journal gives the next sequence number and says whether that
position is recorded (replay its record: the recorded name must match the called one, or
the execution diverged) or new (run the body, then commit what `step_commit` builds). It
keeps the committed state, so that each commit carries only the keys that changed, and it
remembers the control signal that stopped the execution (`doomed`), so that code which
swallowed it cannot go on. A driver (today the sync `Execution`; an async one later) does
the I/O around these decisions.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from stepstone.errors import NonDeterminismError
from stepstone.persistence.recorded_errors import error_summary, storable_text
from stepstone.persistence.rows import StepCommit

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from stepstone.persistence.rows import RecordedStep, StepKind

__all__ = ["Journal"]


class Journal:
    """Sequence numbers, replay decisions, state deltas and commit records of one execution."""

    __slots__ = ("committed", "doomed", "epoch", "owner", "recorded", "seq", "workflow_id")

    def __init__(
        self,
        workflow_id: str,
        owner: str,
        epoch: int,
        recorded: Mapping[int, RecordedStep] | None = None,
        committed_state: Mapping[str, str] | None = None,
    ) -> None:
        self.workflow_id = workflow_id
        self.owner = owner
        self.epoch = epoch
        self.recorded: Mapping[int, RecordedStep] = recorded or {}
        self.committed: dict[str, str] = dict(committed_state or {})
        self.seq = 0
        self.doomed: BaseException | None = None

    # -- steps -------------------------------------------------------------------------------

    @property
    def replaying(self) -> bool:
        """The next step call is at a recorded position."""
        return self.seq in self.recorded

    def next_step(self, name: str, call_site: Callable[[], str]) -> tuple[int, RecordedStep | None]:
        """Take the next sequence number for a call of step `name`: (seq, the record to
        replay, or None to run the body). NonDeterminismError if another step is recorded
        there; the execution is then doomed to fail with it."""
        if self.doomed is not None:
            raise self.doomed
        seq = self.seq
        self.seq += 1
        recorded = self.recorded.get(seq)
        if recorded is not None and recorded.name != name:
            error = NonDeterminismError(self.workflow_id, seq, recorded.name, name, call_site())
            self.doomed = error
            raise error
        return seq, recorded

    def doom(self, signal: BaseException) -> None:
        """Remember what stopped the execution: every later step call raises it again."""
        if self.doomed is None:
            self.doomed = signal

    def unreplayed(
        self, site: Callable[[], str], called: str | None = None
    ) -> NonDeterminismError | None:
        """At completion (or at `called`, a call that ends the run): the error for recorded
        steps that this run never reached."""
        left = [seq for seq in self.recorded if seq >= self.seq]
        if not left:
            return None
        first = min(left)
        return NonDeterminismError(
            self.workflow_id, first, self.recorded[first].name, called, site()
        )

    # -- state -------------------------------------------------------------------------------

    def state_delta(
        self, data: Mapping[str, Any], encode: Callable[[str, Any], str]
    ) -> tuple[dict[str, str] | None, list[str] | None]:
        """The keys of `data` whose serialized value differs from the committed state (as
        `encode(key, value)` serializes them), and the committed keys `data` no longer has."""
        if not data and not self.committed:
            return None, None
        changed = {}
        for key, value in data.items():
            text = encode(key, value)
            if self.committed.get(key) != text:
                changed[key] = text
        deleted = [key for key in self.committed if key not in data]
        return changed or None, deleted or None

    def committed_state(self, state: Mapping[str, str] | None, deleted: list[str] | None) -> None:
        """A commit carrying these state changes is durable."""
        if state:
            self.committed.update(state)
        for key in deleted or ():
            self.committed.pop(key, None)

    # -- commits -----------------------------------------------------------------------------

    def step_commit(
        self,
        seq: int,
        name: str,
        kind: StepKind,
        output: str | None,
        error: dict[str, Any] | None,
        attempts: int,
        started: dt.datetime,
        retries: list[str],
        state: tuple[dict[str, str] | None, list[str] | None],
    ) -> StepCommit:
        """Everything the commit of one executed step writes, audit entries included."""
        logs: list[dict[str, Any]] = []
        if retries:
            logs.append(
                {
                    "event": "step_retried",
                    "details": {"step": name, "attempts": attempts, "errors": retries},
                }
            )
        if error is not None:
            error_type, message = error_summary(error)
            logs.append(
                {
                    "event": "step_failed",
                    "details": {"step": name, "error": f"{error_type}: {message}"[:1000]},
                }
            )
        changed, deleted = state
        return StepCommit(
            execution_id=self.workflow_id,
            owner=self.owner,
            epoch=self.epoch,
            seq=seq,
            name=name,
            kind=kind,
            output=output,
            error=error,
            attempts=attempts,
            started_at=started,
            finished_at=now(),
            state=changed,
            deleted=deleted,
            logs=logs or None,
        )


def retry_note(exc: BaseException) -> str:
    """How a failed attempt that is retried appears in the audit log and the span."""
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: BLE001 - an exception whose __str__ raises
        text = type(exc).__name__
    return storable_text(text[:500])


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
