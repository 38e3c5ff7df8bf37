"""Transaction steps and what can go wrong around them: errors their SQL causes at COMMIT,
a pool with no connection to give, session settings left on a pooled connection, and a
frozen process holding the user's row locks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from stepstone import RetryPolicy, Runtime, WorkflowFailed
from tests.support.runtime import FAST


@pytest.fixture
def tables(db: str) -> str:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id int PRIMARY KEY)")
        conn.execute(
            "CREATE TABLE orders (id int PRIMARY KEY, customer int REFERENCES customers "
            "DEFERRABLE INITIALLY DEFERRED)"
        )
    return db


def _count(db: str, table: str) -> int:
    with psycopg.connect(db) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def test_a_deferred_constraint_failing_at_commit_is_the_steps_own_failure(
    rt: Runtime, tables: str
) -> None:
    """A deferred foreign key violated by the step's SQL fails at COMMIT: the step is retried
    per its policy, then its failure is recorded and raised in the workflow, which catches
    it; the execution ends SUCCEEDED (no crash loop, no PersistenceError)."""
    attempts: list[int] = []

    @rt.transaction(retry=RetryPolicy(max_attempts=3, initial_interval=0))
    def place(conn: psycopg.Connection[Any], order_id: int) -> None:
        attempts.append(order_id)
        conn.execute("INSERT INTO orders VALUES (%s, 404)", [order_id])

    @rt.workflow()
    def ordering() -> str:
        try:
            place(1)
        except psycopg.errors.ForeignKeyViolation as exc:
            return f"refused: {exc.sqlstate}"
        return "placed"

    rt.launch()
    assert ordering.with_options(workflow_id="fk-1")() == "refused: 23503"
    assert attempts == [1, 1, 1]
    (step,) = rt.store.list_steps("fk-1")
    assert step.attempts == 3
    assert step.error is not None
    assert step.error["type"] == "psycopg.errors:ForeignKeyViolation"
    assert _count(tables, "orders") == 0
    assert rt.handle("fk-1").status() == "SUCCEEDED"


def test_a_read_only_transaction_step_fails_as_itself(rt: Runtime, tables: str) -> None:
    """A step that sets its transaction READ ONLY cannot have its record written in it: that
    is the step's failure (recorded, raised in the workflow), not an outage."""

    @rt.transaction()
    def look(conn: psycopg.Connection[Any]) -> int:
        conn.execute("SET TRANSACTION READ ONLY")
        row = conn.execute("SELECT count(*) FROM customers").fetchone()
        return int(row[0]) if row else -1

    @rt.workflow()
    def reading() -> int:
        return look()

    rt.launch()
    with pytest.raises(WorkflowFailed, match="ReadOnlySqlTransaction"):
        reading.with_options(workflow_id="ro-1")()
    (step,) = rt.store.list_steps("ro-1")
    assert step.error is not None
    assert rt.handle("ro-1").status() == "FAILED"


def test_a_pool_timeout_in_a_transaction_step_is_an_interruption(db: str) -> None:
    """When no pooled connection frees up in time for a transaction step, nothing is
    recorded for it, even once a connection is free again: the execution stays RUNNING and
    this executor resumes it (before, the timeout was recorded as the step's own failure as
    soon as a connection freed up, and the workflow failed)."""
    runtime = Runtime(
        db,
        executor_id="starved",
        pool_min_size=1,
        pool_max_size=1,
        **{**FAST, "connect_timeout": 1},
    )
    between, go = threading.Event(), threading.Event()
    bodies: list[int] = []

    @runtime.step()
    def first() -> None:
        pass

    @runtime.transaction()
    def write(conn: psycopg.Connection[Any]) -> str:
        bodies.append(1)
        return "written"

    @runtime.workflow()
    def flow() -> str:
        first()
        between.set()
        go.wait(10)
        return write()

    def hold() -> None:
        with runtime.store.connection():
            go.set()
            time.sleep(1.3)  # past the step's checkout timeout (1 s), then free again

    runtime.launch()
    try:
        handle = runtime.start(flow.with_options(workflow_id="starved-1"))
        assert between.wait(10)
        threading.Thread(target=hold, daemon=True).start()
        assert handle.result(timeout=15) == "written"
        assert bodies == [1]
        assert [s.error for s in runtime.store.list_steps("starved-1")] == [None, None]
        events = [log.event for log in runtime.store.list_logs("starved-1")]
        assert "step_failed" not in events
        assert "execution_resumed" in events
    finally:
        runtime.shutdown()


