"""`Heartbeat`: renews this executor's lease, one statement per interval."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stepstone._background import Loop

if TYPE_CHECKING:
    from stepstone.persistence.executors import ExecutorSession

__all__ = ["Heartbeat"]


class Heartbeat(Loop):
    """Beats `session`'s heart every `interval` seconds on a background thread."""

    def __init__(self, session: ExecutorSession, interval: float) -> None:
        super().__init__("heartbeat", interval, self._beat)
        self._session = session

    def _beat(self) -> bool:
        self._session.heartbeat()
        return False
