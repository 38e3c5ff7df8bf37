"""The journal's decisions, without a database: sequence numbers, replay or run, the
non-determinism check, state deltas and what a step commit holds."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from stepstone.errors import NonDeterminismError, OwnershipLost
from stepstone.persistence.rows import RecordedStep
from stepstone.runtime._journal import Journal, retry_note

STARTED = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _encode(_key: str, value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _recorded(*names: str) -> dict[int, RecordedStep]:
    return {
        seq: RecordedStep(seq, name, "step", json.dumps(seq), None)
        for seq, name in enumerate(names)
    }


def test_a_new_execution_runs_every_step_in_order() -> None:
    """With nothing recorded, each call gets the next sequence number and nothing to replay."""
    journal = Journal("wf", "me", 1)
    assert [journal.next_step(n, lambda: "site") for n in ("a", "b", "c")] == [
        (0, None),
        (1, None),
        (2, None),
    ]
    assert journal.unreplayed(lambda: "def") is None


def test_recorded_positions_replay_then_new_ones_run() -> None:
    """Recorded positions are replayed (their records returned), the first unrecorded one runs."""
    recorded = _recorded("a", "b")
    journal = Journal("wf", "me", 2, recorded)
    assert journal.replaying
    assert journal.next_step("a", lambda: "site") == (0, recorded[0])
    assert journal.next_step("b", lambda: "site") == (1, recorded[1])
    assert not journal.replaying
    assert journal.next_step("c", lambda: "site") == (2, None)


def test_another_step_at_a_recorded_position_dooms_the_execution() -> None:
    """Calling another step where one is recorded raises NonDeterminismError naming both and
    the call site; every later call raises it again."""
    journal = Journal("wf", "me", 1, _recorded("reserve"))
    with pytest.raises(NonDeterminismError) as info:
        journal.next_step("charge", lambda: "app.py:12")
    error = info.value
    assert (error.seq, error.recorded, error.called, error.call_site) == (
        0,
        "reserve",
        "charge",
        "app.py:12",
    )
    with pytest.raises(NonDeterminismError):
        journal.next_step("anything", lambda: "app.py:13")


def test_returning_before_recorded_steps_is_nondeterminism() -> None:
    """A run that ends before the recorded steps it should have replayed has diverged."""
    journal = Journal("wf", "me", 1, _recorded("a", "b"))
    journal.next_step("a", lambda: "site")
    error = journal.unreplayed(lambda: "app.py:1")
    assert error is not None
    assert (error.seq, error.recorded, error.called) == (1, "b", None)


def test_a_doomed_execution_raises_its_signal_at_every_step() -> None:
    """Once a control signal stopped the execution, code that swallowed it cannot go on:
    the next step call raises the same signal; a second doom does not replace the first."""
    journal = Journal("wf", "me", 1)
    lost = OwnershipLost("wf", "me", 1)
    journal.doom(lost)
    journal.doom(RuntimeError("later"))
    with pytest.raises(OwnershipLost) as info:
        journal.next_step("a", lambda: "site")
    assert info.value is lost


def test_state_delta_holds_only_changed_and_deleted_keys() -> None:
    """A commit carries the keys whose serialized value changed since the committed state,
    and the committed keys that are gone; an unchanged state carries nothing."""
    journal = Journal("wf", "me", 1, committed_state={"kept": "1", "changed": "2", "gone": "3"})
    data = {"kept": 1, "changed": 20, "new": [1]}
    assert journal.state_delta(data, _encode) == ({"changed": "20", "new": "[1]"}, ["gone"])
    journal.committed_state({"changed": "20", "new": "[1]"}, ["gone"])
    assert journal.state_delta(data, _encode) == (None, None)
    assert journal.state_delta({}, _encode) == (None, ["kept", "changed", "new"])
    assert Journal("wf", "me", 1).state_delta({}, _encode) == (None, None)


def test_a_step_commit_holds_the_record_the_state_and_the_audit_entries() -> None:
    """The commit of an executed step names the execution, owner, epoch and position, holds
    its output or error, the state delta, and audit entries for retries and a failure."""
    journal = Journal("wf", "me", 7)
    ok = journal.step_commit(
        seq=3,
        name="charge",
        kind="step",
        output='"paid"',
        error=None,
        attempts=1,
        started=STARTED,
        retries=[],
        state=({"stage": '"paid"'}, None),
    )
    assert (ok.execution_id, ok.owner, ok.epoch, ok.seq, ok.name, ok.output) == (
        "wf",
        "me",
        7,
        3,
        "charge",
        '"paid"',
    )
    assert ok.state == {"stage": '"paid"'}
    assert ok.logs is None
    assert ok.finished_at >= STARTED
    failed = journal.step_commit(
        seq=4,
        name="ship",
        kind="transaction",
        output=None,
        error={"type": "builtins:ValueError", "message": "no truck"},
        attempts=3,
        started=STARTED,
        retries=["ValueError: no truck", "ValueError: no truck"],
        state=(None, None),
    )
    assert failed.logs == [
        {
            "event": "step_retried",
            "details": {"step": "ship", "attempts": 3, "errors": ["ValueError: no truck"] * 2},
        },
        {"event": "step_failed", "details": {"step": "ship", "error": "ValueError: no truck"}},
    ]


def test_retry_notes_are_storable_and_never_raise() -> None:
    """What a retried attempt writes to the audit log is text PostgreSQL can store, even
    for an exception whose message holds a NUL or whose __str__ raises."""

    class Hostile(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert retry_note(ValueError("bad\x00byte")) == "ValueError: bad\\x00byte"
    assert retry_note(ValueError("half \udcff")) == "ValueError: half \\udcff"
    assert retry_note(Hostile()) == "Hostile"
    assert len(retry_note(ValueError("x" * 10_000))) <= 500
