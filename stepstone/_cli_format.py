"""How the `stepstone` command prints what it read: aligned tables for people, JSON for
scripts. Pure functions from the Store's records to text; nothing here reads the database."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stepstone.persistence.recorded_errors import error_summary

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from stepstone.persistence.listing import ExecutionPage, ExecutionSummary
    from stepstone.persistence.rows import (
        Checkpoint,
        ExecutionRow,
        ExecutorRow,
        HealthStatus,
        LogRow,
        ReceivedMessage,
        SlowStep,
        StepRow,
        UnreadMessages,
        WorkflowStats,
    )

__all__ = [
    "ExecutionDetails",
    "details_json",
    "details_text",
    "executors_json",
    "executors_text",
    "health_fields",
    "health_text",
    "page_json",
    "page_text",
    "plural",
    "slowest_json",
    "slowest_text",
    "stats_json",
    "stats_text",
    "topic_text",
]

NONE = "-"
CELL_WIDTH = 60
HEALTH_FIELDS = (
    "healthy",
    "reasons",
    "warnings",
    "reachable",
    "latency_ms",
    "schema_version",
    "expected_schema_version",
    "running",
    "enqueued",
    "expired_lease",
    "unclaimable",
    "code_changed",
    "oldest_running_seconds",
    "pool",
    "error",
)


@dataclass(frozen=True, slots=True)
class ExecutionDetails:
    """Everything `executions show` prints about one execution (payloads as stored text);
    `now` is when it was read, for the time left until a waiting execution is due."""

    execution: ExecutionRow
    steps: list[StepRow]
    state: dict[str, str]
    checkpoints: list[Checkpoint]
    logs: list[LogRow]
    unread: list[UnreadMessages]
    received: list[ReceivedMessage]
    now: dt.datetime


# -- cells ---------------------------------------------------------------------------------


def moment(value: dt.datetime | None) -> str:
    """A timestamp in UTC to the second, as `2026-11-26T10:00:00Z`."""
    if value is None:
        return NONE
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def span(seconds: float | decimal.Decimal | None) -> str:
    """A duration for people: 0.004s, 12.500s, 3m07s, 2h05m, 4d03h."""
    if seconds is None:
        return NONE
    value = float(seconds)
    if value < 60:
        return f"{value:.3f}s"
    whole = int(value)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def clip(text: str | None, width: int = CELL_WIDTH) -> str:
    """`text` on one line, cut to `width` characters with an ellipsis."""
    if text is None:
        return NONE
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def error_text(error: dict[str, Any] | None) -> str | None:
    """`Type: message` of a recorded error (builtin types without their module)."""
    if not error:
        return None
    kind, message = error_summary(error)
    return f"{kind}: {message}" if message else kind


def topic_text(topic: str) -> str:
    """A topic in JSON quotes, so that the default topic shows as `""`."""
    return clip(json.dumps(topic, ensure_ascii=False))


def _instant(value: object) -> dt.datetime | None:
    """A timestamp that jsonb holds as ISO text; None if it holds none."""
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None


def plural(count: int, noun: str) -> str:
    """`1 step`, `2 steps`."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], indent: str = "") -> str:
    """Rows aligned under upper-case headers; the last column is not padded."""
    lines = [[h.upper() for h in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join(
        indent + "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


# -- JSON ----------------------------------------------------------------------------------


def _json_default(value: object) -> object:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)


def to_json(value: object) -> str:
    """JSON text; timestamps in ISO 8601, durations in seconds."""
    return json.dumps(value, default=_json_default, ensure_ascii=False, indent=2)


def _record(row: object) -> dict[str, Any]:
    assert dataclasses.is_dataclass(row)  # noqa: S101 - only the Store's records come here
    return {f.name: getattr(row, f.name) for f in dataclasses.fields(row)}


# -- executions list -----------------------------------------------------------------------


def _summary_json(item: ExecutionSummary) -> dict[str, Any]:
    fields = _record(item)
    duration = fields.pop("duration")
    fields["duration_seconds"] = duration.total_seconds() if duration is not None else None
    return fields


def _summary_error(item: ExecutionSummary) -> dict[str, Any] | None:
    if item.error_type is None and item.error_message is None:
        return None
    return {"type": item.error_type or "", "message": item.error_message or ""}


def page_json(page: ExecutionPage) -> str:
    """`{"items": [...], "next_cursor": ...}`."""
    return to_json(
        {"items": [_summary_json(i) for i in page.items], "next_cursor": page.next_cursor}
    )


def page_text(page: ExecutionPage) -> str:
    """The page as a table, then the cursor of the next page if there is one."""
    if not page.items:
        return "no executions match"
    rows = [
        [
            item.id,
            item.workflow_name,
            item.workflow_version,
            item.status,
            moment(item.created_at),
            span(item.duration.total_seconds()) if item.duration is not None else NONE,
            item.owner or NONE,
            clip(error_text(_summary_error(item))),
        ]
        for item in page.items
    ]
    headers: tuple[str, ...] = (
        "id",
        "workflow",
        "version",
        "status",
        "created",
        "duration",
        "owner",
        "error",
    )
    if any(item.status == "WAITING" for item in page.items):
        # What each waiting execution waits for and until when, before the error column.
        headers = (*headers[:-1], "waits for", "until", headers[-1])
        rows = [
            [*row[:-1], *_waiting_cells(item), row[-1]]
            for row, item in zip(rows, page.items, strict=True)
        ]
    text = table(headers, rows)
    if page.next_cursor is not None:
        text += f"\nnext cursor: {page.next_cursor}  (pass it as --cursor for the next page)"
    return text


def _waiting_cells(item: ExecutionSummary) -> list[str]:
    """The WAITS FOR and UNTIL cells: `sleep`, `recv "topic"`, `state "key" of ID`, `end of
    ID`; a time, or what makes it due."""
    if item.status != "WAITING":
        return [NONE, NONE]
    waiting = item.waiting or {}
    kind = str(waiting.get("kind", NONE))
    target = waiting.get("target")
    if kind == "recv":
        what = f"recv {topic_text(str(waiting.get('topic', '')))}"
    elif kind == "wait_state":
        what = f"state {topic_text(str(waiting.get('key', '')))} of {target}"
    elif kind == "execution":
        what = f"end of {target}"
    else:
        what = kind
    until = moment(item.wake_at) if item.wake_at is not None else _UNTIL.get(kind, NONE)
    return [what, until]


# What makes a wait with no time due.
_UNTIL = {"recv": "a message", "wait_state": "the key", "execution": "its end"}


# -- executions show -----------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(name)  # NaN and Infinity are not JSON: the text stays a string


def _embedded(text: str | None) -> Any:
    """A stored value as the JSON value its text holds (the default serializer writes JSON
    text), so that JSON output holds no JSON inside strings; text that is not JSON (a
    custom serializer's) stays the string it is."""
    if text is None:
        return None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return text


def _values(values: dict[str, str]) -> dict[str, Any]:
    return {key: _embedded(text) for key, text in values.items()}


def details_json(d: ExecutionDetails) -> str:
    """The execution, its steps, state, checkpoints and log as one JSON object; stored
    values (inputs, output, step outputs, state) embedded as JSON values."""
    execution = _record(d.execution)
    execution["inputs"] = _embedded(d.execution.inputs)
    execution["output"] = _embedded(d.execution.output)
    execution["code_changed"] = d.execution.code_changed
    steps = [_record(s) | {"output": _embedded(s.output)} for s in d.steps]
    return to_json(
        {
            "execution": execution,
            "steps": steps,
            "state": _values(d.state),
            "checkpoints": [{"seq": c.seq, "state": _values(c.state)} for c in d.checkpoints],
            "logs": [_record(entry) for entry in d.logs],
            "mailbox": {
                "unread": [_message_record(m) for m in d.unread],
                "received": [_message_record(m) for m in d.received],
            },
        }
    )


def _message_record(row: UnreadMessages | ReceivedMessage) -> dict[str, Any]:
    fields = _record(row)
    del fields["execution_id"]
    return fields


def details_text(d: ExecutionDetails) -> str:
    """The execution's fields (and what it waits for), then its steps, state, messages,
    checkpoints and log, for reading."""
    sections = [
        _execution_text(d.execution, d.now),
        _steps_text(d.steps),
        _state_text(d.state),
        _messages_text(d.unread, d.received),
        _checkpoints_text(d.checkpoints),
        _logs_text(d.logs),
    ]
    return "\n\n".join(sections)


def _execution_text(e: ExecutionRow, now: dt.datetime) -> str:
    duration = (e.finished_at - e.created_at).total_seconds() if e.finished_at else None
    fields = [
        ("workflow", f"{e.workflow_name} (version {e.workflow_version})"),
        ("status", e.status),
        *(_waiting_fields(e, now) if e.status == "WAITING" else []),
        ("owner", e.owner or NONE),
        ("epoch", str(e.epoch)),
        *(
            [("run", f"{e.run} (continued as new {plural(e.run - 1, 'time')})")]
            if e.run > 1
            else []
        ),
        ("parent", e.parent_id or NONE),
        ("attributes", json.dumps(e.attributes, ensure_ascii=False) if e.attributes else NONE),
        ("code", _code_text(e)),
        ("created", moment(e.created_at)),
        ("updated", moment(e.updated_at)),
        ("started", moment(e.started_at)),
        ("finished", moment(e.finished_at)),
        ("duration", span(duration)),
        ("inputs", e.inputs),
        ("output", e.output if e.output is not None else NONE),
        ("error", error_text(e.error) or NONE),
    ]
    lines = [f"execution {e.id}"] + [f"  {name + ':':<12}{value}" for name, value in fields]
    trace = (e.error or {}).get("traceback")
    if trace:
        lines += ["  recorded traceback:"] + [f"    {t}" for t in str(trace).rstrip().splitlines()]
    return "\n".join(lines)


_UNFINISHED = ("ENQUEUED", "RUNNING", "WAITING")


def _code_text(e: ExecutionRow) -> str:
    """The fingerprint of the code it started with, and whether its workflow version is
    registered with other code now."""
    if e.fingerprint is None:
        return "fingerprint unknown (created before fingerprints were recorded, or unregistered)"
    if e.code_changed is None:
        return f"fingerprint {e.fingerprint}"
    if not e.code_changed:
        return f"fingerprint {e.fingerprint} (the code registered now)"
    text = (
        f"fingerprint {e.fingerprint}, but version {e.workflow_version} is registered with "
        f"{e.registered_fingerprint} now: its code changed since this execution started"
    )
    if e.status in _UNFINISHED:
        text += (
            ", so its replay runs other code than the one that recorded its steps and may "
            "diverge (give changed code a new version, or let it finish on the old code)"
        )
    return text


def _waiting_fields(e: ExecutionRow, now: dt.datetime) -> list[tuple[str, str]]:
    """`waits for` (the wait, its step, since when) and `until` (when it is due)."""
    waiting = e.waiting or {}
    kind = waiting.get("kind")
    timeout = waiting.get("timeout")
    seconds = float(timeout) if isinstance(timeout, int | float) else None
    if kind == "sleep":
        what = f"a sleep of {span(seconds)}" if seconds is not None else "a sleep"
    elif kind == "recv":
        what = f"a message on topic {topic_text(str(waiting.get('topic', '')))}"
    elif kind == "wait_state":
        key = topic_text(str(waiting.get("key", "")))
        what = f"state key {key} of workflow {waiting.get('target')!r}"
    elif kind == "execution":
        what = f"the end of workflow {waiting.get('target')!r}"
    else:
        what = f"a wait of kind {kind!r}" if kind is not None else NONE
    if "seq" in waiting:
        what += f", at step {waiting['seq']} ({waiting.get('name', NONE)})"
    started = _instant(waiting.get("started_at"))
    if started is not None:
        what += f", since {moment(started)}"
    return [("waits for", what), ("until", _until_text(e, kind, now))]


# What makes a wait with no time due, in `executions show`.
_NO_TIMEOUT = {
    "recv": "a message arrives (no timeout)",
    "wait_state": "the key is committed (no timeout)",
    "execution": "the other execution ends",
}


def _until_text(e: ExecutionRow, kind: object, now: dt.datetime) -> str:
    if e.wake_at is None:
        return _NO_TIMEOUT.get(str(kind), NONE)
    left = (e.wake_at - now).total_seconds()
    text = f"{moment(e.wake_at)} ({f'in {span(left)}' if left > 0 else f'{span(-left)} ago'})"
    timeout_at = _instant((e.waiting or {}).get("timeout_at"))
    if kind == "recv" and timeout_at is not None and timeout_at == e.wake_at:
        text += ", when the receive times out unless a message arrives first"
    elif kind == "recv":
        text += ", made due by a message"
    elif kind == "wait_state" and timeout_at is not None and timeout_at == e.wake_at:
        text += ", when the wait times out unless the key is committed first"
    elif kind in ("wait_state", "execution"):
        text += ", made due by the other execution"
    if left <= 0:
        text += (
            f": due, so an executor that registers workflow {e.workflow_name!r} wakes it at "
            "its next sweep"
        )
    return text


def _steps_text(steps: list[StepRow]) -> str:
    if not steps:
        return "steps: none recorded"
    rows = [
        [
            str(s.seq),
            s.name,
            s.kind,
            str(s.attempts),
            span((s.finished_at - s.started_at).total_seconds()),
            moment(s.started_at),
            clip(f"error {error_text(s.error)}") if s.error else clip(s.output),
        ]
        for s in steps
    ]
    headers = ("seq", "name", "kind", "attempts", "duration", "started", "result")
    return f"steps ({len(steps)})\n" + table(headers, rows, indent="  ")


def _state_text(state: dict[str, str]) -> str:
    if not state:
        return "state: empty"
    return f"state ({plural(len(state), 'key')})\n" + "\n".join(
        f"  {key} = {value}" for key, value in state.items()
    )


def _messages_text(unread: list[UnreadMessages], received: list[ReceivedMessage]) -> str:
    """The mailbox's unread messages per topic, then the messages received, by step."""
    if not unread and not received:
        return "messages: none"
    if unread:
        total = sum(m.count for m in unread)
        rows = [[topic_text(m.topic), str(m.count), moment(m.oldest_sent_at)] for m in unread]
        parts = [
            f"unread messages ({total} on {plural(len(unread), 'topic')})\n"
            + table(("topic", "count", "oldest sent"), rows, indent="  ")
        ]
    else:
        parts = ["unread messages: none"]
    if received:
        rows = [
            [
                str(m.seq),
                topic_text(m.topic),
                moment(m.sent_at),
                moment(m.received_at),
                m.sender or NONE,
            ]
            for m in received
        ]
        headers = ("step", "topic", "sent", "received", "sender")
        parts.append(f"received messages ({len(received)})\n" + table(headers, rows, indent="  "))
    else:
        parts.append("received messages: none")
    return "\n".join(parts)


def _checkpoints_text(checkpoints: list[Checkpoint]) -> str:
    if not checkpoints:
        return "checkpoints: none"
    return f"checkpoints ({len(checkpoints)})\n" + "\n".join(
        f"  after {plural(c.seq, 'step')}: "
        + (", ".join(f"{key} = {value}" for key, value in c.state.items()) or "empty")
        for c in checkpoints
    )


def _logs_text(logs: list[LogRow]) -> str:
    if not logs:
        return "log: empty"
    rows = [
        [
            moment(entry.at),
            entry.event,
            entry.actor or NONE,
            str(entry.seq) if entry.seq is not None else NONE,
            clip(json.dumps(entry.details, ensure_ascii=False)) if entry.details else NONE,
        ]
        for entry in logs
    ]
    headers = ("at", "event", "actor", "seq", "details")
    return f"log ({len(logs)})\n" + table(headers, rows, indent="  ")


# -- reports -------------------------------------------------------------------------------


def _window(since: dt.datetime, until: dt.datetime) -> dict[str, str]:
    return {"since": since.isoformat(), "until": until.isoformat()}


def _stats_record(s: WorkflowStats) -> dict[str, Any]:
    return _record(s) | {"success_rate": s.success_rate}


def stats_json(stats: list[WorkflowStats], since: dt.datetime, until: dt.datetime) -> str:
    """`{"since": ..., "until": ..., "items": [per workflow, with success_rate]}`."""
    return to_json(_window(since, until) | {"items": [_stats_record(s) for s in stats]})


def stats_text(stats: list[WorkflowStats], since: dt.datetime, until: dt.datetime) -> str:
    """Per workflow: counts by outcome, success rate, duration percentiles, retries."""
    title = f"executions created from {moment(since)} to {moment(until)}"
    if not stats:
        return f"{title}: none"
    rows = [
        [
            s.workflow_name,
            str(s.count),
            str(s.succeeded),
            str(s.failed),
            str(s.cancelled),
            str(s.unfinished),
            f"{s.success_rate:.1%}" if s.success_rate is not None else NONE,
            span(s.p50_seconds),
            span(s.p95_seconds),
            span(s.p99_seconds),
            str(int(s.retries)),
        ]
        for s in stats
    ]
    headers = (
        "workflow",
        "count",
        "succeeded",
        "failed",
        "cancelled",
        "unfinished",
        "success",
        "p50",
        "p95",
        "p99",
        "retries",
    )
    return f"{title}\n" + table(headers, rows)


def slowest_json(steps: list[SlowStep], since: dt.datetime, until: dt.datetime) -> str:
    """`{"since": ..., "until": ..., "items": [slowest step first]}`."""
    items = [_record(s) | {"seconds": float(s.seconds)} for s in steps]
    return to_json(_window(since, until) | {"items": items})


def slowest_text(steps: list[SlowStep], since: dt.datetime, until: dt.datetime) -> str:
    """The slowest steps, slowest first."""
    title = f"slowest steps of executions created from {moment(since)} to {moment(until)}"
    if not steps:
        return f"{title}: none"
    rows = [
        [
            span(s.seconds),
            s.execution_id,
            s.workflow_name,
            str(s.seq),
            s.step_name,
            s.kind,
            str(s.attempts),
            "failed" if s.failed else "ok",
        ]
        for s in steps
    ]
    headers = ("duration", "execution", "workflow", "seq", "step", "kind", "attempts", "outcome")
    return f"{title}\n" + table(headers, rows)


# -- health --------------------------------------------------------------------------------


def health_fields(status: HealthStatus) -> dict[str, object]:
    """What `health --json` prints: every field of the status, with `healthy`, its
    `reasons` (empty when healthy) and `warnings` first."""
    return {name: getattr(status, name) for name in HEALTH_FIELDS}


def health_text(status: HealthStatus) -> str:
    """`health` for reading: whether it is healthy, a line per reason and per warning, then
    the values read (counts the database could not give are left out)."""
    lines = [f"healthy: {_yes(status.healthy)}"]
    lines += [f"reason: {reason}" for reason in status.reasons]
    lines += [f"warning: {warning}" for warning in status.warnings]
    lines.append(f"reachable: {_yes(status.reachable)}")
    if status.latency_ms is not None:
        lines.append(f"latency: {status.latency_ms:.1f} ms")
    found = "none, no stepstone tables" if status.schema_version is None else status.schema_version
    if status.reachable:
        lines.append(f"schema version: {found} (expected {status.expected_schema_version})")
    counts = (
        ("running", status.running),
        ("enqueued", status.enqueued),
        ("expired lease", status.expired_lease),
        ("unclaimable", status.unclaimable),
        ("code changed", status.code_changed),
    )
    lines += [f"{name}: {value}" for name, value in counts if value is not None]
    if status.running:
        lines.append(f"oldest running: {span(status.oldest_running_seconds)}")
    if status.pool:
        lines.append("pool: " + ", ".join(f"{k} {v}" for k, v in status.pool.items()))
    return "\n".join(lines)


def _yes(value: bool) -> str:
    return "yes" if value else "no"


# -- executors -----------------------------------------------------------------------------


def executors_text(rows: list[ExecutorRow]) -> str:
    """The executors as a table: a heartbeat's age, and whether the executor is alive (its
    lease current), expired (presumed dead) or stopped (it shut down)."""
    if not rows:
        return "no executors registered"
    return table(
        ["ID", "HOST", "PID", "STARTED", "HEARTBEAT", "LEASE", "RUNNING", "STATE"],
        [
            [
                r.id,
                r.hostname,
                str(r.pid),
                moment(r.started_at),
                NONE if r.heartbeat_age is None else f"{span(r.heartbeat_age)} ago",
                f"{r.lease_seconds:g}s",
                str(r.running),
                _executor_state(r),
            ]
            for r in rows
        ],
    )


def executors_json(rows: list[ExecutorRow]) -> str:
    return to_json(
        {
            "executors": [
                {
                    "id": r.id,
                    "hostname": r.hostname,
                    "pid": r.pid,
                    "started_at": r.started_at,
                    "heartbeat_age_seconds": r.heartbeat_age,
                    "lease_seconds": r.lease_seconds,
                    "running": r.running,
                    "state": _executor_state(r),
                }
                for r in rows
            ]
        }
    )


def _executor_state(row: ExecutorRow) -> str:
    if row.heartbeat_age is None:
        return "stopped"
    return "alive" if row.alive else "expired"
