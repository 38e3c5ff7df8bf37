"""The `stepstone` command (also `python -m stepstone`).

Every command but `worker` works from the database alone, through the Store: it needs none
of the application's code (`worker`, in `_cli_worker`, runs the application's Runtime). Values that cannot be used are refused before anything is read or
written, with a one-line message and exit status 2; an operation that fails (an unknown
id, an execution in the wrong state, an unreachable database) gets one line and status 1
(`_cli_errors` decides which).
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import math
import re
import socket
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

from stepstone import _cli_format as fmt
from stepstone._cli_errors import (
    USAGE,
    ArgumentError,
    BadArgument,
    OperationFailed,
    error_json,
    exit_status,
)
from stepstone._cli_worker import add_worker
from stepstone._version import __version__
from stepstone.errors import InvalidWorkflowId, StepstoneError, UsageError, WorkflowNotFound
from stepstone.persistence.ids import check_topic, check_workflow_id
from stepstone.persistence.listing import MAX_LIMIT, STATUSES, ExecutionFilter
from stepstone.persistence.serialization import JsonSerializer, Serializer, unstorable
from stepstone.persistence.store import Store

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

__all__ = ["main"]

DEFAULT_SCHEMA = "stepstone"
SORTS = ("created", "updated", "duration", "name")
TIME_HINT = (
    "write ISO 8601 with a time zone (2026-11-26T10:00:00+00:00, or ...Z) "
    "or an age such as 30m, 2h, 7d"
)
MESSAGE_HINT = (
    """write JSON text, such as '{"ok": true}', 42, null, or a string in double quotes """
    """inside single ones: '"approved"'"""
)
DURATION_HINT = "write a number and a unit (s, m, h, d or w), such as 45s, 90m, 12h, 30d"
_DURATION = re.compile(r"(?:[0-9]+[smhdw])+")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_SWEEP_NOTE = (
    "it is RUNNING with no owner: an executor that registers workflow {name!r} picks it up "
    "at its next sweep"
)


class _StoredText:
    """A serializer that leaves payloads as the text stored, so that state is shown without
    the application's types. It writes no value: `send`, the one command that does, uses
    the default JSON serializer."""

    def dumps(self, value: Any) -> str:
        raise TypeError(f"the command line stores no values, got {type(value).__name__}")

    def loads(self, data: str) -> Any:
        return data


# -- entry point ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status. With --json, an error is one JSON
    object on stderr (see `_cli_errors.error_json`) instead of a line of text."""
    words = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in words[: words.index("--")] if "--" in words else "--json" in words
    parser = _parser()
    try:
        args = _merge_globals(parser, parser.parse_args(words))
    except ArgumentError as exc:
        if as_json:
            print(error_json(exc, str(exc), USAGE), file=sys.stderr)
        else:
            exc.parser.print_usage(sys.stderr)
            print(f"{exc.parser.prog}: error: {exc}", file=sys.stderr)
        return USAGE
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (BadArgument, OperationFailed, StepstoneError) as exc:
        message = re.sub(r"\s*\n\s*", " ", str(exc).strip())
        status = exit_status(exc)
        if getattr(args, "json", False):  # `worker` has no --json
            print(error_json(exc, message, status), file=sys.stderr)
        else:
            print(f"stepstone: {message}", file=sys.stderr)
        return status


