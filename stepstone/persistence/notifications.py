"""`Listener`: notifications from other processes, received as hints.

A dedicated connection LISTENs on the `stepstone` channel; the SQL functions NOTIFY it when
something an executor may care about happens elsewhere (`cancelled:<id>` when an execution
is cancelled, `due:<id>` when a waiting one is due). A notification is a hint, never the
truth: it may be late, lost while the connection is down, or about another schema's
execution of the same id; whoever acts on one checks the database first. The connection
is made to the store's session DSN when it has one (LISTEN needs a session of its own,
which a transaction pooler does not give).
"""

from __future__ import annotations

import select
import socket
import threading
from typing import TYPE_CHECKING

import psycopg

from stepstone.errors import PersistenceError
from stepstone.telemetry import EventLog

if TYPE_CHECKING:
    from collections.abc import Callable

    from stepstone.persistence.store import Store

__all__ = ["CHANNEL", "Listener"]

CHANNEL = "stepstone"

log = EventLog("stepstone")


class Listener:
    """Calls `on_notify(payload)` for each notification on CHANNEL, on a daemon thread,
    reconnecting (after `retry` seconds) when the connection is lost. Notifications sent
    while it was down are lost: once listening again it calls `on_reconnect()`, for the
    caller to look in the database for what they would have said."""

    def __init__(
        self,
        store: Store,
        on_notify: Callable[[str], None],
        retry: float = 1.0,
        *,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._on_notify = on_notify
        self._on_reconnect = on_reconnect
        self._retry = retry
        self._listened = False  # listening has begun once: a later LISTEN is a reconnect
        self._stop = threading.Event()
        self._connected = threading.Event()
        # stop() writes to this pair to end the listener's wait at once.
        self._wake_out, self._wake_in = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="stepstone-listen", daemon=True)

    def start(self, wait: float | None = None) -> None:
        """Start listening; with `wait`, until listening or `wait` seconds have passed."""
        self._thread.start()
        if wait is not None:
            self._connected.wait(wait)

    def stop(self) -> None:
        self._stop.set()
        self._wake_in.send(b"x")
        if self._thread.is_alive():
            self._thread.join()
        self._wake_in.close()
        self._wake_out.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except (psycopg.Error, PersistenceError) as exc:
                self._connected.clear()
                log.warning("listen_failed", error=str(exc).strip()[:500], retry=self._retry)
                self._stop.wait(self._retry)

    def _listen(self) -> None:
        with self._store.connect_session() as conn:
            conn.execute(b"LISTEN " + CHANNEL.encode())
            self._connected.set()
            if self._listened and self._on_reconnect is not None:
                log.info("listen_resumed")
                self._on_reconnect()
            self._listened = True
            while not self._stop.is_set():
                # Wait for the server (or for stop()) without a timeout to poll with.
                ready, _, _ = select.select([conn.fileno(), self._wake_out.fileno()], [], [])
                if conn.fileno() in ready:
                    for notify in conn.notifies(timeout=0):
                        self._deliver(notify.payload)

    def _deliver(self, payload: str) -> None:
        try:
            self._on_notify(payload)
        except Exception as exc:  # noqa: BLE001 - a hint that cannot be acted on is dropped
            log.warning("notification_failed", payload=payload[:300], error=str(exc)[:500])