def test_session_settings_do_not_leak_to_the_next_workflow(db: str) -> None:
    """SET, set_config(..., false), a session advisory lock and a LISTEN made inside a
    transaction step are gone when the pooled connection serves the next workflow."""
    runtime = Runtime(db, executor_id="leaky", pool_min_size=1, pool_max_size=1)

    @runtime.transaction()
    def dirty(conn: psycopg.Connection[Any]) -> None:
        conn.execute("SET statement_timeout = '123s'")
        conn.execute("SELECT set_config('app.tenant', 'acme', false)")
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        conn.execute("SELECT pg_advisory_lock(42)")
        conn.execute("LISTEN somewhere")

    @runtime.transaction()
    def inspect(conn: psycopg.Connection[Any]) -> list[Any]:
        row = conn.execute(
            "SELECT current_setting('statement_timeout'), "
            "current_setting('app.tenant', true), "
            "current_setting('default_transaction_read_only'), "
            "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
            " AND pid = pg_backend_pid()), "
            "(SELECT count(*) FROM pg_listening_channels())"
        ).fetchone()
        assert row is not None
        return list(row)

    @runtime.workflow()
    def first() -> None:
        dirty()

    @runtime.workflow()
    def second() -> list[Any]:
        return inspect()

    runtime.launch()
    try:
        first.with_options(workflow_id="leak-1")()
        assert second.with_options(workflow_id="leak-2")() == ["0", "", "off", 0, 0]
    finally:
        runtime.shutdown()


def test_pooled_connections_carry_keepalives_and_an_idle_transaction_timeout(db: str) -> None:
    """Every pooled connection has TCP keepalives on both ends and the configured
    idle_in_transaction_session_timeout; a setting in the DSN wins over the default."""
    runtime = Runtime(db, executor_id="settings", idle_in_transaction_timeout=90)
    runtime.launch()
    try:
        with runtime.store.connection() as conn:
            row = conn.execute(
                "SELECT current_setting('idle_in_transaction_session_timeout'), "
                "current_setting('tcp_keepalives_idle')"
            ).fetchone()
            assert row == ("90s", "30")
            assert conn.info.get_parameters().get("keepalives") == "1"
    finally:
        runtime.shutdown()
    runtime = Runtime(db + " options='-c idle_in_transaction_session_timeout=7s'")
    runtime.launch()
    try:
        with runtime.store.connection() as conn:
            row = conn.execute("SHOW idle_in_transaction_session_timeout").fetchone()
            assert row == ("7s",)
    finally:
        runtime.shutdown()


@pytest.fixture
def stock(db: str) -> str:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE stock (sku text PRIMARY KEY, n int)")
        conn.execute("INSERT INTO stock VALUES ('sku-1', 10)")
    return db


def test_a_frozen_process_cannot_hold_row_locks_for_long(stock: str, tmp_path: Path) -> None:
    """A worker process frozen (SIGSTOP) inside a transaction step, after taking a row lock,
    loses its session once idle_in_transaction_timeout passes: the lock is released and
    another transaction can take the row."""
    script = tmp_path / "frozen.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time
            from stepstone import Runtime

            rt = Runtime(sys.argv[1], executor_id="frozen", idle_in_transaction_timeout=1)

            @rt.transaction()
            def take(conn):
                conn.execute("UPDATE stock SET n = n - 1 WHERE sku = 'sku-1'")
                print("locked", flush=True)
                time.sleep(60)

            @rt.workflow()
            def flow():
                take()

            with rt:
                flow.with_options(workflow_id="frozen-1")()
            """
        )
    )
    with subprocess.Popen(
        [sys.executable, str(script), stock],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "locked"
            os.kill(process.pid, signal.SIGSTOP)
            started = time.monotonic()
            with psycopg.connect(stock, autocommit=True) as conn:
                conn.execute("SET lock_timeout = '20s'")
                with conn.transaction():
                    row = conn.execute(
                        "SELECT n FROM stock WHERE sku = 'sku-1' FOR UPDATE"
                    ).fetchone()
            assert row == (10,)  # the frozen step's update never committed
            assert time.monotonic() - started < 15
        finally:
            process.kill()
