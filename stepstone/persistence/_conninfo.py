"""Where the database is: the DSN given, else STEPSTONE_DATABASE_URL, else libpq's PG* defaults."""

from __future__ import annotations

import os

from psycopg import conninfo as pg_conninfo

from stepstone.errors import ConfigurationError

__all__ = ["describe", "redact", "resolve"]

ENV_VAR = "STEPSTONE_DATABASE_URL"


def resolve(dsn: str | None) -> str:
    """The connection string to use; raise ConfigurationError if it cannot be parsed."""
    value = dsn if dsn is not None else os.environ.get(ENV_VAR, "")
    try:
        pg_conninfo.conninfo_to_dict(value)
    except Exception:  # noqa: BLE001 - any parse failure gets the same password-free message
        # The parser's message may quote the string, password included: say it without it.
        raise ConfigurationError(
            "the database URL could not be parsed: write it as "
            "postgresql://user:password@host:port/dbname or as key=value pairs "
            f"(it came from {'the dsn argument' if dsn is not None else ENV_VAR})"
        ) from None
    return value


def describe(dsn: str) -> str:
    """Host, port, database and user of `dsn` with libpq's fallbacks; never the password."""
    params = pg_conninfo.conninfo_to_dict(dsn)

    def pick(key: str, env: str, default: str) -> str:
        return str(params.get(key) or os.environ.get(env) or default)

    user = pick("user", "PGUSER", os.environ.get("USER", "the OS user"))
    host = pick("host", "PGHOST", "the local socket")
    port = pick("port", "PGPORT", "5432")
    dbname = pick("dbname", "PGDATABASE", user)
    return f"host={host} port={port} dbname={dbname} user={user}"


def redact(text: str, dsn: str) -> str:
    """`text` with the password of `dsn`, if it has one, replaced by ***."""
    password = pg_conninfo.conninfo_to_dict(dsn).get("password") or os.environ.get("PGPASSWORD")
    return text.replace(str(password), "***") if password else text
