"""The `stepstone` command (also `python -m stepstone`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from stepstone.errors import StepstoneError
from stepstone.persistence.store import Store

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stepstone", description="Durable workflows in PostgreSQL."
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="PostgreSQL connection string "
        "(default: STEPSTONE_DATABASE_URL, else libpq's PG* variables)",
    )
    parser.add_argument(
        "--schema",
        default="stepstone",
        help="schema holding stepstone's tables (default: stepstone)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="create or upgrade stepstone's tables")
    health = commands.add_parser("health", help="check the database; exit status 1 when unhealthy")
    health.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        store = Store(args.database_url, schema=args.schema, min_size=0, max_size=1)
        if args.command == "migrate":
            applied = store.migrate()
            done = ", ".join(str(v) for v in applied) if applied else "none (already current)"
            print(f"schema {args.schema!r} on {store.describe()}: applied {done}")
            return 0
        status = store.health_status()
        if args.json:
            print(json.dumps(_health_fields(status)))
        else:
            for key, value in _health_fields(status).items():
                print(f"{key}: {value}")
        return 0 if status.healthy else 1
    except StepstoneError as exc:
        print(f"stepstone: {exc}", file=sys.stderr)
        return 2


def _health_fields(status: object) -> dict[str, object]:
    fields = (
        "healthy",
        "reachable",
        "latency_ms",
        "schema_version",
        "expected_schema_version",
        "running",
        "enqueued",
        "expired_lease",
        "unclaimable",
        "oldest_running_seconds",
        "pool",
        "error",
    )
    return {name: getattr(status, name) for name in fields}


if __name__ == "__main__":
    raise SystemExit(main())
