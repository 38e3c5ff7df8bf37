"""A synthetic, realistic executions table, loaded with set-based SQL (for query plans and
reads at scale).

Executions 1..total spread over 30 days from `start`, in creation order like a live table,
with uuid-like ids (`md5('exec-' || n)`), five workflow names of skewed popularity
(40/30/20/8/2 %), the newest `active` ones unfinished (two thirds RUNNING, one third
ENQUEUED) and the rest 94 % SUCCEEDED, 4 % FAILED, 2 % CANCELLED. Every twentieth execution
past the first `parents` is the child of one of them (executions 1..parents); half carry a
customer attribute (`customers` distinct values) and a region. RUNNING ones are owned by
one of the executors, of which the last has stopped beating.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb

if TYPE_CHECKING:
    import datetime as dt

    import psycopg

__all__ = ["WORKFLOWS", "execution_id", "load_executions", "load_executors"]

WORKFLOWS = ["orders.fulfil", "payments.capture", "emails.send", "reports.build", "accounts.close"]

_EXECUTORS = """
INSERT INTO stepstone.executors (id, hostname, pid, heartbeat_at, workflows)
SELECT 'executor-' || x, 'host-' || x, 1000 + x,
       now() - CASE WHEN x = %(count)s THEN interval '1 hour' ELSE interval '0' END,
       %(workflows)s::jsonb
  FROM generate_series(1, %(count)s::int) x
"""

# `%%` is a literal `%` (modulo) next to the bound parameters.
_EXECUTIONS = """
INSERT INTO stepstone.executions
       (id, workflow_name, workflow_version, status, inputs, output, error, owner, epoch,
        parent_id, attributes, created_at, updated_at, started_at, finished_at)
SELECT md5('exec-' || n)::uuid::text, name, '1', status,
       format('{"args":[%%s,"%%s"],"kwargs":{"retries":3}}', n, md5(n::text)),
       CASE WHEN status = 'SUCCEEDED' THEN format('{"ok":true,"n":%%s}', n) END,
       CASE WHEN status = 'FAILED'
            THEN jsonb_build_object('type', 'ValueError', 'message', 'bad input ' || n,
                                    'traceback', repeat('  File "app.py", line 1, in f\n', 4))
       END,
       CASE WHEN status = 'RUNNING' THEN 'executor-' || (n %% %(executors)s::int + 1) END,
       1,
       CASE WHEN n > %(parents)s::int AND n %% 20 = 0
            THEN md5('exec-' || (n / 20 %% %(parents)s::int + 1))::uuid::text END,
       CASE WHEN n %% 2 = 0
            THEN jsonb_build_object('customer', 'c-' || h %% %(customers)s::int,
                                    'region', CASE WHEN h %% 3 = 0 THEN 'us' ELSE 'eu' END)
            WHEN n %% 10 = 1 THEN '{"priority": "high"}'::jsonb
            ELSE '{}'::jsonb END,
       created,
       CASE WHEN status IN ('SUCCEEDED', 'FAILED', 'CANCELLED') THEN created + took
            ELSE created END,
       CASE WHEN status <> 'ENQUEUED' THEN created END,
       CASE WHEN status IN ('SUCCEEDED', 'FAILED', 'CANCELLED') THEN created + took END
  FROM (SELECT n, h,
               CASE WHEN n %% 50 < 20 THEN 'orders.fulfil'
                    WHEN n %% 50 < 35 THEN 'payments.capture'
                    WHEN n %% 50 < 45 THEN 'emails.send'
                    WHEN n %% 50 < 49 THEN 'reports.build'
                    ELSE 'accounts.close' END AS name,
               CASE WHEN n > %(total)s::int - %(active)s::int
                    THEN CASE WHEN n %% 3 = 0 THEN 'ENQUEUED' ELSE 'RUNNING' END
                    WHEN h %% 100 < 94 THEN 'SUCCEEDED'
                    WHEN h %% 100 < 98 THEN 'FAILED'
                    ELSE 'CANCELLED' END AS status,
               %(start)s::timestamptz + n * (interval '30 days' / %(total)s::int) AS created,
               (h %% 3600 + 1) * interval '1 second' AS took
          FROM (SELECT n, abs(hashtext('h' || n)) AS h
                  FROM generate_series(%(first)s::int, %(last)s::int) n) s) g
"""


def execution_id(n: int) -> str:
    """The id of execution n."""
    return str(uuid.UUID(hashlib.md5(f"exec-{n}".encode(), usedforsecurity=False).hexdigest()))


def load_executors(conn: psycopg.Connection[Any], count: int) -> None:
    """`count` executors registering every workflow; the last one's heartbeat is an hour old."""
    workflows = Jsonb([[name, "1"] for name in WORKFLOWS])
    conn.execute(_EXECUTORS, {"count": count, "workflows": workflows})


def load_executions(
    conn: psycopg.Connection[Any],
    *,
    total: int,
    active: int,
    parents: int,
    customers: int,
    executors: int,
    start: dt.datetime,
    first: int = 1,
    last: int | None = None,
) -> None:
    """Insert executions first..last (all of them by default) of the `total`."""
    params = {
        "total": total,
        "active": active,
        "parents": parents,
        "customers": customers,
        "executors": executors,
        "start": start,
        "first": first,
        "last": total if last is None else last,
    }
    conn.execute(_EXECUTIONS, params)
