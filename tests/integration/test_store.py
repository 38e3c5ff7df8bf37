"""`stepstone.persistence.Store` used on its own, against a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from stepstone import DatabaseUnreachable, OwnershipLost, PersistenceError, Store, migrations
from stepstone.persistence import StartRequest, StepCommit

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def store(db: str) -> Iterator[Store]:
    with Store(db) as s:
        yield s


def _start(store: Store, workflow_id: str = "wf-1", owner: str = "exec-a") -> None:
    result = store.start_execution(
        StartRequest(
            workflow_id, "flow", "1", store.encode({"args": [], "kwargs": {}}, "inputs"), owner
        )
    )
    assert result.created


def _commit(
    seq: int,
    *,
    epoch: int = 1,
    owner: str = "exec-a",
    state: dict[str, str] | None = None,
    output: Any = 1,
) -> StepCommit:
    now = dt.datetime.now(dt.UTC)
    return StepCommit(
        "wf-1", owner, epoch, seq, f"step{seq}", "step", str(output), None, 1, now, now, state=state
    )


def test_save_and_load_workflow_definitions(store: Store) -> None:
    """Definitions are upserted by (name, version); load returns a version or the latest seen."""
    first = store.save_workflow("checkout", "1", "aaa")
    again = store.save_workflow("checkout", "1", "bbb")
    store.save_workflow("checkout", "2", "ccc")
    assert again.first_seen == first.first_seen
    assert again.fingerprint == "bbb"
    loaded = store.load_workflow("checkout", "1")
    assert loaded is not None
    assert (loaded.version, loaded.fingerprint) == ("1", "bbb")
    latest = store.load_workflow("checkout")
    assert latest is not None
    assert latest.version == "2"
    assert store.load_workflow("missing") is None


def test_create_execution_is_idempotent_by_id(store: Store) -> None:
    """A second start with the same id writes nothing and returns the first execution."""
    _start(store)
    again = store.start_execution(StartRequest("wf-1", "other", "9", "[]", "exec-b"))
    assert not again.created
    assert (again.workflow_name, again.status, again.owner, again.epoch) == (
        "flow",
        "RUNNING",
        "exec-a",
        1,
    )
    row = store.get_execution("wf-1")
    assert row is not None
    assert (row.workflow_name, row.workflow_version, row.owner) == ("flow", "1", "exec-a")
    assert [log.event for log in store.list_logs("wf-1")] == ["execution_started"]


def test_step_commit_writes_step_state_checkpoint_and_log_together(store: Store) -> None:
    """One commit holds the step row, the state change, its checkpoint and the audit entry."""
    _start(store)
    commit = _commit(0, state={"stage": store.encode("reserved", "state")})
    commit.logs = [{"event": "step_retried", "details": {"attempts": 2}}]
    store.commit_step(commit)
    assert [(s.seq, s.name, s.output) for s in store.list_steps("wf-1")] == [(0, "step0", "1")]
    assert store.get_state("wf-1") == {"stage": "reserved"}
    checkpoint = store.recover_from_checkpoint("wf-1")
    assert checkpoint is not None
    assert (checkpoint.seq, checkpoint.state) == (1, {"stage": '"reserved"'})
    assert [(log.event, log.seq, log.details) for log in store.list_logs("wf-1")][-1] == (
        "step_retried",
        0,
        {"attempts": 2},
    )


def test_fenced_out_step_commit_raises_and_writes_nothing(store: Store) -> None:
    """A commit at a stale epoch or by another owner raises OwnershipLost and leaves no trace."""
    _start(store)
    with pytest.raises(OwnershipLost, match="no longer owns workflow 'wf-1' at epoch 7"):
        store.commit_step(_commit(0, epoch=7, state={"k": "1"}))
    with pytest.raises(OwnershipLost):
        store.commit_step(_commit(0, owner="intruder"))
    assert store.list_steps("wf-1") == []
    assert store.get_state("wf-1") == {}
    assert store.recover_from_checkpoint("wf-1") is None


def test_same_position_cannot_be_recorded_twice(store: Store) -> None:
    """The (execution, seq) key makes a double record impossible even for the owner."""
    _start(store)
    store.commit_step(_commit(0))
    with pytest.raises(PersistenceError, match="duplicate key"):
        store.commit_step(_commit(0, output=2))
    assert [s.output for s in store.list_steps("wf-1")] == ["1"]


def test_update_state_and_checkpoints_recover_the_state_at_a_position(store: Store) -> None:
    """update_state writes and snapshots; recover_from_checkpoint returns the snapshot at or before N."""
    _start(store)
    store.update_state("wf-1", "exec-a", 1, 1, {"a": 1, "b": [1, 2]})
    store.update_state("wf-1", "exec-a", 1, 3, {"a": 2}, deleted=["b"])
    assert store.get_state("wf-1") == {"a": 2}
    at_two = store.recover_from_checkpoint("wf-1", 2)
    assert at_two is not None
    assert (at_two.seq, {k: store.decode(v) for k, v in at_two.state.items()}) == (
        1,
        {"a": 1, "b": [1, 2]},
    )
    latest = store.recover_from_checkpoint("wf-1")
    assert latest is not None
    assert latest.seq == 3
    assert store.recover_from_checkpoint("wf-1", 0) is None
    with pytest.raises(OwnershipLost):
        store.update_state("wf-1", "exec-a", 2, 4, {"a": 3})
    assert store.get_state("wf-1") == {"a": 2}


def test_save_checkpoint_is_fenced(store: Store) -> None:
    """Checkpoints are stored by the owner only."""
    _start(store)
    store.save_checkpoint("wf-1", "exec-a", 1, 5, {"x": (1, 2)})
    found = store.recover_from_checkpoint("wf-1")
    assert found is not None
    assert store.decode(found.state["x"]) == (1, 2)
    with pytest.raises(OwnershipLost):
        store.save_checkpoint("wf-1", "exec-b", 1, 6, {"x": 0})


def test_finish_execution_is_fenced_and_records_the_outcome(store: Store) -> None:
    """Completion only succeeds for the owner at its epoch, and is logged."""
    _start(store)
    with pytest.raises(OwnershipLost):
        store.finish_execution(
            "wf-1", "exec-a", 2, status="SUCCEEDED", output="1", error=None, seq=0
        )
    store.finish_execution("wf-1", "exec-a", 1, status="SUCCEEDED", output="1", error=None, seq=0)
    row = store.get_execution("wf-1")
    assert row is not None
    assert (row.status, row.output) == ("SUCCEEDED", "1")
    assert row.finished_at is not None
    assert store.list_logs("wf-1")[-1].event == "execution_succeeded"
    with pytest.raises(OwnershipLost):  # a finished execution takes no more commits
        store.commit_step(_commit(0))


def test_claim_own_bumps_the_epoch_and_loads_everything_in_one_query(store: Store) -> None:
    """Resuming returns inputs, recorded steps and state, and fences out the previous epoch."""
    _start(store)
    store.commit_step(_commit(0, state={"k": store.encode("v", "state")}))
    record = store.claim_own("wf-1", "exec-a")
    assert record is not None
    assert record.epoch == 2
    assert sorted(record.steps) == [0]
    assert record.state == {"k": '"v"'}
    assert store.claim_own("wf-1", "someone-else") is None
    with pytest.raises(OwnershipLost):
        store.commit_step(_commit(1, epoch=1))
    store.commit_step(_commit(1, epoch=2))
    resumed = [log for log in store.list_logs("wf-1") if log.event == "execution_resumed"]
    assert resumed[0].details == {
        "epoch": 2,
        "previous_owner": "exec-a",
        "previous_epoch": 1,
        "reason": "called_again",
    }
    assert record.recoveries == 1


def test_health_status_reports_latency_pool_and_schema(store: Store) -> None:
    """A healthy store reports a round-trip latency, pool statistics and a current schema."""
    status = store.health_status()
    assert status.reachable
    assert status.healthy
    assert status.latency_ms is not None
    assert status.latency_ms > 0
    assert status.schema_version == status.expected_schema_version == migrations.latest_version()
    assert (status.running, status.enqueued, status.expired_lease, status.unclaimable) == (
        0,
        0,
        0,
        0,
    )
    assert status.pool["pool_max"] == 10


def test_health_status_reports_a_behind_schema(empty_db: str) -> None:
    """A database without stepstone's tables is reachable but not healthy."""
    store = Store(empty_db)
    status = store.health_status()
    assert status.reachable
    assert status.schema_version is None
    assert not status.healthy


def test_health_status_of_an_unreachable_server_names_no_password() -> None:
    """An unreachable server is reported, not raised, and the password is not in the report."""
    store = Store("postgresql://app:hunter2@127.0.0.1:1/app", connect_timeout=2)
    status = store.health_status()
    assert not status.reachable
    assert status.error is not None
    assert "hunter2" not in status.error
    with pytest.raises(DatabaseUnreachable) as info:
        store.open()
    assert "hunter2" not in str(info.value)


def test_store_connection_gives_pooled_access_for_own_queries(store: Store) -> None:
    """Applications can borrow a pooled connection from the store."""
    with store.connection() as conn:
        assert isinstance(conn, psycopg.Connection)
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
