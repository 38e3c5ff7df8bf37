"""A workflow version whose code changed while executions of it had not ended is reported:
a warning event at registration, a field of `executions show`, a health counter."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import psycopg
from structlog.testing import capture_logs

import stepstone
from stepstone import Runtime
from tests.support.cli import run_cli as _cli
from tests.support.runtime import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from stepstone.runtime.definitions import Workflow


def _order_v1(rt: Runtime) -> Workflow[[str], str]:
    @rt.workflow(name="order", version="1")
    def order(sku: str) -> str:
        stepstone.sleep(3600)
        return f"shipped {sku}"

    return order


def _order_v1_changed(rt: Runtime) -> Workflow[[str], str]:
    @rt.workflow(name="order", version="1")
    def order(sku: str) -> str:
        stepstone.sleep(3600)
        return f"shipped {sku} by courier"  # the same version, other code

    return order


def _waiting(rt: Runtime, workflow: Workflow[[str], str], workflow_id: str) -> None:
    """Start `workflow` as `workflow_id` and wait until it sleeps (WAITING)."""
    handle = rt.start(workflow.with_options(workflow_id=workflow_id), "a")
    wait_for(lambda: handle.status() == "WAITING")


def _launched(
    db: str, executor: str, define: Callable[[Runtime], Workflow[[str], str]]
) -> tuple[Runtime, Workflow[[str], str], list[dict[str, object]]]:
    rt = Runtime(db, executor_id=executor, workers=2, pool_max_size=3)
    workflow = define(rt)
    with capture_logs() as events:
        rt.launch()
    return rt, workflow, events


def test_changed_code_is_a_warning_a_show_field_and_a_health_count(db: str) -> None:
    """Registering other code for a version with unfinished executions warns
    (workflow_code_changed: old and new fingerprints, how many, which); `show` tells each
    execution's fingerprint and whether it changed; health counts those executions."""
    old_rt, old, events = _launched(db, "old-executor", _order_v1)
    try:
        assert not [e for e in events if e["event"] == "workflow_code_changed"]
        _waiting(old_rt, old, "order-1")
        _waiting(old_rt, old, "order-2")
    finally:
        old_rt.shutdown()

    new_rt, new, events = _launched(db, "new-executor", _order_v1_changed)
    try:
        assert new.fingerprint != old.fingerprint
        warnings = [e for e in events if e["event"] == "workflow_code_changed"]
        assert len(warnings) == 1, events
        warning = warnings[0]
        assert warning["log_level"] == "warning"
        assert warning["workflow"] == "order"
        assert warning["version"] == "1"
        assert warning["fingerprint"] == new.fingerprint
        assert warning["previous_fingerprint"] == old.fingerprint
        assert warning["started_with"] == old.fingerprint
        assert warning["executions"] == 2
        assert warning["oldest_ids"] == "order-1,order-2"
        _waiting(new_rt, new, "order-3")  # started with the new code: not reported
        health = new_rt.store.health_status()
    finally:
        new_rt.shutdown()
    assert health.code_changed == 2

    shown = json.loads(_cli(db, "executions", "show", "order-1", "--json").stdout)["execution"]
    assert shown["fingerprint"] == old.fingerprint
    assert shown["registered_fingerprint"] == new.fingerprint
    assert shown["code_changed"] is True
    fresh = json.loads(_cli(db, "executions", "show", "order-3", "--json").stdout)["execution"]
    assert (fresh["fingerprint"], fresh["code_changed"]) == (new.fingerprint, False)
    text = _cli(db, "executions", "show", "order-1").stdout
    code = next(line for line in text.splitlines() if line.strip().startswith("code:"))
    assert old.fingerprint in code
    assert new.fingerprint in code
    assert "changed since this execution started" in code
    assert "changed" not in next(
        line
        for line in _cli(db, "executions", "show", "order-3").stdout.splitlines()
        if line.strip().startswith("code:")
    )
    report = json.loads(_cli(db, "health", "--json").stdout)
    assert report["code_changed"] == 2


def test_the_same_code_registered_again_warns_of_nothing(db: str) -> None:
    """A restart with unchanged code, while executions of the version wait, emits no
    workflow_code_changed and counts nothing in health."""
    first, workflow, _ = _launched(db, "first", _order_v1)
    try:
        _waiting(first, workflow, "order-1")
    finally:
        first.shutdown()
    again, _, events = _launched(db, "again", _order_v1)
    try:
        assert not [e for e in events if e["event"] == "workflow_code_changed"], events
        assert again.store.health_status().code_changed == 0
    finally:
        again.shutdown()


def test_an_execution_takes_the_registered_fingerprint_at_creation_and_at_a_new_run(
    db: str,
) -> None:
    """The trigger records the version's registered fingerprint on insert (none if the
    version is unregistered), keeps it on other updates, and takes the current one when
    `run` changes (continue-as-new)."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO stepstone.workflows (name, version, fingerprint) VALUES ('wf', '1', 'aaa')"
        )
        conn.execute(
            "INSERT INTO stepstone.executions (id, workflow_name, workflow_version, status, inputs)"
            " VALUES ('e-1', 'wf', '1', 'RUNNING', '[]'), ('e-2', 'other', '1', 'RUNNING', '[]')"
        )
        conn.execute("UPDATE stepstone.workflows SET fingerprint = 'bbb'")

        def fingerprint(workflow_id: str) -> object:
            row = conn.execute(
                "SELECT fingerprint FROM stepstone.executions WHERE id = %s", [workflow_id]
            ).fetchone()
            assert row is not None
            return row[0]

        assert (fingerprint("e-1"), fingerprint("e-2")) == ("aaa", None)
        conn.execute(
            "UPDATE stepstone.executions SET status = 'WAITING', run = run WHERE id = 'e-1'"
        )
        assert fingerprint("e-1") == "aaa"
        conn.execute("UPDATE stepstone.executions SET run = 2 WHERE id = 'e-1'")
        assert fingerprint("e-1") == "bbb"
