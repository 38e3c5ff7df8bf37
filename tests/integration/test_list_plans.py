"""Every listing shape `Store.list_executions` builds, first page and deep page, and the
health counts use the index meant for them on realistic data (EXPLAIN, default planner
settings, statistics from ANALYZE).

The data: 20,000 executions over 30 days, in creation order like a live table, with uuid-like
ids, five workflow names of skewed popularity (40/30/20/8/2 %), every status (85 % succeeded,
4 % failed, 2 % cancelled, 6 % running, 3 % enqueued), a customer attribute on half of them,
and five parents of 200 children each. Filters that select a large share of the table are
rightly served by the created_at index with a filter, so each filtered shape is checked with
a selective value, where the index meant for it is the better plan.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from stepstone.persistence import ExecutionFilter, Store
from stepstone.persistence.listing import build_list_query

if TYPE_CHECKING:
    from collections.abc import Iterator

EXECUTIONS = 20_000
PAGE = 50
# The id LOAD gives execution 1, one of the five parents.
PARENT = str(uuid.UUID(hashlib.md5(b"exec-1", usedforsecurity=False).hexdigest()))

EXECUTORS = """
INSERT INTO stepstone.executors (id, hostname, pid, heartbeat_at, workflows)
SELECT 'executor-' || x, 'host-' || x, 1000 + x,
       now() - CASE WHEN x = 3 THEN interval '1 hour' ELSE interval '0' END,
       '[["orders.fulfil", "1"], ["payments.capture", "1"], ["emails.send", "1"],
         ["reports.build", "1"]]'
  FROM generate_series(1, 3) x
"""

# `%%` is a literal `%` (modulo) next to the bound parameter.
LOAD = """
INSERT INTO stepstone.executions
       (id, workflow_name, workflow_version, status, inputs, output, error, owner, epoch,
        parent_id, attributes, created_at, updated_at, started_at, finished_at)
SELECT md5('exec-' || n)::uuid::text, name, '1', status, '{"args":[],"kwargs":{}}',
       CASE WHEN status = 'SUCCEEDED' THEN '{"ok":true}' END,
       CASE WHEN status = 'FAILED'
            THEN '{"type": "ValueError", "message": "bad input"}'::jsonb END,
       CASE WHEN status = 'RUNNING' THEN 'executor-' || (n %% 3 + 1) END,
       1,
       CASE WHEN n > 5 AND n %% 20 = 0 THEN md5('exec-' || (n / 20 %% 5 + 1))::uuid::text END,
       CASE WHEN n %% 2 = 0
            THEN jsonb_build_object('customer', 'c-' || h %% 100,
                                    'region', CASE WHEN h %% 3 = 0 THEN 'us' ELSE 'eu' END)
            WHEN n %% 10 = 1 THEN '{"priority": "high"}'::jsonb
            ELSE '{}'::jsonb END,
       created,
       CASE WHEN status IN ('SUCCEEDED', 'FAILED', 'CANCELLED') THEN created + took
            ELSE created + took / 2 END,
       CASE WHEN status <> 'ENQUEUED' THEN created END,
       CASE WHEN status IN ('SUCCEEDED', 'FAILED', 'CANCELLED') THEN created + took END
  FROM (SELECT n, h,
               CASE WHEN n %% 50 < 20 THEN 'orders.fulfil'
                    WHEN n %% 50 < 35 THEN 'payments.capture'
                    WHEN n %% 50 < 45 THEN 'emails.send'
                    WHEN n %% 50 < 49 THEN 'reports.build'
                    ELSE 'accounts.close' END AS name,
               CASE WHEN h %% 100 < 85 THEN 'SUCCEEDED'
                    WHEN h %% 100 < 89 THEN 'FAILED'
                    WHEN h %% 100 < 91 THEN 'CANCELLED'
                    WHEN h %% 100 < 97 THEN 'RUNNING'
                    ELSE 'ENQUEUED' END AS status,
               timestamptz '2024-03-01 00:00:00+00' + n * (interval '30 days' / %(count)s::int) AS created,
               (h %% 3600 + 1) * interval '1 second' AS took
          FROM (SELECT n, abs(hashtext('h' || n)) AS h
                  FROM generate_series(1, %(count)s::int) n) s) g
