"""Leases, heartbeats and resuming interrupted executions (built on runtime and persistence)."""

from __future__ import annotations
