"""What the in-process recovery tests share: short timings and a stand-in for a crash."""

from __future__ import annotations

FAST = {
    "lease_seconds": 1.0,
    "heartbeat_interval": 0.2,
    "sweep_interval": 0.2,
    "connect_timeout": 2,
}
"""Runtime timings that make a lease expire, and a sweep find it, within about a second."""


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing is recorded for it."""
