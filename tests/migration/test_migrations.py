"""The migration runner against a real PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg import sql

from stepstone import MigrationError, Runtime, migrations
from stepstone.migrations import Migration

if TYPE_CHECKING:
    from collections.abc import Iterator

ALL_VERSIONS = [m.version for m in migrations.load_migrations()]
ENTITIES = {"workflows", "executions", "states", "steps", "logs", "checkpoints", "executors"}
METRIC_VIEWS = {"step_metrics", "execution_metrics"}


def _relations(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'v')",
        [schema],
    ).fetchall()
    return {str(name): str(kind) for name, kind in rows}


@pytest.fixture
def conn(empty_db: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(empty_db, autocommit=True) as c:
        yield c


def test_migrate_creates_the_seven_entities_with_their_indexes(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    """A fresh database gets every table, the metric views and the hot-path indexes."""
    assert migrations.migrate(conn, "stepstone") == ALL_VERSIONS
    relations = _relations(conn, "stepstone")
    assert {name for name, kind in relations.items() if kind == "r"} >= ENTITIES | {
        "schema_migrations"
    }
    assert {name for name, kind in relations.items() if kind == "v"} == METRIC_VIEWS
    indexes = {
        str(r[0])
        for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'stepstone'"
        ).fetchall()
    }
    assert {
        "executions_pkey",
        "steps_pkey",
        "states_pkey",
        "checkpoints_pkey",
        "logs_pkey",
    } <= indexes
    assert "executions_running_owner_idx" in indexes


def test_rerunning_migrate_is_a_no_op(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """A second run applies nothing and records nothing new."""
    migrations.migrate(conn, "stepstone")
    assert migrations.migrate(conn, "stepstone") == []
    rows = conn.execute(
        "SELECT version, name, checksum FROM stepstone.schema_migrations"
    ).fetchall()
    assert rows == [(m.version, m.name, m.checksum) for m in migrations.load_migrations()]


def test_schema_name_is_configurable_and_quoted(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    """Any schema name works, quoted as an identifier, and schemas do not see each other."""
    odd = 'Odd "name"; DROP TABLE x'
    migrations.migrate(conn, odd)
    migrations.migrate(conn, "other")
    assert set(_relations(conn, odd)) >= ENTITIES
    assert set(_relations(conn, "other")) >= ENTITIES
    assert migrations.applied_versions(conn, odd) == {
        m.version: m.checksum for m in migrations.load_migrations()
    }


def test_changed_applied_migration_is_refused(
    conn: psycopg.Connection[tuple[object, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An applied file whose text changed stops the runner with a clear error and no change."""
    migrations.migrate(conn, "stepstone")
    original = migrations.load_migrations()
    edited = [Migration(m.version, m.name, m.text + "\n-- edited\n") for m in original]
    monkeypatch.setattr(migrations, "load_migrations", lambda: edited)
    with pytest.raises(
        MigrationError, match=r"0001_initial\.sql was changed after it was applied"
    ) as info:
        migrations.migrate(conn, "stepstone")
    assert "new migration" in str(info.value)
    row = conn.execute("SELECT checksum FROM stepstone.schema_migrations").fetchone()
    assert row == (original[0].checksum,)


def test_database_newer_than_the_code_is_refused(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    """A schema with migrations this version does not ship is not touched."""
    migrations.migrate(conn, "stepstone")
    conn.execute(
        "INSERT INTO stepstone.schema_migrations (version, name, checksum) VALUES (99, 'future', 'x')"
    )
    with pytest.raises(MigrationError, match=r"\[99\].*upgrade stepstone"):
        migrations.migrate(conn, "stepstone")


def test_two_processes_migrating_at_once_both_succeed_and_apply_once(empty_db: str) -> None:
    """Concurrent migrators queue on the advisory lock; the migration applies exactly once."""
    command = [sys.executable, "-m", "stepstone", "--database-url", empty_db, "migrate"]
    with psycopg.connect(empty_db, autocommit=True) as holder:
        # Hold the runner's lock so that both processes are certainly waiting at once.
        holder.execute("SELECT pg_advisory_lock(%s)", [migrations._lock_key("stepstone")])
        procs = [
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        deadline = time.monotonic() + 30
        while True:
            waiting = holder.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchone()
            if waiting == (2,) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert waiting == (2,)
        holder.execute("SELECT pg_advisory_unlock_all()")
        outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    reports = sorted(out for out, _ in outputs)
    assert f"applied {', '.join(map(str, ALL_VERSIONS))}" in reports[0]
    assert "applied none (already current)" in reports[1]
    with psycopg.connect(empty_db) as check:
        assert check.execute("SELECT count(*) FROM stepstone.schema_migrations").fetchone() == (
            len(ALL_VERSIONS),
        )


def test_cli_migrate_runs_as_a_command_and_as_a_module(empty_db: str) -> None:
    """`stepstone migrate` and `python -m stepstone migrate` both migrate the database."""
    bindir = sys.executable.rsplit("/", 1)[0]
    first = subprocess.run(
        [f"{bindir}/stepstone", "--database-url", empty_db, "--schema", "a", "migrate"],
        capture_output=True,
        text=True,
        check=False,
    )
    second = subprocess.run(
        [sys.executable, "-m", "stepstone", "--database-url", empty_db, "--schema", "b", "migrate"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    with psycopg.connect(empty_db, autocommit=True) as conn:
        for schema in ("a", "b"):
            assert sorted(migrations.applied_versions(conn, schema)) == ALL_VERSIONS


def test_launch_migrates_a_fresh_database(empty_db: str) -> None:
    """Runtime.launch() applies the migrations before anything else."""
    with Runtime(empty_db, schema="app_flows") as rt:
        assert rt.health_status().schema_version == ALL_VERSIONS[-1]
    with psycopg.connect(empty_db) as conn:
        found = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.schema_migrations").format(sql.Identifier("app_flows"))
        ).fetchone()
    assert found == (len(ALL_VERSIONS),)