"""


@dataclass(frozen=True)
class Shape:
    """One listing the Store builds, the index meant to serve it, and how deep to page."""

    flt: ExecutionFilter
    sort: str
    index: str
    keyset: bool  # read in index order: no Sort node at all
    walk_limit: int  # page size of the walk through Store.list_executions to a deep cursor
    walk_pages: int


SHAPES = [
    pytest.param(
        Shape(ExecutionFilter(), "created", "executions_created_idx", True, 1000, 10),
        id="created",
    ),
    pytest.param(
        Shape(
            ExecutionFilter(statuses=["FAILED"]),
            "created",
            "executions_status_created_idx",
            True,
            100,
            4,
        ),
        id="status+created",
    ),
    pytest.param(
        Shape(
            ExecutionFilter(workflow_name="accounts.close"),
            "created",
            "executions_name_created_idx",
            True,
            50,
            4,
        ),
        id="workflow_name+created",
    ),
    pytest.param(
        Shape(ExecutionFilter(), "name", "executions_name_created_idx", True, 1000, 10),
        id="sort-name",
    ),
    pytest.param(
        Shape(ExecutionFilter(), "updated", "executions_updated_idx", True, 1000, 10),
        id="sort-updated",
    ),
    pytest.param(
        Shape(ExecutionFilter(), "duration", "executions_duration_idx", True, 1000, 10),
        id="sort-duration",
    ),
    pytest.param(
        Shape(
            ExecutionFilter(attributes={"customer": "c-7"}),
            "created",
            "executions_attributes_idx",
            False,
            25,
            2,
        ),
        id="attributes",
    ),
    pytest.param(
        Shape(ExecutionFilter(parent_id=PARENT), "created", "executions_parent_idx", False, 50, 2),
        id="parent",
    ),
]


@pytest.fixture
def loaded(db: str) -> Iterator[tuple[Store, psycopg.Connection[Any]]]:
    """The test's database with the listing data loaded and analyzed, a Store on it and a
    connection to EXPLAIN with."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(EXECUTORS)
        conn.execute(LOAD, {"count": EXECUTIONS})
        conn.execute("ANALYZE stepstone.executions")
        conn.execute("ANALYZE stepstone.executors")
        with Store(db, min_size=1, max_size=1) as store:
            yield store, conn


def _explain(conn: psycopg.Connection[Any], query: bytes, params: dict[str, Any]) -> dict[str, Any]:
    row = conn.execute(b"EXPLAIN (FORMAT JSON) " + query, params).fetchone()
    assert row is not None
    plan: dict[str, Any] = row[0][0]["Plan"]
    return plan


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


def _render(node: dict[str, Any], depth: int = 0) -> str:
    words = [node["Node Type"]]
    if node.get("Scan Direction") == "Backward":
        words.append("Backward")
    if "Index Name" in node:
        words.append(f"using {node['Index Name']}")
    if "Relation Name" in node:
        words.append(f"on {node['Relation Name']}")
    words.append(f"(rows={node['Plan Rows']})")
    for key in ("Index Cond", "Recheck Cond", "Filter", "Sort Key"):
        if key in node:
            words.append(f"{key}: {node[key]}")
    lines = ["  " * depth + " ".join(str(w) for w in words)]
    lines += [_render(child, depth + 1) for child in node.get("Plans", [])]
    return "\n".join(lines)


def _check_listing(plan: dict[str, Any], shape: Shape) -> None:
    text = _render(plan)
    nodes = list(_nodes(plan))
    indexes = {n["Index Name"] for n in nodes if "Index Name" in n}
    assert shape.index in indexes, text
    assert not any(
        n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "executions" for n in nodes
    ), text
    sorts = [n for n in nodes if n["Node Type"] in ("Sort", "Incremental Sort")]
    if shape.keyset:
        assert not sorts, text
    else:
        # Only the few rows the filter's index found are sorted, never the table.
        assert all(s["Plan Rows"] <= EXECUTIONS // 20 for s in sorts), text


@pytest.mark.parametrize("shape", SHAPES)
def test_listing_first_and_deep_page_use_their_index(
    loaded: tuple[Store, psycopg.Connection[Any]], shape: Shape
) -> None:
    """Each listing shape reads its index, on the first page and on a deep page."""
    store, conn = loaded
    flt = shape.flt
    cursor: str | None = None
    seen = 0
    for _ in range(shape.walk_pages):
        page = store.list_executions(flt, sort=shape.sort, limit=shape.walk_limit, cursor=cursor)
        assert page.next_cursor is not None, f"only {seen + len(page.items)} rows match"
        seen += len(page.items)
        cursor = page.next_cursor
    assert seen >= 50
    for at in (None, cursor):
        query, params = build_list_query("stepstone", flt, shape.sort, "desc", PAGE, at)
        _check_listing(_explain(conn, query.as_bytes(conn), params), shape)


def test_health_counts_read_executions_through_the_status_index(
    loaded: tuple[Store, psycopg.Connection[Any]],
) -> None:
    """The health counts read only unfinished executions, through executions_status_created_idx."""
    store, conn = loaded
    plan = _explain(conn, store.queries["health_counts"], {})
    text = _render(plan)
    nodes = list(_nodes(plan))
    assert "executions_status_created_idx" in {n.get("Index Name") for n in nodes}, text
    assert not any(
        n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "executions" for n in nodes
    ), text
    health = store.health_status()
    assert health.running is not None
    assert health.enqueued is not None
    assert 0 < health.enqueued < health.running < EXECUTIONS // 10
