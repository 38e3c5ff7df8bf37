"""Where the database is: the DSN given, else STEPSTONE_DATABASE_URL, else libpq's PG*
variables when PGHOST, PGDATABASE or PGSERVICE is set, else the embedded server of
`./.stepstone/` (see `embedded`).
Where a session of stepstone's own connects, when the DSN goes through a transaction pooler:
the session DSN given, else STEPSTONE_SESSION_DATABASE_URL, else nowhere else (the DSN).

No message says a password, by construction rather than by masking it afterwards:
descriptions are built from the parsed host, port, database and user; a connection string
that cannot be parsed, or a URL that libpq would split in the wrong place, is refused
without quoting any of it; and libpq's own messages about a well-formed connection string
(refused connections, failed authentication, a missing database) do not contain its
password, so driver errors are shown as they are.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from psycopg import conninfo as pg_conninfo

from stepstone.errors import ConfigurationError
from stepstone.persistence import embedded

__all__ = [
    "ENV_VAR",
    "LIBPQ_VARS",
    "SESSION_ENV_VAR",
    "Resolved",
    "describe",
    "parts",
    "resolve",
    "resolve_session",
]

ENV_VAR = "STEPSTONE_DATABASE_URL"
SESSION_ENV_VAR = "STEPSTONE_SESSION_DATABASE_URL"
LIBPQ_VARS = ("PGHOST", "PGDATABASE", "PGSERVICE")
"""libpq's variables that, when set, say where the database is (PGUSER or PGPORT alone do
not: they refine a server chosen elsewhere)."""

_URL_PREFIXES = ("postgresql://", "postgres://")  # as libpq recognizes them: case-sensitive
_ENCODING_HINT = (
    "percent-encode the special characters of the user and password (/ as %2F, @ as %40, "
    "% as %25) and any @ in the database name or parameters (%40)"
)


class Resolved(NamedTuple):
    """A connection string and where it came from (for the log and for error messages);
    `server`: the embedded server it was attached to (its user releases it when done)."""

    conninfo: str
    source: str
    server: embedded.EmbeddedServer | None = None


def resolve(dsn: str | None) -> Resolved:
    """The connection string to use and its source: the `dsn` argument, else ENV_VAR, else
    libpq's own variables when one of LIBPQ_VARS is set, else the embedded server (started
    if it is not running). ConfigurationError if the string cannot be parsed, or is a URL
    whose user or password holds an unescaped / or @ (the error quotes none of it), or if
    nothing is configured and the embedded server is not installed."""
    if dsn is not None:
        return Resolved(_checked(dsn, "the dsn argument"), "the dsn argument")
    value = os.environ.get(ENV_VAR, "")
    if value.strip():
        return Resolved(_checked(value, ENV_VAR), ENV_VAR)
    given = [name for name in LIBPQ_VARS if os.environ.get(name)]
    if given:
        return Resolved("", f"libpq's variables ({', '.join(given)})")
    if embedded.bindir() is None:
        raise ConfigurationError(
            f"no database is configured ({ENV_VAR}, PGHOST, PGDATABASE and PGSERVICE are "
            f"unset) and the embedded PostgreSQL is not installed: {embedded.EXTRA_HINT}"
        )
    server = embedded.server_for(embedded.DEFAULT_DIRECTORY)
    return Resolved(server.attach(), f"the embedded server in {server.directory}", server)


def resolve_session(session_dsn: str | None) -> str | None:
    """The direct connection string for stepstone's own sessions, if one is configured (the
    argument, else a non-empty SESSION_ENV_VAR); checked as `resolve` checks the DSN."""
    if session_dsn is not None:
        if not isinstance(session_dsn, str) or not session_dsn.strip():
            # Never quoted: it may hold a password.
            got = "an empty string" if isinstance(session_dsn, str) else type(session_dsn).__name__
            raise ConfigurationError(
                "the session DSN must be a connection string that reaches PostgreSQL directly "
                f"(not through PgBouncer), or None; got {got}"
            )
        return _checked(session_dsn, "the session DSN argument")
    value = os.environ.get(SESSION_ENV_VAR, "")
    return _checked(value, SESSION_ENV_VAR) if value.strip() else None


def _checked(value: str, source: str) -> str:
    if _misread_url(value):
        # libpq would take part of the user or password for the host, port, database or a
        # parameter, and every message naming those would show it: say nothing of the URL.
        raise ConfigurationError(
            f"the database URL from {source} holds an @ besides the one between the password "
            "and the host, or after a /: libpq would take part of the user or password for "
            f"the host, port or database. In the URL, {_ENCODING_HINT}"
        )
    try:
        pg_conninfo.conninfo_to_dict(value)
    except Exception:  # noqa: BLE001 - any parse failure gets the same password-free message
        # The parser's message may quote the string, password included: say it without it.
        raise ConfigurationError(
            "the database URL could not be parsed: write it as "
            "postgresql://user:password@host:port/dbname or as key=value pairs; in a URL, "
            f"{_ENCODING_HINT} (it came from {source})"
        ) from None
    return value


def _misread_url(value: object) -> bool:
    """Whether `value` is a URL holding an @ other than the one that ends its user and
    password, as libpq reads it.

    libpq takes the user and password to end at the first @, and to be absent if a / comes
    first. So a second @ (a password holding @, which libpq splits there and reads the rest
    as the host), or an @ after a / (a password holding /, which libpq reads as the end of
    the host and port, the rest being the database) means that the host, port, database or
    parameters it parses hold parts of the password. An @ that belongs in a database name
    or a parameter value cannot be told apart from these: it is written %40.
    """
    if not isinstance(value, str):
        return False  # not a connection string at all: the parser says so
    prefix = next((p for p in _URL_PREFIXES if value.startswith(p)), None)
    if prefix is None:
        return False
    rest = value[len(prefix) :]
    at, slash = rest.find("@"), rest.find("/")
    if at == -1:
        return False
    if slash != -1 and slash < at:
        return True
    return "@" in rest[at + 1 :]


def describe(dsn: str) -> str:
    """Host, port, database and user of `dsn` with libpq's fallbacks; never the password."""
    return " ".join(f"{key}={value}" for key, value in parts(dsn).items())


def parts(dsn: str) -> dict[str, str]:
    """Host, port, database and user of `dsn` with libpq's fallbacks; never the password."""
    params = pg_conninfo.conninfo_to_dict(dsn)

    def pick(key: str, env: str, default: str) -> str:
        return str(params.get(key) or os.environ.get(env) or default)

    user = pick("user", "PGUSER", os.environ.get("USER", "the OS user"))
    host = pick("host", "PGHOST", "the local socket")
    port = pick("port", "PGPORT", "5432")
    dbname = pick("dbname", "PGDATABASE", user)
    return {"host": host, "port": port, "dbname": dbname, "user": user}
