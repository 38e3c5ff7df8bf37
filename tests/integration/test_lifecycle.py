"""A Runtime's life: launched again after shutdown or after a launch that failed; and the
durable state's rules that keep a replay equal to the first run."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from psycopg import sql

import stepstone
from stepstone import DatabaseUnreachable, Runtime, UsageError
from tests.support import databases
from tests.support.databases import dsn_for


def test_a_runtime_launches_again_after_shutdown(db: str) -> None:
    """launch() after shutdown() works (the pool and the background loops start afresh) and
    runs workflows as before, twice over."""
    runtime = Runtime(db, executor_id="again")

    @runtime.step()
    def double(n: int) -> int:
        return 2 * n

    @runtime.workflow()
    def flow(n: int) -> int:
        return double(n)

    for round_ in range(3):
        runtime.launch()
        try:
            assert flow(round_) == 2 * round_
            assert runtime.start(flow, round_ + 10).result(timeout=10) == 2 * (round_ + 10)
            assert runtime.health_status().reachable
        finally:
            runtime.shutdown()


def test_a_runtime_launches_after_a_launch_that_failed() -> None:
    """A launch that failed (its database did not exist yet) leaves the Runtime ready to
    launch again, without a raw PoolClosed; once the database exists, launch works."""
    name = f"stepstone_test_late_{uuid.uuid4().hex[:8]}"
    runtime = Runtime(dsn_for(name), executor_id="retry-launch", connect_timeout=1)

    @runtime.workflow()
    def flow() -> str:
        return "ran"

    for _ in range(2):
        with pytest.raises(DatabaseUnreachable):
            runtime.launch()
    with databases.admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        runtime.launch()
        try:
            assert flow() == "ran"
        finally:
            runtime.shutdown()
    finally:
        databases.drop_database(name)


def test_a_launch_refused_by_a_held_executor_id_can_be_retried(db: str) -> None:
    """ExecutorIdInUse from launch() leaves the Runtime launchable once the id is free."""
    holder = Runtime(db, executor_id="shared-id")
    holder.launch()
    second = Runtime(db, executor_id="shared-id", connect_timeout=1)

    @second.workflow()
    def flow() -> str:
        return "second ran"

    try:
        with pytest.raises(stepstone.ExecutorIdInUse):
            second.launch()
    finally:
        holder.shutdown()
    second.launch()
    try:
        assert flow() == "second ran"
    finally:
        second.shutdown()


# -- state ----------------------------------------------------------------------------------


def test_a_state_key_postgresql_cannot_store_is_refused_at_assignment(rt: Runtime) -> None:
    """A NUL or a lone surrogate in a state key is refused where it is assigned, with a
    UsageError naming it; nothing is written and the workflow's own except runs."""

    @rt.step()
    def noop() -> None:
        pass

    @rt.workflow()
    def keyed() -> list[str]:
        refused = []
        for key in ("nul\x00key", "half\udcffsurrogate"):
            try:
                stepstone.current().state[key] = 1
            except UsageError as exc:
                refused.append(str(exc).split(" of workflow")[0])
        stepstone.current().state["fine"] = 2
        noop()
        return refused

    rt.launch()
    assert keyed.with_options(workflow_id="keys-1")() == [
        "state key 'nul\\x00key'",
        "state key 'half\\udcffsurrogate'",
    ]
    assert rt.get_state("keys-1") == {"fine": 2}


def test_state_values_read_inside_a_step_are_copies(rt: Runtime) -> None:
    """Inside a step's body, state values are copies: changing one in place changes nothing,
    on the first run as on a replay (before, the change was committed by the first run and
    lost by a replay, which skips the body)."""

    @rt.step()
    def add_item(item: str) -> list[str]:
        items: list[str] = stepstone.current().state["items"]
        items.append(item)  # a copy: the state is untouched
        return items

    @rt.workflow()
    def basket() -> dict[str, Any]:
        state = stepstone.current().state
        state["items"] = ["a"]
        returned = add_item("b")
        state["after_step"] = list(state["items"])
        state["items"] = returned  # the way to change state: from the step's result
        noop()
        return dict(state)

    @rt.step()
    def noop() -> None:
        pass

    rt.launch()
    result = basket.with_options(workflow_id="basket-1")()
    assert result == {"items": ["a", "b"], "after_step": ["a"]}
    assert rt.get_state("basket-1") == {"items": ["a", "b"], "after_step": ["a"]}
    forked = rt.fork("basket-1", 2, new_workflow_id="basket-2")  # replays both steps
    assert forked.result(timeout=10) == result