class _Parser(argparse.ArgumentParser):
    """argparse, except that a usage error is raised (for `main` to print as text or JSON)
    instead of printed and exited on; subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        raise ArgumentError(self, message)


def _parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(
        prog="stepstone", description="Durable workflows in PostgreSQL."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_options(parser, "")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    migrate = commands.add_parser("migrate", help="create or upgrade stepstone's tables")
    _json_flag(migrate)
    migrate.set_defaults(handler=_migrate)
    health = commands.add_parser("health", help="check the database; exit status 1 when unhealthy")
    _json_flag(health)
    health.set_defaults(handler=_health)
    _add_executions(commands)
    _add_operations(commands)
    _add_send(commands)
    _add_reports(commands)
    add_worker(commands)
    for command in _leaves(parser):
        _global_options(
            command.add_argument_group("global options (also accepted before the command)"),
            _AFTER,
        )
    return parser


_GLOBALS: tuple[tuple[str, str, str], ...] = (
    (
        "--database-url",
        "URL",
        (
            "PostgreSQL connection string "
            "(default: STEPSTONE_DATABASE_URL, else libpq's PG* variables when PGHOST, "
            "PGDATABASE or PGSERVICE is set, else the embedded server in ./.stepstone)"
        ),
    ),
    (
        "--session-database-url",
        "URL",
        (
            "when --database-url goes through PgBouncer in transaction pooling mode: a "
            "direct connection string to the same database, for what needs a session (the "
            "migrations' lock) (default: STEPSTONE_SESSION_DATABASE_URL, else none)"
        ),
    ),
    ("--schema", "SCHEMA", f"schema holding stepstone's tables (default: {DEFAULT_SCHEMA})"),
)
_AFTER = "_after_command"
# The values are not quoted: a connection string may hold a password.
_TWICE = "{option} is given twice with different values: give it once"


def _global_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, suffix: str) -> None:
    """The options that say where the database is, before the command (`suffix` "") or
    after it (stored apart, so that `_merge_globals` can compare the two)."""
    for option, metavar, help_text in _GLOBALS:
        dest = option.removeprefix("--").replace("-", "_") + suffix
        parser.add_argument(option, action=_Once, dest=dest, metavar=metavar, help=help_text)


class _Once(argparse.Action):
    """Store an option's value; a usage error if it comes again with another value."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        previous = getattr(namespace, self.dest, None)
        if previous is not None and previous != values:
            parser.error(_TWICE.format(option=option_string))
        setattr(namespace, self.dest, values)


