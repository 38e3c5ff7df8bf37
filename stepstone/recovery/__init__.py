"""Leases, heartbeats and resuming interrupted executions: built on persistence and on a
protocol of its own (`Resumer`) that the runtime's engine satisfies; no SQL of its own."""

from __future__ import annotations

from stepstone.recovery.heartbeat import Heartbeat
from stepstone.recovery.sweeper import Resumer, Sweeper, recover_own

__all__ = ["Heartbeat", "Resumer", "Sweeper", "recover_own"]
