"""Durable waits, called from a workflow body: `sleep`, `sleep_until`, `recv` and
`wait_state`, and their async twins (`sleep_async`...), awaited in an async workflow's
body: the same checks and the same plans, driven on the async pool.

A wait that is not over when it is reached is recorded in one commit (the execution is
then WAITING, with no owner), and the workflow unwinds: its thread is free at once. When the
wait is due (its time has come, a message has arrived, the state key was committed), an
executor that runs the workflow
resumes it by replay, and the wait returns. A crash changes nothing: the wait is in the
database, measured by the database's clock.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from stepstone.errors import StepOutsideWorkflow, UsageError
from stepstone.persistence.ids import check_state_key, check_topic, check_workflow_id
from stepstone.runtime.context import _CURRENT

__all__ = [
    "as_seconds",
    "check_state_wait",
    "recv",
    "recv_async",
    "sleep",
    "sleep_async",
    "sleep_until",
    "sleep_until_async",
    "wait_state",
    "wait_state_async",
]

MAX_WAIT_SECONDS = 100 * 365 * 24 * 3600


def sleep(seconds: float | dt.timedelta) -> None:
    """Wait `seconds` (a number or a timedelta), durably: the workflow holds no thread while
    it sleeps, and a crash neither restarts nor shortens the sleep."""
    length = _seconds(seconds, "sleep()")
    _execution("sleep").wait("sleep", {}, length, None)


def sleep_until(deadline: dt.datetime) -> None:
    """Wait until `deadline` (an aware datetime), durably; a deadline already passed
    returns at once."""
    _check_deadline(deadline, "sleep_until()")
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


def wait_state(workflow_id: str, key: str, timeout: float | dt.timedelta | None = None) -> Any:
    """The value of state key `key` of execution `workflow_id` once it is committed,
    waiting for it durably if it is not yet. With `timeout` (seconds or a timedelta),
    StateTimeout is raised if the key did not come in that time; StateNotSet if the
    execution ended without it; WorkflowNotFound if there is none. Each is recorded: a
    replay raises it again at the same wait."""
    target, key, limit = check_state_wait(workflow_id, key, timeout)
    return _execution("wait_state").wait_state(target, key, limit)


async def sleep_async(seconds: float | dt.timedelta) -> None:
    """`sleep`, awaited in an async workflow: the task is free at once, and the workflow
    holds no task while it sleeps."""
    length = _seconds(seconds, "sleep_async()")
    await _execution("sleep", awaited=True).wait_async("sleep", {}, length, None)


async def sleep_until_async(deadline: dt.datetime) -> None:
    """`sleep_until`, awaited in an async workflow."""
    _check_deadline(deadline, "sleep_until_async()")
    await _execution("sleep_until", awaited=True).wait_async("sleep", {}, None, deadline)


async def recv_async(topic: str = "", timeout: float | dt.timedelta | None = None) -> Any:
    """`recv`, awaited in an async workflow (messages come from `Runtime.send_async`, or
    any send)."""
    check_topic(topic)
    limit = None if timeout is None else _seconds(timeout, "recv_async(timeout=...)")
    return await _execution("recv", awaited=True).wait_async("recv", {"topic": topic}, limit, None)


async def wait_state_async(
    workflow_id: str, key: str, timeout: float | dt.timedelta | None = None
) -> Any:
    """`wait_state`, awaited in an async workflow."""
    target, key, limit = check_state_wait(workflow_id, key, timeout)
    return await _execution("wait_state", awaited=True).wait_state_async(target, key, limit)


def check_state_wait(
    workflow_id: object, key: object, timeout: float | dt.timedelta | None
) -> tuple[str, str, float | None]:
    """The arguments of a wait for state, checked: (workflow id, key, timeout in seconds)."""
    limit = None if timeout is None else _seconds(timeout, "wait_state(timeout=...)")
    return check_workflow_id(workflow_id), check_state_key(key), limit


def _check_deadline(deadline: object, what: str) -> None:
    if not isinstance(deadline, dt.datetime) or deadline.utcoffset() is None:
        raise UsageError(
            f"{what} needs an aware datetime (with a time zone), got {deadline!r}: "
            "use e.g. datetime.now(UTC) + timedelta(hours=1)"
        )


def _execution(what: str, *, awaited: bool = False) -> Any:
    """The execution whose body calls `stepstone.<what>()` (or its `_async` twin when
    `awaited`): StepOutsideWorkflow outside one, UsageError in a workflow of the other
    flavour (a sync wait would block an async workflow's event loop; an async one cannot
    run in a sync workflow's thread)."""
    called = f"{what}_async" if awaited else what
    execution = _CURRENT.get()
    if execution is None:
        instead = "rt.wait_state()" if what == "wait_state" else "time.sleep"
        if awaited and what != "wait_state":
            instead = "asyncio.sleep"
        raise StepOutsideWorkflow(
            f"stepstone.{called}() was called outside a workflow: waits are durable only in a "
            f"workflow body (use {instead} outside one)"
        )
    if execution.workflow.is_async and not awaited:
        raise UsageError(
            f"stepstone.{what}() was called from async workflow {execution.workflow.name!r} "
            f"({execution.workflow_id!r}): it would block the event loop; use "
            f"`await stepstone.{what}_async(...)` instead"
        )
    if awaited and not execution.workflow.is_async:
        raise UsageError(
            f"stepstone.{called}() was awaited in workflow {execution.workflow.name!r} "
            f"({execution.workflow_id!r}), which is not async: call stepstone.{what}() there, "
            "or make the workflow `async def`"
        )
    return execution


def as_seconds(value: object) -> float | None:
    """`value` (a number of seconds or a timedelta) in seconds; None unless it is a finite
    number (a bool is not)."""
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _seconds(value: object, what: str) -> float:
    seconds = as_seconds(value)
    if seconds is None:
        raise UsageError(f"{what} takes a finite number of seconds or a timedelta, got {value!r}")
    if not 0 <= seconds <= MAX_WAIT_SECONDS:
        raise UsageError(
            f"{what} takes a duration from 0 to {MAX_WAIT_SECONDS:,} seconds (100 years), "
            f"got {seconds!r} seconds"
        )
    return seconds