def _leaves(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every parser of a command that runs (`executions list`, not `executions`)."""
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subcommands:
        yield parser
    for action in subcommands:
        for child in dict.fromkeys(action.choices.values()):
            yield from _leaves(child)


def _merge_globals(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """One value per global option, wherever it was given; a usage error (exit status 2) if
    it was given before and after the command with different values."""
    for option, _, _ in _GLOBALS:
        dest = option.removeprefix("--").replace("-", "_")
        before, after = getattr(args, dest), getattr(args, dest + _AFTER, None)
        if before is not None and after is not None and before != after:
            parser.error(_TWICE.format(option=option))
        setattr(args, dest, before if before is not None else after)
    if args.schema is None:
        args.schema = DEFAULT_SCHEMA
    return args


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _add_executions(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    executions = commands.add_parser("executions", help="list executions or show one")
    sub = executions.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    listing = sub.add_parser("list", help="one page of executions, newest first")
    add = listing.add_argument
    add("--status", action="append", default=[], metavar="S", help=", ".join(STATUSES))
    add("--workflow", metavar="NAME", help="workflow name")
    add("--id-prefix", metavar="P", help="ids starting with P")
    add("--executor", metavar="E", help="owned by executor E")
    add("--parent", metavar="ID", help="children of execution ID")
    for option in ("--created-after", "--created-before", "--updated-after", "--updated-before"):
        add(option, metavar="T", help="ISO 8601 time with a zone, or an age (30m, 2h, 7d)")
    add(
        "--attribute",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="attributes contain KEY with VALUE (JSON if it parses, else a string); repeatable",
    )
    add("--sort", default="created", metavar="ORDER", help=f"{', '.join(SORTS)} (default created)")
    add("--asc", action="store_true", help="ascending (default: descending)")
    add("--limit", type=int, default=50, metavar="N", help="page size (default 50)")
    add("--cursor", metavar="C", help="the next cursor a previous page printed")
    _json_flag(listing)
    listing.set_defaults(handler=_list)
    show = sub.add_parser("show", help="one execution with its steps, state, checkpoints and log")
    show.add_argument("id", help="workflow id")
    _json_flag(show)
    show.set_defaults(handler=_show)


def _add_operations(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cancel = commands.add_parser("cancel", help="cancel a RUNNING, WAITING or ENQUEUED execution")
    cancel.add_argument("id", help="workflow id")
    _json_flag(cancel)
    cancel.set_defaults(handler=_cancel)
    resume = commands.add_parser("resume", help="run a FAILED or CANCELLED execution again")
    resume.add_argument("id", help="workflow id")
    _json_flag(resume)
    resume.set_defaults(handler=_resume)
    fork = commands.add_parser(
        "fork", help="a new execution that keeps the steps before --from-step"
    )
    fork.add_argument("id", help="workflow id of the execution to fork")
    fork.add_argument(
        "--from-step", type=int, required=True, metavar="N", help="keep steps 0..N-1, run from N"
    )
    fork.add_argument("--new-id", metavar="ID", help="id of the new execution (default: generated)")
    _json_flag(fork)
    fork.set_defaults(handler=_fork)
    purge = commands.add_parser("purge", help="delete executions that ended long ago")
    purge.add_argument(
        "--older-than", required=True, metavar="AGE", help="ended more than AGE ago: 30d, 12h, 90m"
    )
    _json_flag(purge)
    purge.set_defaults(handler=_purge)


def _add_send(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    send = commands.add_parser(
        "send", help="send a message to an execution, for its stepstone.recv on that topic"
    )
    send.add_argument("id", help="workflow id")
    send.add_argument(
        "message",
        metavar="MESSAGE",
        help="the message as JSON text: '{\"ok\": true}', '\"text\"', 42, null",
    )
    send.add_argument(
        "--topic", default="", metavar="T", help='the topic it is sent on (default: "")'
    )
    send.add_argument(
        "--idempotency-key",
        metavar="K",
        help="store the message once, however often it is sent with this key",
    )
    _json_flag(send)
    send.set_defaults(handler=_send)


def _add_reports(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stats = commands.add_parser("stats", help="per workflow: outcomes, durations, retries")
    slowest = commands.add_parser("slowest-steps", help="the slowest steps of a time window")
    slowest.add_argument("--limit", type=int, default=10, metavar="N", help="how many (default 10)")
    for parser in (stats, slowest):
        parser.add_argument(
            "--since", default="24h", metavar="T", help="executions created since T (default 24h)"
        )
        parser.add_argument("--until", metavar="T", help="... and before T (default: now)")
        parser.add_argument("--workflow", metavar="NAME", help="only this workflow")
        _json_flag(parser)
    stats.set_defaults(handler=_stats)
    slowest.set_defaults(handler=_slowest)
    executors = commands.add_parser(
        "executors", help="the registered executors, with their heartbeat age and work"
    )
    _json_flag(executors)
    executors.set_defaults(handler=_executors)


# -- the database --------------------------------------------------------------------------


def _store(args: argparse.Namespace, serializer: Serializer | None = None) -> Store:
    url: str | None = args.database_url
    session_url: str | None = args.session_database_url
    schema: str = args.schema
    return Store(
        url,
        schema=schema,
        min_size=0,
        max_size=1,
        serializer=serializer or _StoredText(),
        session_conninfo=session_url,
    )


@contextmanager
def _opened(args: argparse.Namespace, store: Store | None = None) -> Iterator[Store]:
    store = store or _store(args)
    store.open(migrate=False)
    try:
        _check_schema(store)
        yield store
    finally:
        store.close()


def _check_schema(store: Store) -> None:
    """Refuse a schema that is missing or behind, rather than fail on a missing table."""
    status = store.health_status()
    found, expected = status.schema_version, status.expected_schema_version
    if not status.reachable:
        return  # the command's first query says why
    where = f"schema {store.schema!r} on {store.describe()}"  # never the password
    if found is None:
        raise OperationFailed(
            f"found no stepstone tables in {where}: check that --database-url (or "
            "STEPSTONE_DATABASE_URL) and --schema name the database you meant; if they do, "
            f"create the tables with `stepstone migrate` (this stepstone needs version {expected})"
        )
    if found < expected:
        raise OperationFailed(
            f"{where} is at version {found}; this stepstone needs version {expected}: "
            "upgrade it with `stepstone migrate`"
        )


def _actor() -> str:
    """Who the audit log records: `cli:<user>@<host>`."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError, ImportError):
        user = ""
    return f"cli:{user or 'unknown'}@{socket.gethostname() or 'unknown'}"


# -- values --------------------------------------------------------------------------------


def _duration(option: str, text: str) -> dt.timedelta:
    """`45s`, `90m`, `12h`, `30d`, `2w` (or combined, `1h30m`) as a positive timedelta."""
    if not _DURATION.fullmatch(text):
        raise BadArgument(f"{option} {text!r} is not a duration: {DURATION_HINT}")
    try:
        total = sum(
            (
                dt.timedelta(**{_UNITS[unit]: int(n)})
                for n, unit in re.findall(r"([0-9]+)([smhdw])", text)
            ),
            dt.timedelta(),
        )
    except (OverflowError, ValueError):  # ValueError: more digits than int() takes
        raise BadArgument(
            f"{option} {text[:40]!r} is too long a duration: {DURATION_HINT}"
        ) from None
    if total <= dt.timedelta(0):
        raise BadArgument(f"{option} {text!r} is zero: {DURATION_HINT}")
    return total


def _moment(option: str, text: str | None, now: dt.datetime) -> dt.datetime | None:
    """An ISO 8601 time with a zone, or an age (`30m`: 30 minutes before `now`)."""
    if text is None:
        return None
    if _DURATION.fullmatch(text):
        try:
            return now - _duration(option, text)
        except OverflowError:
            raise BadArgument(f"{option} {text!r} reaches before year 1: {TIME_HINT}") from None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise BadArgument(f"{option} {text!r} is not a time: {TIME_HINT}") from None
    if value.utcoffset() is None:
        raise BadArgument(f"{option} {text!r} has no time zone: {TIME_HINT}")
    return value


def _statuses(values: list[str]) -> list[str]:
    statuses = []
    for value in values:
        status = value.strip().upper()
        if status not in STATUSES:
            raise BadArgument(
                f"--status {value!r} is not a status: write one of {', '.join(STATUSES)}"
            )
        statuses.append(status)
    return statuses


def _reject_constant(name: str) -> Any:
    raise ValueError(name)  # NaN and Infinity are not JSON: the value stays a string


def _json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:40]} is too large for a float")
    return value


