"""Checks of what callers pass with an execution, shared by `Workflow.with_options` and
`Client.enqueue`: its id, attributes, deadline and queue options (`start_options`). Each
raises UsageError naming the value at fault and what to do, before anything is written."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from stepstone.errors import UsageError
from stepstone.persistence.ids import check_storable, check_workflow_id
from stepstone.persistence.serialization import describe_type, unstorable
from stepstone.runtime.waits import MAX_WAIT_SECONDS, as_seconds

__all__ = ["MAX_KEY_LENGTH", "StartOptions", "start_options"]


@dataclass(frozen=True, slots=True)
class StartOptions:
    """Per-call options of a workflow (see `Workflow.with_options`)."""

    workflow_id: str | None = None
    timeout: float | None = None
    attributes: dict[str, Any] | None = None
    # Queue options (used by Queue.enqueue).
    priority: int = 0
    dedup_key: str | None = None
    delay: float | None = None
    partition_key: str | None = None


def start_options(
    *,
    workflow_id: object = None,
    attributes: object = None,
    timeout: object = None,
    priority: object = 0,
    dedup_key: object = None,
    delay: object = None,
    partition_key: object = None,
) -> StartOptions:
    """The options of an execution, checked (see `Workflow.with_options` for each)."""
    return StartOptions(
        workflow_id=None if workflow_id is None else check_workflow_id(workflow_id),
        attributes=None if attributes is None else _check_attributes(attributes),
        timeout=None if timeout is None else _timeout(timeout),
        priority=_priority(priority),
        dedup_key=None if dedup_key is None else _key("dedup_key", dedup_key),
        delay=None if delay is None else _delay(delay),
        partition_key=None if partition_key is None else _key("partition_key", partition_key),
    )


def _timeout(value: object) -> float:
    seconds = as_seconds(value)
    if seconds is None or not 0 < seconds <= MAX_WAIT_SECONDS:
        raise UsageError(
            f"timeout must be a number of seconds (or a timedelta) above 0 and at most "
            f"{MAX_WAIT_SECONDS:,} (100 years), got {value if seconds is None else seconds!r}"
        )
    return seconds


_PRIORITY_RANGE = (-(2**31), 2**31 - 1)
MAX_KEY_LENGTH = 255  # a dedup or partition key


def _priority(value: object) -> int:
    low, high = _PRIORITY_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(
            f"priority must be an integer from {low} to {high} (lower starts first), got {value!r}"
        )
    return value


def _key(what: str, value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_KEY_LENGTH:
        raise UsageError(
            f"{what} must be a string of 1 to {MAX_KEY_LENGTH} characters, got {value!r}"
        )
    return check_storable(value, what)


def _delay(value: object) -> float:
    seconds = as_seconds(value)
    if seconds is None or not 0 <= seconds <= MAX_WAIT_SECONDS:
        raise UsageError(
            f"delay must be a number of seconds (or a timedelta) from 0 to "
            f"{MAX_WAIT_SECONDS:,} (100 years), got {value if seconds is None else seconds!r}"
        )
    return seconds


def _check_attributes(attributes: object) -> dict[str, Any]:
    """A copy of `attributes` if it is a JSON object PostgreSQL can store; UsageError naming
    the offending key (its path, for nested values) and what to do otherwise.

    Checked here, before anything is written: values the database refuses (NaN, infinities,
    a NUL character, a lone surrogate) used to fail the start statement, which looks like a
    database outage. The copy keeps later changes to the caller's dict from bypassing it.
    """
    if not isinstance(attributes, dict):
        raise UsageError(f"attributes must be a dict with string keys, got {attributes!r}")
    for key in attributes:
        if not isinstance(key, str):
            raise UsageError(
                f"attributes must be a dict with string keys, got the key {key!r} "
                f"({describe_type(key)}) in {attributes!r}"
            )
    try:
        checked: dict[str, Any] = _json_value(attributes, "attributes", set())
    except RecursionError:
        raise UsageError(
            "attributes are nested too deeply to be stored as JSON: flatten them"
        ) from None
    return checked


def _json_value(value: object, path: str, containers: set[int]) -> Any:
    """`value` rebuilt from JSON types (tuples become lists), checked for what PostgreSQL's
    jsonb can hold; `path` names it and `containers` holds the ids of those enclosing it."""
    if isinstance(value, str):
        problem = unstorable(value)
        if problem is not None:
            raise UsageError(
                f"{path} {problem}, which PostgreSQL cannot store: remove it, or store the "
                "text encoded (base64, for instance)"
            )
        return value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        try:
            int.__repr__(value)
        except ValueError:  # more digits than Python writes (sys.set_int_max_str_digits)
            raise UsageError(
                f"{path} is an integer too large to write as JSON: store it as a string"
            ) from None
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UsageError(
                f"{path} is {value!r}, which JSON cannot hold: attributes take finite numbers; "
                f"store it as a string ({str(value)!r}) or leave the key out"
            )
        return value
    if isinstance(value, dict | list | tuple):
        if id(value) in containers:
            raise UsageError(
                f"{path} contains itself, which JSON cannot hold: pass a copy without the cycle"
            )
        containers.add(id(value))
        try:
            if isinstance(value, dict):
                return _json_object(value, path, containers)
            return [
                _json_value(item, f"{path}[{index}]", containers)
                for index, item in enumerate(value)
            ]
        finally:
            containers.discard(id(value))
    raise UsageError(
        f"{path} is of type {describe_type(value)}, which is not JSON: attributes take str, int, "
        "float, bool and None, in lists and dicts with string keys; convert it (to a string, "
        "for instance)"
    )


def _json_object(value: dict[Any, Any], path: str, containers: set[int]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise UsageError(
                f"{path} has the key {key!r} ({describe_type(key)}), but JSON object keys are "
                "strings: convert it with str()"
            )
        problem = unstorable(key)
        # A key PostgreSQL cannot store is shown escaped, so that the message itself can be.
        shown = json.dumps(key, ensure_ascii=problem is not None)
        if problem is not None:
            raise UsageError(
                f"the key {shown} of {path} {problem}, which PostgreSQL cannot store: use a "
                "key without it"
            )
        result[key] = _json_value(item, f"{path}[{shown}]", containers)
    return result
