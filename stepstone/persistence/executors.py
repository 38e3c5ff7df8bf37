"""`ExecutorSession`: this process's registration as an executor.

The session holds a dedicated connection for the life of the process. On it, a
session-level advisory lock on the executor id proves that no other live process uses the
same id (PostgreSQL releases the lock the moment the holder's connection dies), and the
heartbeat renews the executor's single row. The connection is made to the store's session
DSN when it has one: through a transaction pooler the lock would be taken on a server
connection shared with other clients, and never released when this process dies.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from stepstone.errors import ExecutorIdInUse
from stepstone.persistence._driver_errors import outage

if TYPE_CHECKING:
    from stepstone.persistence.store import Store

__all__ = ["ExecutorSession"]


class ExecutorSession:
    """Registers an executor, holds its id exclusively and beats its heart."""

    def __init__(
        self,
        store: Store,
        executor_id: str,
        *,
        hostname: str,
        pid: int,
        lease_seconds: float,
        workflows: list[tuple[str, str]],
    ) -> None:
        self._store = store
        self.executor_id = executor_id
        self._hostname = hostname
        self._pid = pid
        self._lease = lease_seconds
        self.workflows = list(workflows)
        digest = hashlib.sha256(
            f"stepstone.executor:{store.schema}:{executor_id}".encode()
        ).digest()
        self._key = int.from_bytes(digest[:8], "big", signed=True)
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._lock = threading.Lock()

    def open(self, wait: float) -> None:
        """Take the executor id (waiting up to `wait` seconds for a previous holder to go
        away) and register the executor row. ExecutorIdInUse if a live process keeps it."""
        with self._lock:
            self._open(wait)

    def _open(self, wait: float) -> None:
        conn = self._store.connect_session()
        deadline = time.monotonic() + wait
        try:
            # If this process vanishes without closing the socket (a network cut), the
            # server finds out within about 25 s and releases the id's lock.
            for setting, value in (
                ("tcp_keepalives_idle", 10),
                ("tcp_keepalives_interval", 5),
                ("tcp_keepalives_count", 3),
            ):
                conn.execute(
                    sql.SQL("SET {} = {}").format(sql.Identifier(setting), sql.Literal(value))
                )
            while True:
                row = conn.execute(
                    self._store.queries["lock_executor"], {"key": self._key}
                ).fetchone()
                if row and row[0]:
                    break
                if time.monotonic() >= deadline:
                    raise self._in_use(conn)
                time.sleep(0.2)
            conn.execute(self._store.queries["register_executor"], self._registration())
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _registration(self) -> dict[str, Any]:
        return {
            "id": self.executor_id,
            "hostname": self._hostname,
            "pid": self._pid,
            "lease": self._lease,
            "workflows": Jsonb([list(w) for w in self.workflows]),
            "lock_key": self._key,  # free, the executor is dead (a sweep tests it)
        }

    def _in_use(self, conn: psycopg.Connection[tuple[Any, ...]]) -> ExecutorIdInUse:
        row = conn.execute(
            self._store.queries["describe_executor"], {"id": self.executor_id}
        ).fetchone()
        holder = (
            f" (host {row[0]}, pid {row[1]}, last heartbeat {float(row[2]):.1f} s ago)"
            if row
            else ""
        )
        return ExecutorIdInUse(
            f"executor id {self.executor_id!r} is held by another live process{holder}: "
            "give each process its own executor_id, or stop the other one first"
        )

    def register(self, workflows: list[tuple[str, str]]) -> None:
        """Update the workflow definitions this executor declares it runs."""
        with self._lock:
            self.workflows = list(workflows)
            conn = self._connection()
            self._run(conn, "register_executor", self._registration())

    def heartbeat(self) -> None:
        """Renew the lease: one statement touching one row. Reconnects (and re-takes the
        id) if the connection was lost; PersistenceError if that fails."""
        with self._lock:
            conn = self._connection()
            self._run(conn, "heartbeat", {"id": self.executor_id})

    def close(self, *, expire: bool) -> None:
        """Give the id back; with `expire`, end the lease now so leftovers are claimable."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                if expire and not conn.closed:
                    conn.execute(self._store.queries["expire_executor"], {"id": self.executor_id})
            except psycopg.Error:
                pass  # the lease simply runs out instead
            finally:
                conn.close()

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._conn = None
            self._open(wait=0)
            conn = self._conn
        assert conn is not None  # noqa: S101 - _open sets it or raises
        return conn

    def _run(
        self, conn: psycopg.Connection[tuple[Any, ...]], name: str, params: dict[str, Any]
    ) -> None:
        try:
            conn.execute(self._store.queries[name], params)
        except psycopg.Error as exc:
            conn.close()
            action = f"{name.replace('_', ' ')} of executor {self.executor_id!r}"
            raise outage(exc, action, self._store.describe_session) from exc
