"""Numbered, append-only SQL migrations and the runner that applies them.

Each file `NNNN_name.sql` in this package is one migration. `{schema}` in a file stands for
the configured schema and is quoted as an identifier. The runner serializes concurrent
migrators with an advisory lock, applies each pending file in its own transaction together
with its record in `schema_migrations` (version, name, checksum), and refuses to go on if an
applied file's content has changed since it was applied.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from dataclasses import dataclass
from typing import LiteralString, cast

import psycopg
from psycopg import sql

from stepstone.errors import MigrationError, PersistenceError
from stepstone.telemetry import EventLog

__all__ = ["Migration", "applied_versions", "latest_version", "load_migrations", "migrate"]

log = EventLog("stepstone")

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        """sha256 of the file's text, as recorded when it is applied."""
        return hashlib.sha256(self.text.encode()).hexdigest()

    def render(self, schema: str) -> sql.Composed:
        """The file's SQL with `{schema}` replaced by the quoted schema name."""
        # The text comes from a file shipped in this package, never from input.
        text = cast(LiteralString, self.text)  # type: ignore[redundant-cast]  # mypy: LiteralString is str
        return sql.SQL(text).format(schema=sql.Identifier(schema))


def load_migrations() -> list[Migration]:
    """All migration files of this package, in version order."""
    migrations = []
    for entry in importlib.resources.files(__package__).iterdir():
        match = _FILE.match(entry.name)
        if match is None:
            continue
        migrations.append(
            Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8"))
        )
    migrations.sort(key=lambda m: m.version)
    expected = list(range(1, len(migrations) + 1))
    if [m.version for m in migrations] != expected:
        raise MigrationError(
            f"migration files must be numbered 1..{len(migrations)} without gaps or repeats, "
            f"found {[m.version for m in migrations]}"
        )
    return migrations


def latest_version() -> int:
    """The version the shipped migrations bring a schema to."""
    return load_migrations()[-1].version


def _lock_key(schema: str) -> int:
    digest = hashlib.sha256(f"stepstone.migrate:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _table(schema: str) -> sql.Composed:
    return sql.SQL("{}.schema_migrations").format(sql.Identifier(schema))


def applied_versions(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> dict[int, str]:
    """Version -> checksum of the migrations applied to `schema`; empty if none."""
    exists = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL",
        [f"{sql.Identifier(schema).as_string()}.schema_migrations"],
    ).fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute(
        sql.SQL("SELECT version, checksum FROM {}").format(_table(schema))
    ).fetchall()
    return {cast(int, version): cast(str, checksum) for version, checksum in rows}


def migrate(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> list[int]:
    """Bring `schema` up to date on an autocommit connection; return the versions applied.

    Safe to run from several processes at once: they take turns on an advisory lock and
    each migration is applied exactly once.
    """
    if not conn.autocommit:
        raise MigrationError("migrate() needs an autocommit connection")
    migrations = load_migrations()
    key = _lock_key(schema)
    try:
        conn.execute("SELECT pg_advisory_lock(%s)", [key])
        try:
            return _apply(conn, schema, migrations)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", [key])
    except psycopg.Error as exc:
        raise PersistenceError(f"migrating schema {schema!r} failed: {exc}") from exc


def _apply(
    conn: psycopg.Connection[tuple[object, ...]], schema: str, migrations: list[Migration]
) -> list[int]:
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            " version integer PRIMARY KEY,"
            " name text NOT NULL,"
            " checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        ).format(_table(schema))
    )
    applied = applied_versions(conn, schema)
    known = {m.version for m in migrations}
    unknown = sorted(set(applied) - known)
    if unknown:
        raise MigrationError(
            f"schema {schema!r} has migrations {unknown} that this version of stepstone does "
            f"not ship (it knows 1..{max(known)}): upgrade stepstone before running it here"
        )
    done = []
    for migration in migrations:
        recorded = applied.get(migration.version)
        if recorded is not None:
            if recorded != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name}.sql was changed after "
                    f"it was applied to schema {schema!r} (recorded checksum {recorded[:12]}, "
                    f"file checksum {migration.checksum[:12]}): applied migrations are "
                    "append-only; restore the file and put the change in a new migration"
                )
            continue
        with conn.transaction():
            conn.execute(migration.render(schema))
            conn.execute(
                sql.SQL("INSERT INTO {} (version, name, checksum) VALUES (%s, %s, %s)").format(
                    _table(schema)
                ),
                [migration.version, migration.name, migration.checksum],
            )
        log.info("migration_applied", schema=schema, version=migration.version, name=migration.name)
        done.append(migration.version)
    return done
