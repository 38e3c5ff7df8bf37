"""`Heartbeat`: renews this executor's lease, one statement per interval."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stepstone._background import Loop

if TYPE_CHECKING:
    from stepstone.persistence.executors import ExecutorSession

__all__ = ["Heartbeat"]


class Heartbeat:
    """Beats `session`'s heart every `interval` seconds on a background thread."""

    def __init__(self, session: ExecutorSession, interval: float) -> None:
        self._session = session
        self._loop = Loop("heartbeat", interval, self._beat)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def _beat(self) -> bool:
        self._session.heartbeat()
        return False
