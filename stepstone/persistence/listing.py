"""Listing executions: filters, sort orders, keyset pagination with opaque cursors.

Every filter value is a bound parameter; the SQL around them is composed only from the
fixed fragments below, chosen by validated names. A page is read with a keyset condition
on the sort key and the id, so a deep page costs what the first one does.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, LiteralString

from psycopg import sql
from psycopg.types.json import Jsonb

from stepstone.errors import UsageError
from stepstone.persistence.serialization import unstorable

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

__all__ = [
    "STATUSES",
    "ExecutionFilter",
    "ExecutionPage",
    "ExecutionSummary",
    "InvalidQuery",
    "build_list_query",
    "decode_cursor",
    "encode_cursor",
]

STATUSES = ("ENQUEUED", "RUNNING", "WAITING", "SUCCEEDED", "FAILED", "CANCELLED")
MAX_LIMIT = 1000
MAX_TEXT = 10_000


class InvalidQuery(UsageError, ValueError):
    """A filter, sort order, cursor or limit that cannot be used."""


@dataclass(frozen=True, slots=True)
class ExecutionFilter:
    """Which executions to list; every field left empty matches everything.

    `workflow_id_prefix` matches ids starting with it literally (no wildcards);
    `attributes` matches executions whose attributes contain it (JSON containment).
    """

    statuses: Sequence[str] = ()
    workflow_name: str | None = None
    workflow_id_prefix: str | None = None
    executor: str | None = None
    parent_id: str | None = None
    created_after: dt.datetime | None = None
    created_before: dt.datetime | None = None
    updated_after: dt.datetime | None = None
    updated_before: dt.datetime | None = None
    attributes: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ExecutionSummary:
    """One execution as listings show it (without inputs and output). A WAITING execution
    has `waiting` (what it waits for, as in ExecutionRow) and `wake_at` (when it is due;
    None: when a message arrives)."""

    id: str
    workflow_name: str
    workflow_version: str
    status: str
    owner: str | None
    epoch: int
    parent_id: str | None
    attributes: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None
    duration: dt.timedelta | None
    recoveries: int
    error_type: str | None
    error_message: str | None
    wake_at: dt.datetime | None = None
    waiting: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ExecutionPage:
    """One page of a listing; pass `next_cursor` back for the next page (None: the last)."""

    items: list[ExecutionSummary] = field(default_factory=list)
    next_cursor: str | None = None


# sort name -> (key expressions, one per cursor value, in ORDER BY order, before the id)
_SORT_KEYS: dict[str, tuple[LiteralString, ...]] = {
    "created": ("e.created_at",),
    "updated": ("e.updated_at",),
    "duration": ("(e.finished_at - e.created_at)",),
    "name": ("e.workflow_name", "e.created_at"),
}
_KEY_KINDS: dict[str, tuple[str, ...]] = {
    "created": ("time",),
    "updated": ("time",),
    "duration": ("interval",),
    "name": ("text", "time"),
}
_COLUMNS: LiteralString = (
    "e.id, e.workflow_name, e.workflow_version, e.status, e.owner, e.epoch, e.parent_id, "
    "e.attributes, e.created_at, e.updated_at, e.finished_at, e.finished_at - e.created_at, "
    "e.recoveries, e.error->>'type', e.error->>'message', e.wake_at, e.waiting"
)


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidQuery(f"{name} must be a string, got {value!r} ({type(value).__name__})")
    if len(value) > MAX_TEXT:
        raise InvalidQuery(f"{name} is {len(value)} characters long, over the limit of {MAX_TEXT}")
    problem = unstorable(value)
    if problem is not None:
        raise InvalidQuery(f"{name} {value[:40]!r} {problem}, which no stored value can contain")
    return value


def _json_object(name: str, value: object) -> dict[str, Any]:
    """`value` if it is a JSON object PostgreSQL can store; InvalidQuery naming the problem."""
    if not isinstance(value, dict):
        raise InvalidQuery(f"{name} must be a dict to match, got {value!r}")
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        text.encode()
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise InvalidQuery(f"{name} {value!r} cannot be stored as JSON: {exc}") from None
    # json.dumps writes a NUL character as \u0000 and a backslash as \\: a NUL is a \u0000
    # behind an odd run of backslashes (the text \u0000 itself is written \\u0000).
    if re.search(r"(?<!\\)(?:\\\\)*\\u0000", text):
        raise InvalidQuery(f"{name} contain a NUL character, which no stored value can contain")
    return dict(value)


def _time(name: str, value: object) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise InvalidQuery(f"{name} must be a datetime, got {value!r} ({type(value).__name__})")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidQuery(f"{name} {value.isoformat()} has no time zone: give an aware datetime")
    return value


def _range(name: str, after: dt.datetime | None, before: dt.datetime | None) -> None:
    # Compared as instants: two datetimes sharing a tzinfo compare by wall time in Python.
    if (
        after is not None
        and before is not None
        and after.astimezone(dt.UTC) >= before.astimezone(dt.UTC)
    ):
        raise InvalidQuery(
            f"{name} range is empty: {name}_after {after.isoformat()} is not before "
            f"{name}_before {before.isoformat()}"
        )


# Each optional filter field: how its value is checked, and its condition (the field's name
# is also its parameter's name).
_CONDITIONS: tuple[tuple[str, Callable[[str, object], object], LiteralString], ...] = (
    ("workflow_name", _text, "e.workflow_name = %(workflow_name)s"),
    ("workflow_id_prefix", _text, "starts_with(e.id, %(workflow_id_prefix)s)"),
    ("executor", _text, "e.owner = %(executor)s"),
    ("parent_id", _text, "e.parent_id = %(parent_id)s"),
    ("created_after", _time, "e.created_at >= %(created_after)s"),
    ("created_before", _time, "e.created_at < %(created_before)s"),
    ("updated_after", _time, "e.updated_at >= %(updated_after)s"),
    ("updated_before", _time, "e.updated_at < %(updated_before)s"),
)


def _conditions(f: ExecutionFilter) -> tuple[list[sql.Composable], dict[str, Any]]:
    where: list[sql.Composable] = []
    params: dict[str, Any] = {}
    statuses = list(f.statuses)
    for status in statuses:
        if status not in STATUSES:
            raise InvalidQuery(f"unknown status {status!r}: use one of {', '.join(STATUSES)}")
    if len(statuses) == 1:
        # Equality (not = ANY) lets executions_status_created_idx return rows in order.
        where.append(sql.SQL("e.status = %(status)s"))
        params["status"] = statuses[0]
    elif statuses:
        where.append(sql.SQL("e.status = ANY (%(statuses)s::text[])"))
        params["statuses"] = statuses
    for name, check, condition in _CONDITIONS:
        value = getattr(f, name)
        if value is not None:
            params[name] = check(name, value)
            where.append(sql.SQL(condition))
    _range("created", f.created_after, f.created_before)
    _range("updated", f.updated_after, f.updated_before)
    if f.attributes is not None:
        params["attributes"] = Jsonb(_json_object("attributes", f.attributes))
        where.append(sql.SQL("e.attributes @> %(attributes)s"))
    return where, params


def encode_cursor(sort: str, direction: str, keys: Sequence[Any], last_id: str) -> str:
    """An opaque cursor after the row with these sort keys and id."""
    values: list[Any] = []
    for kind, key in zip(_KEY_KINDS[sort], keys, strict=True):
        if kind == "time":
            values.append(key.isoformat())
        elif kind == "interval":
            values.append(key // dt.timedelta(microseconds=1))
        else:
            values.append(key)
    payload = json.dumps(
        {"v": 1, "s": sort, "d": direction, "k": values, "i": last_id},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str, direction: str) -> tuple[list[Any], str]:
    """The sort keys and id a cursor holds; InvalidQuery if it is malformed or was made for
    another sort order."""
    shown = cursor[:40] if isinstance(cursor, str) else cursor
    bad = InvalidQuery(
        f"cursor {shown!r} is not a cursor this listing returned: pass next_cursor "
        "from the previous page unchanged, with the same sort"
    )
    # A cursor holds at most a name of MAX_TEXT characters, JSON-escaped, in base64.
    if not isinstance(cursor, str) or len(cursor) > 16 * MAX_TEXT:
        raise bad
    try:
        payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        values, last_id = payload["k"], payload["i"]
        made_for = (payload["s"], payload["d"])
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError):
        raise bad from None
    if made_for != (sort, direction):
        raise InvalidQuery(
            f"cursor was made for sort {made_for[0]!r} {made_for[1]}, not {sort!r} {direction}: "
            "start again without a cursor to change the sort"
        )
    kinds = _KEY_KINDS[sort]
    if not isinstance(values, list) or len(values) != len(kinds) or not isinstance(last_id, str):
        raise bad
    keys: list[Any] = []
    try:
        for kind, value in zip(kinds, values, strict=True):
            if kind == "time":
                keys.append(_time("cursor", dt.datetime.fromisoformat(value)))
            elif kind == "interval":
                if not isinstance(value, int) or isinstance(value, bool):
                    raise bad
                keys.append(dt.timedelta(microseconds=value))
            else:
                keys.append(_text("cursor", value))
    except (TypeError, ValueError, OverflowError, InvalidQuery):
        raise bad from None
    try:
        return keys, _text("cursor", last_id)
    except InvalidQuery:
        raise bad from None


def build_list_query(
    schema: str,
    flt: ExecutionFilter,
    sort: str,
    direction: str,
    limit: int,
    cursor: str | None,
) -> tuple[sql.Composed, dict[str, Any]]:
    """The SELECT of one page (limit + 1 rows, to tell whether another page follows)."""
    if sort not in _SORT_KEYS:
        raise InvalidQuery(f"unknown sort {sort!r}: use one of {', '.join(_SORT_KEYS)}")
    if direction not in ("asc", "desc"):
        raise InvalidQuery(f"unknown direction {direction!r}: use 'asc' or 'desc'")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidQuery(f"limit must be an int from 1 to {MAX_LIMIT}, got {limit!r}")
    where, params = _conditions(flt)
    keys = _SORT_KEYS[sort]
    if sort == "duration":
        where.append(sql.SQL("e.finished_at IS NOT NULL"))
    order_terms = [sql.SQL(k) for k in keys] + [sql.SQL("e.id")]
    if cursor is not None:
        values, last_id = decode_cursor(cursor, sort, direction)
        placeholders = []
        for n, value in enumerate(values):
            params[f"k{n}"] = value
            placeholders.append(sql.Placeholder(f"k{n}"))
        params["kid"] = last_id
        placeholders.append(sql.Placeholder("kid"))
        compare = sql.SQL("<") if direction == "desc" else sql.SQL(">")
        where.append(
            sql.SQL("({}) {} ({})").format(
                sql.SQL(", ").join(order_terms), compare, sql.SQL(", ").join(placeholders)
            )
        )
    word = sql.SQL("DESC") if direction == "desc" else sql.SQL("ASC")
    params["limit"] = limit + 1
    query = sql.SQL(
        "SELECT {columns} FROM {table} e {where} ORDER BY {order} LIMIT %(limit)s"
    ).format(
        columns=sql.SQL(_COLUMNS),
        table=sql.Identifier(schema, "executions"),
        where=sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""),
        order=sql.SQL(", ").join(sql.SQL("{} {}").format(term, word) for term in order_terms),
    )
    return query, params


def page_from_rows(
    rows: list[tuple[Any, ...]], sort: str, direction: str, limit: int
) -> ExecutionPage:
    items = [ExecutionSummary(*row) for row in rows[:limit]]
    if len(rows) <= limit:
        return ExecutionPage(items, None)
    last = items[-1]
    by_sort: dict[str, list[Any]] = {
        "created": [last.created_at],
        "updated": [last.updated_at],
        "duration": [last.duration],
        "name": [last.workflow_name, last.created_at],
    }
    keys = by_sort[sort]
    return ExecutionPage(items, encode_cursor(sort, direction, keys, last.id))