def _message(text: str) -> Any:
    """MESSAGE: the JSON value it holds (finite numbers only: no NaN or Infinity)."""
    try:
        return json.loads(text, parse_constant=_json_constant, parse_float=_finite)
    except RecursionError:
        raise BadArgument(f"MESSAGE {text[:40]!r}... is nested too deeply") from None
    except ValueError as exc:
        raise BadArgument(f"MESSAGE {text[:40]!r} is not JSON ({exc}): {MESSAGE_HINT}") from None


def _target(value: str) -> str:
    if not value:
        raise BadArgument(
            "ID is empty: give the workflow id of the execution to send to (find ids with "
            "`stepstone executions list`)"
        )
    try:
        return check_workflow_id(value)
    except InvalidWorkflowId as exc:
        raise BadArgument(f"ID: {exc}") from None


def _topic(value: str) -> str:
    try:
        return check_topic(value)
    except UsageError as exc:
        raise BadArgument(f"--topic: {exc}") from None


def _idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not value:
        raise BadArgument("--idempotency-key is empty: give a key, or leave the option out")
    problem = unstorable(value)
    if problem is not None:
        raise BadArgument(
            f"--idempotency-key {value[:40]!r} {problem}, which PostgreSQL cannot store"
        )
    return value


def _attributes(values: list[str]) -> dict[str, Any] | None:
    """`KEY=VALUE` pairs as the object attributes must contain."""
    if not values:
        return None
    found: dict[str, Any] = {}
    for item in values:
        key, equals, raw = item.partition("=")
        if not equals or not key:
            raise BadArgument(
                f"--attribute {item!r} is not KEY=VALUE: write, for instance, "
                "--attribute tenant=acme or --attribute priority=3 (VALUE is read as JSON "
                "if it parses, else as a string)"
            )
        if key in found:
            raise BadArgument(f"--attribute {key!r} is given twice: give each key once")
        try:
            found[key] = json.loads(raw, parse_constant=_reject_constant)
        except ValueError:
            found[key] = raw
    return found


