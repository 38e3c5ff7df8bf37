"""Durable waits, called from a workflow body: `sleep`, `sleep_until` and `recv`.

A wait that is not over when it is reached is recorded in one commit (the execution is
then WAITING, with no owner), and the workflow unwinds: its thread is free at once. When the
wait is due (its time has come, a message has arrived), an executor that runs the workflow
resumes it by replay, and the wait returns. A crash changes nothing: the wait is in the
database, measured by the database's clock.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from stepstone.errors import StepOutsideWorkflow, UsageError
from stepstone.persistence.ids import check_topic
from stepstone.runtime.context import _CURRENT

__all__ = ["recv", "sleep", "sleep_until"]

MAX_WAIT_SECONDS = 100 * 365 * 24 * 3600


def sleep(seconds: float | dt.timedelta) -> None:
    """Wait `seconds` (a number or a timedelta), durably: the workflow holds no thread while
    it sleeps, and a crash neither restarts nor shortens the sleep."""
    length = _seconds(seconds, "sleep()")
    _execution("sleep").wait("sleep", {}, length, None)


def sleep_until(deadline: dt.datetime) -> None:
    """Wait until `deadline` (an aware datetime), durably; a deadline already passed
    returns at once."""
    if not isinstance(deadline, dt.datetime) or deadline.utcoffset() is None:
        raise UsageError(
            f"sleep_until() needs an aware datetime (with a time zone), got {deadline!r}: "
            "use e.g. datetime.now(UTC) + timedelta(hours=1)"
        )
    _execution("sleep_until").wait("sleep", {}, None, deadline)


def recv(topic: str = "", timeout: float | dt.timedelta | None = None) -> Any:
    """The next message sent to this workflow on `topic` (see `Runtime.send`), in send
    order, waiting for it durably if none is there yet. Receiving consumes the message in
    the same transaction that records it: after any crash, a message is received once and
    never lost. With `timeout` (seconds or a timedelta), RecvTimeout is raised (and
    recorded) if no message came in that time."""
    check_topic(topic)
    limit = None if timeout is None else _seconds(timeout, "recv(timeout=...)")
    return _execution("recv").wait("recv", {"topic": topic}, limit, None)


def _execution(what: str) -> Any:
    execution = _CURRENT.get()
    if execution is None:
        raise StepOutsideWorkflow(
            f"stepstone.{what}() was called outside a workflow: waits are durable only in a "
            "workflow body (use time.sleep outside one)"
        )
    return execution


def _seconds(value: object, what: str) -> float:
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"{what} takes a finite number of seconds or a timedelta, got {value!r}")
    if not 0 <= value <= MAX_WAIT_SECONDS:
        raise UsageError(
            f"{what} takes a duration from 0 to {MAX_WAIT_SECONDS:,} seconds (100 years), "
            f"got {value!r} seconds"
        )
    return float(value)
