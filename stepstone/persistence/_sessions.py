"""Settings every pooled connection starts with.

TCP keepalives on both ends: the client notices a server that vanished without closing the
socket, and the server notices a client machine that did (its transaction is rolled back
and its locks released within about a minute). An `idle_in_transaction_session_timeout`:
a process frozen inside a transaction step (stopped, swapped out, in a debugger) cannot
hold the user's row locks for longer than that; the fence already keeps its late commit
out. Settings given in the connection string or PGOPTIONS win over these defaults.
"""

from __future__ import annotations

import os
from typing import Any

from psycopg import conninfo as pg_conninfo

__all__ = ["session_settings"]

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
