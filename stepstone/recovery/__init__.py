"""Leases, heartbeats and resuming interrupted executions (built on runtime and persistence;
no SQL of its own)."""

from __future__ import annotations

from stepstone.recovery.heartbeat import Heartbeat
from stepstone.recovery.sweeper import Sweeper, recover_own

__all__ = ["Heartbeat", "Sweeper", "recover_own"]
