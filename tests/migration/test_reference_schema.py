"""The reference schema (migrations/schema.sql) and the migration chain produce the same
database, compared from the catalogs."""

from __future__ import annotations

import difflib
import importlib.resources
from typing import TYPE_CHECKING

import psycopg
import pytest

from stepstone import migrations
from stepstone.migrations import Migration
from tests.support import databases

if TYPE_CHECKING:
    from collections.abc import Iterator

SCHEMA = "stepstone"
Connection = psycopg.Connection[tuple[object, ...]]

# Each query lists one kind of object of the schema as rows of text, in a stable order.
# schema_migrations belongs to the runner, not to the schema the files describe.
_DESCRIBE = {
    "relation": """
        SELECT c.relname, c.relkind::text
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %(schema)s
           AND c.relname NOT IN ('schema_migrations', 'schema_migrations_pkey')
         ORDER BY 1""",
    "column": """
        SELECT c.relname || '.' || a.attname, format_type(a.atttypid, a.atttypmod),
               CASE WHEN a.attnotnull THEN 'NOT NULL' ELSE 'NULL' END,
               coalesce(pg_get_expr(d.adbin, d.adrelid), '(no default)'),
               'identity ' || coalesce(nullif(a.attidentity::text, ''), '-'),
               'generated ' || coalesce(nullif(a.attgenerated::text, ''), '-'),
               'position ' || row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum)
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'v', 'm', 'p')
           AND c.relname <> 'schema_migrations' AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY c.relname, a.attnum""",
    "constraint": """
        SELECT c.relname || '.' || k.conname, pg_get_constraintdef(k.oid)
          FROM pg_constraint k
          JOIN pg_class c ON c.oid = k.conrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %(schema)s AND c.relname <> 'schema_migrations'
         ORDER BY 1""",
    "index": """
        SELECT tablename || '.' || indexname, indexdef FROM pg_indexes
         WHERE schemaname = %(schema)s AND tablename <> 'schema_migrations'
         ORDER BY 1""",
    "view": """
        SELECT viewname, pg_get_viewdef(format('%%I.%%I', schemaname, viewname)::regclass)
          FROM pg_views WHERE schemaname = %(schema)s
         ORDER BY 1""",
    "trigger": """
        SELECT c.relname || '.' || t.tgname, pg_get_triggerdef(t.oid)
          FROM pg_trigger t
          JOIN pg_class c ON c.oid = t.tgrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %(schema)s AND NOT t.tgisinternal
         ORDER BY 1""",
    "function": """
        SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
               pg_get_function_result(p.oid), pg_get_functiondef(p.oid)
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = %(schema)s
         ORDER BY 1""",
}


def describe(conn: Connection, schema: str = SCHEMA) -> dict[str, list[str]]:
    """The schema's objects, "kind name" -> the lines of text that define it."""
    objects: dict[str, list[str]] = {}
    for kind, query in _DESCRIBE.items():
        for row in conn.execute(query.encode(), {"schema": schema}).fetchall():
            name, *rest = (str(value) for value in row)
            objects[f"{kind} {name}"] = [line for value in rest for line in value.splitlines()]
    return objects


def differences(expected: dict[str, list[str]], found: dict[str, list[str]]) -> str:
    """What differs between two descriptions, object by object, as text to read."""
    report = []
    for key in sorted(expected.keys() | found.keys()):
        if key not in found:
            report.append(f"{key}: only in schema.sql")
        elif key not in expected:
            report.append(f"{key}: only in the migration chain")
        elif expected[key] != found[key]:
            diff = difflib.unified_diff(
                expected[key], found[key], "schema.sql", "migration chain", n=2, lineterm=""
            )
            report.append(f"{key}:\n" + "\n".join(f"    {line}" for line in diff))
    return "\n".join(report)


def reference_schema() -> Migration:
    """schema.sql, wrapped so that it renders like a migration."""
    text = (
        importlib.resources.files(migrations.__name__)
        .joinpath("schema.sql")
        .read_text(encoding="utf-8")
    )
    return Migration(0, "schema", text)


@pytest.fixture
def reference_db() -> Iterator[str]:
    """A fresh database with schema.sql applied (and nothing else)."""
    name = databases.create_database()
    dsn = databases.dsn_for(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(b"CREATE SCHEMA stepstone")
        conn.execute(reference_schema().render(SCHEMA))
    yield dsn
    databases.drop_database(name)


@pytest.fixture
def chain(empty_db: str) -> Iterator[Connection]:
    """A fresh database migrated through every numbered migration."""
    with psycopg.connect(empty_db, autocommit=True) as conn:
        migrations.migrate(conn, SCHEMA)
        yield conn


def test_reference_schema_matches_the_migration_chain(chain: Connection, reference_db: str) -> None:
    """schema.sql and the numbered migrations applied in order create the same tables,
    columns, constraints, indexes, views and functions (the diff shows any difference)."""
    with psycopg.connect(reference_db) as conn:
        reference = describe(conn)
    migrated = describe(chain)
    claim = "function claim_v1(p_owner text, p_ids text[], p_reason text, p_only_owned boolean)"
    assert claim in migrated  # the description sees the objects
    report = differences(reference, migrated)
    assert reference == migrated, f"schema.sql differs from the migration chain:\n{report}"


@pytest.mark.parametrize(
    "change",
    [
        "ALTER TABLE stepstone.executions ALTER COLUMN epoch SET DEFAULT 1",
        "ALTER TABLE stepstone.steps ALTER COLUMN finished_at DROP NOT NULL",
        "ALTER TABLE stepstone.executors ALTER COLUMN hostname TYPE varchar(200)",
        "ALTER TABLE stepstone.logs ADD CONSTRAINT positive CHECK (seq >= 0)",
        "CREATE INDEX extra_idx ON stepstone.logs (at)",
        (
            "DO $$ BEGIN EXECUTE 'CREATE OR REPLACE VIEW stepstone.step_metrics AS ' || replace("
            "pg_get_viewdef('stepstone.step_metrics'::regclass), 'attempts - 1', 'attempts - 2'); "
            "END $$"
        ),
        (
            "CREATE OR REPLACE FUNCTION stepstone.lock_executions_v1(p_ids text[]) RETURNS void "
            "LANGUAGE sql AS 'SELECT NULL'"
        ),
        "DROP FUNCTION stepstone.release_v1(text, text, bigint, text, boolean)",
    ],
)
def test_the_comparison_sees_each_kind_of_difference(chain: Connection, change: str) -> None:
    """A changed default, nullability, type, constraint, index, view or function body, or a
    missing function, changes the description the comparison uses."""
    before = describe(chain)
    with chain.transaction(force_rollback=True):
        chain.execute(change.encode())
        assert describe(chain) != before


def test_the_runner_ignores_the_reference_schema() -> None:
    """schema.sql ships beside the migrations but is not one of them."""
    files = {entry.name for entry in importlib.resources.files(migrations.__name__).iterdir()}
    assert "schema.sql" in files
    loaded = [f"{m.version:04d}_{m.name}.sql" for m in migrations.load_migrations()]
    assert loaded == sorted(name for name in files if name[:4].isdigit())
    assert "schema.sql" not in loaded