def _choice(option: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise BadArgument(f"{option} {value!r} is not known: write one of {', '.join(allowed)}")
    return value


def _limit(value: int, most: int) -> int:
    if not 1 <= value <= most:
        raise BadArgument(f"--limit {value} is out of range: write a number from 1 to {most}")
    return value


def _new_id(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_workflow_id(value)
    except InvalidWorkflowId as exc:
        raise BadArgument(f"--new-id: {exc}") from None


def _filter(args: argparse.Namespace) -> ExecutionFilter:
    now = dt.datetime.now(dt.UTC)
    return ExecutionFilter(
        statuses=_statuses(args.status),
        workflow_name=args.workflow,
        workflow_id_prefix=args.id_prefix,
        executor=args.executor,
        parent_id=args.parent,
        created_after=_moment("--created-after", args.created_after, now),
        created_before=_moment("--created-before", args.created_before, now),
        updated_after=_moment("--updated-after", args.updated_after, now),
        updated_before=_moment("--updated-before", args.updated_before, now),
        attributes=_attributes(args.attribute),
    )


def _window(args: argparse.Namespace) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    since = _moment("--since", args.since, now)
    until = _moment("--until", args.until, now) or now
    assert since is not None  # noqa: S101 - --since has a default
    if since >= until:
        raise BadArgument(
            f"--since {args.since!r} is not before --until {args.until or 'now'!r}: "
            "give a window that starts before it ends"
        )
    return since, until


# -- commands ------------------------------------------------------------------------------


def _report(args: argparse.Namespace, record: dict[str, Any], *lines: str) -> int:
    """Print what an operation did: `record` as a JSON object with --json, else `lines`."""
    print(fmt.to_json(record) if args.json else "\n".join(lines))
    return 0


def _migrate(args: argparse.Namespace) -> int:
    store = _store(args)
    applied = store.migrate()
    done = ", ".join(str(v) for v in applied) if applied else "none (already current)"
    return _report(
        args,
        {"schema": store.schema, "database": store.describe(), "applied": applied},
        f"schema {store.schema!r} on {store.describe()}: applied {done}",
    )


def _health(args: argparse.Namespace) -> int:
    status = _store(args).health_status()
    print(fmt.to_json(fmt.health_fields(status)) if args.json else fmt.health_text(status))
    return 0 if status.healthy else 1


def _list(args: argparse.Namespace) -> int:
    flt = _filter(args)
    sort = _choice("--sort", args.sort, SORTS)
    limit = _limit(args.limit, MAX_LIMIT)
    direction = "asc" if args.asc else "desc"
    with _opened(args) as store:
        page = store.list_executions(
            flt, sort=sort, direction=direction, limit=limit, cursor=args.cursor
        )
    print(fmt.page_json(page) if args.json else fmt.page_text(page))
    return 0


def _show(args: argparse.Namespace) -> int:
    execution_id: str = args.id
    with _opened(args) as store:
        row = store.get_execution(execution_id)
        if row is None:
            raise WorkflowNotFound(
                f"no execution has workflow id {execution_id!r}: "
                "find ids with `stepstone executions list`"
            )
        details = fmt.ExecutionDetails(
            execution=row,
            steps=store.list_steps(execution_id),
            state=store.get_state(execution_id),
            checkpoints=store.list_checkpoints(execution_id),
            logs=store.list_logs(execution_id),
            unread=store.unread_messages(execution_id),
            received=store.received_messages(execution_id),
            now=dt.datetime.now(dt.UTC),
        )
    print(fmt.details_json(details) if args.json else fmt.details_text(details))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    execution_id: str = args.id
    with _opened(args) as store:
        previous = store.cancel_execution(execution_id, _actor())
    if previous == "WAITING":
        line = (
            f"cancelled {execution_id!r} (it was WAITING): nothing wakes it any more, and "
            "messages to it are refused"
        )
    else:
        line = (
            f"cancelled {execution_id!r} (it was {previous}); an executor running it stops at "
            "its next step boundary"
        )
    record = {"id": execution_id, "previous_status": previous, "status": "CANCELLED"}
    return _report(args, record, line)


def _resume(args: argparse.Namespace) -> int:
    execution_id: str = args.id
    with _opened(args) as store:
        previous = store.resume_execution(execution_id, _actor())
        row = store.get_execution(execution_id)
    name = row.workflow_name if row is not None else "?"
    record = {
        "id": execution_id,
        "previous_status": previous,
        "status": row.status if row is not None else None,
        "workflow": name,
    }
    return _report(
        args,
        record,
        f"resumed {execution_id!r} (it was {previous}) from its last recorded step",
        _SWEEP_NOTE.format(name=name),
    )


def _fork(args: argparse.Namespace) -> int:
    source: str = args.id
    step: int = args.from_step
    new_id = _new_id(args.new_id)
    with _opened(args) as store:
        forked = store.fork_execution(source, step, _actor(), new_id=new_id)
        row = store.get_execution(forked)
    name = row.workflow_name if row is not None else "?"
    kept = {0: "no step is kept", 1: "its step 0 is kept"}.get(
        step, f"its steps 0 to {step - 1} are kept"
    )
    record = {
        "id": forked,
        "source_id": source,
        "from_step": step,
        "status": row.status if row is not None else None,
        "workflow": name,
    }
    return _report(
        args,
        record,
        f"forked {source!r} from step {step} ({kept})",
        f"new execution: {forked}",
        _SWEEP_NOTE.format(name=name),
    )


def _send(args: argparse.Namespace) -> int:
    execution_id = _target(args.id)
    topic = _topic(args.topic)
    key = _idempotency_key(args.idempotency_key)
    value = _message(args.message)
    # The value is serialized as Runtime.send serializes it: a JSON object that looks like
    # one of the serializer's tagged values stays the object it is.
    store = _store(args, JsonSerializer())
    shown = fmt.topic_text(topic)
    payload = store.encode(value, f"the message to {execution_id!r} on topic {shown}")
    with _opened(args, store):
        try:
            status, stored = store.send(
                execution_id, topic, payload, idempotency_key=key, sender=_actor()
            )
        except WorkflowNotFound as exc:
            raise WorkflowNotFound(f"{exc}; find ids with `stepstone executions list`") from None
    if stored:
        line = (
            f"stored the message for {execution_id!r} on topic {shown} (it is {status}); "
            "its receives on that topic take messages in the order they were sent"
        )
    else:
        line = (
            f"already sent with that key: {execution_id!r} has a message with idempotency "
            f"key {key!r}, so nothing was stored"
        )
    record = {
        "id": execution_id,
        "topic": topic,
        "stored": stored,
        "status": status,
        "idempotency_key": key,
    }
    return _report(args, record, line)


def _purge(args: argparse.Namespace) -> int:
    older_than = _duration("--older-than", args.older_than)
    with _opened(args) as store:
        deleted = store.purge(older_than, _actor())
    return _report(
        args,
        {"purged": deleted, "older_than_seconds": older_than.total_seconds()},
        f"purged {fmt.plural(deleted, 'execution')} that ended more than {args.older_than} "
        "ago, with their steps, state, checkpoints and log",
    )


def _stats(args: argparse.Namespace) -> int:
    since, until = _window(args)
    with _opened(args) as store:
        stats = store.workflow_stats(since, until, args.workflow)
    text = fmt.stats_json if args.json else fmt.stats_text
    print(text(stats, since, until))
    return 0


def _slowest(args: argparse.Namespace) -> int:
    since, until = _window(args)
    limit = _limit(args.limit, 1000)
    with _opened(args) as store:
        steps = store.slowest_steps(since, until, limit=limit, workflow_name=args.workflow)
    text = fmt.slowest_json if args.json else fmt.slowest_text
    print(text(steps, since, until))
    return 0


def _executors(args: argparse.Namespace) -> int:
    with _opened(args) as store:
        rows = store.list_executors()
    print(fmt.executors_json(rows) if args.json else fmt.executors_text(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
