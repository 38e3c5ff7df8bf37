"""Every listing shape `Store.list_executions` builds, first page and deep page, and the
health counts use the index meant for them on realistic data (EXPLAIN, default planner
settings, statistics from ANALYZE).

The data (tests/support/synthetic.py): 20,000 executions over 30 days, in creation order
like a live table, with uuid-like ids, five workflow names of skewed popularity
(40/30/20/8/2 %), the newest 1,800 running or enqueued and the rest succeeded, failed or
cancelled, a customer attribute (100 values) on half of them, and five parents of 200
children each. Filters that select a large share of the table are rightly served by the
created_at index with a filter, so each filtered shape is checked with a selective value,
where the index meant for it is the better plan.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from stepstone.persistence import ExecutionFilter, Store
from stepstone.persistence.listing import build_list_query
from tests.support.synthetic import execution_id, load_executions, load_executors

if TYPE_CHECKING:
    from collections.abc import Iterator

EXECUTIONS = 20_000
PAGE = 50
ACTIVE = 1_800  # the newest executions: 1,200 RUNNING, 600 ENQUEUED
PARENT = execution_id(1)  # one of the five parents, of 200 children each


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
        load_executors(conn, 3)
        load_executions(
            conn,
            total=EXECUTIONS,
            active=ACTIVE,
            parents=5,
            customers=100,
            executors=3,
            start=dt.datetime(2024, 3, 1, tzinfo=dt.UTC),
        )
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
