"""The hot queries use the indexes their comments name (EXPLAIN, with sequential scans
discouraged so that the plan shows whether a usable index exists)."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest

from stepstone.persistence._queries import Queries

PARAMS: dict[str, Any] = {
    "id": "wf-1",
    "owner": "exec-a",
    "seq": 3,
    "name": "flow",
    "version": "1",
    "reason": "test",
}

CASES = [
    ("get_execution", "executions_pkey"),
    ("get_status", "executions_pkey"),
    ("get_state", "states_pkey"),
    ("list_steps", "steps_pkey"),
    ("list_logs", "logs_pkey"),
    ("recover_from_checkpoint", "checkpoints_pkey"),
    ("load_workflow", "workflows_pkey"),
    ("claim_own", "executions_pkey"),
    ("unread_messages", "messages_unread_idx"),
    ("received_messages", "messages_pkey"),
    ("count_waiting", "executions_waiting_idx"),  # not hot: once per metric collection
]


def _plan(conn: psycopg.Connection[Any], query: bytes, params: dict[str, Any]) -> str:
    rows = conn.execute(b"EXPLAIN " + query, params).fetchall()
    return "\n".join(str(r[0]) for r in rows)


@pytest.fixture
def conn(db: str) -> Any:
    with psycopg.connect(db) as c:
        c.execute("SET enable_seqscan = off")
        yield c
        c.rollback()


@pytest.mark.parametrize(("name", "index"), CASES)
def test_hot_read_uses_its_index(conn: psycopg.Connection[Any], name: str, index: str) -> None:
    """Each hot read of the Store is an index scan on the index named beside it."""
    plan = _plan(conn, Queries("stepstone")[name], PARAMS)
    assert index in plan, plan
    assert "Seq Scan" not in plan, plan


def test_fence_lookup_uses_the_primary_key(conn: psycopg.Connection[Any]) -> None:
    """The fence inside every step commit finds the execution row by its primary key, and
    locks it only where it must."""
    source = conn.execute(
        "SELECT prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'stepstone' AND p.proname = 'fence_v1'"
    ).fetchone()
    assert source is not None
    lookups = re.findall(
        r"SELECT owner, epoch, status INTO [^\n]*\n\s*(FROM [^;]*);", str(source[0])
    )
    # Completion (row lock), READ COMMITTED step commit (advisory lock, no row lock), and
    # step commit at a higher isolation level (row lock).
    assert len(lookups) == 3
    for lookup in lookups:
        query = "SELECT owner, epoch, status " + lookup.replace("p_id", "%(id)s")
        plan = _plan(conn, query.encode(), PARAMS)
        assert "executions_pkey" in plan, plan
        assert ("LockRows" in plan) == (" FOR " in lookup), plan


def test_a_client_enqueue_reads_the_registered_version_by_its_primary_key(
    conn: psycopg.Connection[Any],
) -> None:
    """enqueue_registered finds the workflow's registered versions through workflows_pkey,
    and calls enqueue_v1 per version found (inside a nested loop, on its inner side)."""
    params = {
        **PARAMS,
        "version": None,
        "inputs": "{}",
        "queue": "q",
        "priority": 0,
        "dedup_key": None,
        "partition_key": None,
        "delay": None,
        "timeout": None,
        "parent": None,
        "trace": None,
        "attributes": None,
        "actor": "client",
    }
    plan = _plan(conn, Queries("stepstone")["enqueue_registered"], params)
    assert "workflows_pkey" in plan, plan
    lines = plan.splitlines()
    loop = next(i for i, line in enumerate(lines) if "Nested Loop" in line)
    function = next(i for i, line in enumerate(lines) if "Function Scan on enqueue_v1" in line)
    versions = next(i for i, line in enumerate(lines) if "workflows_pkey" in line)
    assert loop < versions < function, plan
