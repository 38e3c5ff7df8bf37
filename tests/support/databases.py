"""Databases for tests: a migrated template on the test server, copied per test.

The test server is STEPSTONE_TEST_ADMIN_DSN's, which the root conftest sets to the embedded
cluster it starts for the session unless it was given (see tests/conftest.py).
"""

from __future__ import annotations

import os
import uuid

import psycopg
from psycopg import sql

from stepstone import migrations

ADMIN_ENV = "STEPSTONE_TEST_ADMIN_DSN"


def admin_dsn() -> str:
    """The superuser connection string of the server the tests use."""
    value = os.environ.get(ADMIN_ENV)
    if not value:
        raise RuntimeError(f"{ADMIN_ENV} is not set: the root conftest sets it at startup")
    return value


def dsn_for(dbname: str, admin: str | None = None) -> str:
    """The admin connection string pointed at another database."""
    params = psycopg.conninfo.conninfo_to_dict(admin or admin_dsn())
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**params)


def admin(dsn: str | None = None) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(dsn or admin_dsn(), autocommit=True)


def create_database(template: str | None = None, admin_dsn: str | None = None) -> str:
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


def drop_database(name: str, admin_dsn: str | None = None) -> None:
    with admin(admin_dsn) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def create_template(admin_dsn: str | None = None) -> str:
    """A database with stepstone's schema migrated, to copy per test."""
    name = create_database(admin_dsn=admin_dsn)
    with psycopg.connect(dsn_for(name, admin_dsn), autocommit=True) as conn:
        migrations.migrate(conn, "stepstone")
    return name
