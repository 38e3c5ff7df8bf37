"""A worker process for crash tests: runs one order workflow, killing itself at a point.

usage: python -m tests.crash.worker DSN EXECUTOR_ID WORKFLOW_ID KILL_AT NOTES_FILE
"""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from stepstone import Runtime

if TYPE_CHECKING:
    import psycopg

dsn, executor_id, workflow_id, kill_at, notes_file = sys.argv[1:6]
rt = Runtime(dsn, executor_id=executor_id)


def die_at(point: str) -> None:
    if point == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)


def note(what: str) -> None:
    with open(notes_file, "a") as f:  # noqa: PTH123 - plain append, synced before going on
        f.write(what + "\n")
        f.flush()
        os.fsync(f.fileno())


@rt.transaction()
def reserve(conn: psycopg.Connection[Any], order_id: str) -> int:
    conn.execute("INSERT INTO effects (order_id, what) VALUES (%s, 'reserved')", [order_id])
    die_at("inside_transaction_after_sql")
    return 1


@rt.step()
def charge(order_id: str) -> str:
    note("charge")
    die_at("inside_plain_step")
    return f"charged {order_id}"


@rt.workflow()
def order(order_id: str) -> str:
    die_at("before_first_commit")
    reserve(order_id)
    die_at("between_steps")
    receipt = charge(order_id)
    return f"{receipt}, done"


rt.launch()
print(order.with_options(workflow_id=workflow_id)(workflow_id))
rt.shutdown()
