"""Databases for tests: a migrated template on the machine's PostgreSQL, copied per test."""

from __future__ import annotations

import os
import uuid

import psycopg
from psycopg import sql

from stepstone import migrations

ADMIN_DSN = os.environ.get(
    "STEPSTONE_TEST_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)


def dsn_for(dbname: str, admin_dsn: str = ADMIN_DSN) -> str:
    """`admin_dsn` pointed at another database."""
    params = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**params)


def admin(admin_dsn: str = ADMIN_DSN) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(admin_dsn, autocommit=True)


def create_database(template: str | None = None, admin_dsn: str = ADMIN_DSN) -> str:
    """Create a uniquely named database (from `template` if given); return its name."""
    name = f"stepstone_test_{uuid.uuid4().hex[:12]}"
    with admin(admin_dsn) as conn:
        if template is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        else:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
    return name


def drop_database(name: str, admin_dsn: str = ADMIN_DSN) -> None:
    with admin(admin_dsn) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def create_template(admin_dsn: str = ADMIN_DSN) -> str:
    """A database with stepstone's schema migrated, to copy per test."""
    name = create_database(admin_dsn=admin_dsn)
    with psycopg.connect(dsn_for(name, admin_dsn), autocommit=True) as conn:
        migrations.migrate(conn, "stepstone")
    return name
