"""Settings every pooled connection starts with.

TCP keepalives on both ends: the client notices a server that vanished without closing the
socket, and the server notices a client machine that did (its transaction is rolled back
and its locks released within about a minute). An `idle_in_transaction_session_timeout`:
a process frozen inside a transaction step (stopped, swapped out, in a debugger) cannot
hold the user's row locks for longer than that; the fence already keeps its late commit
out. Settings given in the connection string or PGOPTIONS win over these defaults.

Through a transaction pooler (PgBouncer with `pool_mode = transaction`) a client has no
session of its own: consecutive transactions run on whichever server connection is free,
shared with other clients. There the pool's connections send no `options` startup
parameter (PgBouncer 1.18 refuses it, and it would only reach one server connection), make
no prepared statements (one would be prepared on one server connection and looked for on
another), and a transaction step sets its idle-in-transaction timeout with `SET LOCAL`,
which ends with its transaction. The server-side keepalives toward PgBouncer are PgBouncer's
own (`tcp_keepalive`, `idle_transaction_timeout` in pgbouncer.ini).
"""

from __future__ import annotations

import os
from typing import Any

from psycopg import conninfo as pg_conninfo
from psycopg import sql

__all__ = ["begin_statement", "pooled_settings", "session_settings"]

_KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}
_SERVER_KEEPALIVES = (
    ("tcp_keepalives_idle", "30"),
    ("tcp_keepalives_interval", "10"),
    ("tcp_keepalives_count", "3"),
)


def session_settings(dsn: str, idle_in_transaction_timeout: float) -> dict[str, Any]:
    """Connection parameters to add to `dsn` (never overriding one it sets)."""
    given = pg_conninfo.conninfo_to_dict(dsn)
    extra: dict[str, Any] = {k: v for k, v in _KEEPALIVES.items() if k not in given}
    options = str(given.get("options") or os.environ.get("PGOPTIONS") or "")
    server = [(k, v) for k, v in _SERVER_KEEPALIVES if k not in options]
    if "idle_in_transaction_session_timeout" not in options:
        server.append(
            ("idle_in_transaction_session_timeout", f"{round(idle_in_transaction_timeout * 1000)}")
        )
    if server:
        added = " ".join(f"-c {key}={value}" for key, value in server)
        extra["options"] = f"{options} {added}".strip()
    return extra


def pooled_settings(dsn: str) -> dict[str, Any]:
    """Connection parameters to add to `dsn` when it goes through a transaction pooler:
    the client's keepalives (libpq's, sent to no server) and no prepared statements."""
    given = pg_conninfo.conninfo_to_dict(dsn)
    extra: dict[str, Any] = {k: v for k, v in _KEEPALIVES.items() if k not in given}
    extra["prepare_threshold"] = None
    return extra


def begin_statement(idle_in_transaction_timeout: float | None) -> bytes:
    """What starts a transaction step: BEGIN, and with a timeout (through a transaction
    pooler) a SET LOCAL of it in the same simple-protocol message (one round trip)."""
    if idle_in_transaction_timeout is None:
        return b"BEGIN"
    statement = sql.SQL("BEGIN; SET LOCAL idle_in_transaction_session_timeout = {}").format(
        sql.Literal(round(idle_in_transaction_timeout * 1000))
    )
    return statement.as_bytes(None)
