"""Reads at scale: 1,000,000 executions and 10,000,000 steps (goal: each under 10 ms p99).

- listing a filtered first page (one workflow name, newest first, 50 rows) and deep pages:
  the same filter half way through its rows, and all executions 500,000 rows deep; the same
  with a status filter;
- `get_execution` + `list_steps` of one execution (a different one each round);
- `health_status()`, with one of four executors down (its 500 running executions not yet
  claimed) and with every lease expired (2,000 running executions to check for a claimer).

The data is loaded once per module with set-based SQL into the real (logged, indexed)
tables (tests/support/synthetic.py): a month of executions in creation order, five workflow
names of skewed popularity, ten steps each, the newest 3,000 still running or enqueued,
then VACUUM ANALYZE. It takes a
few minutes and a few GB of disk; progress goes to stderr. p50 and p99 of each benchmark are
in its extra_info and on a summary line.
"""

from __future__ import annotations

import datetime as dt
import random
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from stepstone.persistence import ExecutionFilter, Store
from stepstone.persistence.listing import build_list_query, encode_cursor
from tests.support.synthetic import execution_id, load_executions, load_executors

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from pytest_benchmark.fixture import BenchmarkFixture

EXECUTIONS = 1_000_000
STEPS_PER_EXECUTION = 10
ACTIVE = 3_000  # the newest executions: two thirds RUNNING, one third ENQUEUED
BATCH = 100_000  # executions per INSERT (steps: a tenth of that, times ten)
ROUNDS = 300
GOAL_MS = 10.0
PAGE = 50

# `%%` is a literal `%` (modulo) next to the bound parameters.
INSERT_STEPS = """
INSERT INTO stepstone.steps
       (execution_id, seq, name, kind, output, error, attempts, started_at, finished_at)
SELECT md5('exec-' || n)::uuid::text, seq,
       (ARRAY['validate', 'reserve', 'charge', 'notify', 'ship'])[seq %% 5 + 1] || '_' || seq,
       CASE WHEN seq %% 4 = 3 THEN 'transaction' ELSE 'step' END,
       format('{"n":%%s,"seq":%%s,"token":"%%s"}', n, seq, left(md5(n || '-' || seq), 12)),
       NULL,
       CASE WHEN (n + seq) %% 17 = 0 THEN 2 ELSE 1 END,
       created + seq * interval '1 second',
       created + seq * interval '1 second' + interval '250 milliseconds'
  FROM (SELECT n, %(start)s::timestamptz + n * (interval '30 days' / %(total)s::int) AS created
          FROM generate_series(%(first)s::int, %(last)s::int) n) e
 CROSS JOIN generate_series(0, %(steps)s::int - 1) seq
"""


def _say(request: pytest.FixtureRequest, line: str) -> None:
    """Write a line to stderr now, past pytest's output capture."""
    capture: Any = request.config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        sys.stderr.write(line + "\n")
        return
    with capture.global_and_fixture_disabled():
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _load(dsn: str, say: Callable[[str], None]) -> None:
    started = time.perf_counter()

    def elapsed() -> str:
        return f"{time.perf_counter() - started:7.1f} s"

    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    with psycopg.connect(dsn, autocommit=True) as conn:
        load_executors(conn, 4)
        for first in range(1, EXECUTIONS + 1, BATCH):
            last = min(first + BATCH - 1, EXECUTIONS)
            load_executions(
                conn,
                total=EXECUTIONS,
                active=ACTIVE,
                parents=250,
                customers=1000,
                executors=4,
                start=start,
                first=first,
                last=last,
            )
            say(f"[scale] {elapsed()}  executions {last:>10,} / {EXECUTIONS:,}")
        per_batch = BATCH // STEPS_PER_EXECUTION
        for first in range(1, EXECUTIONS + 1, per_batch):
            last = min(first + per_batch - 1, EXECUTIONS)
            params = {
                "first": first,
                "last": last,
                "total": EXECUTIONS,
                "start": start,
                "steps": STEPS_PER_EXECUTION,
            }
            conn.execute(INSERT_STEPS, params)
            done = last * STEPS_PER_EXECUTION
            if last % (5 * per_batch) == 0 or last == EXECUTIONS:
                say(
                    f"[scale] {elapsed()}  steps {done:>15,} / {EXECUTIONS * STEPS_PER_EXECUTION:,}"
                )
        conn.execute("VACUUM ANALYZE stepstone.executions")
        conn.execute("VACUUM ANALYZE stepstone.steps")
        conn.execute("VACUUM ANALYZE stepstone.executors")
        # So that the benchmarks do not share the disk with the checkpoint the load started.
        conn.execute("CHECKPOINT")
        row = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()
        size = row[0] if row else "?"
        say(f"[scale] {elapsed()}  loaded and vacuumed; database size {size}")


@pytest.fixture(scope="module")
def store(bench_db: str, request: pytest.FixtureRequest) -> Iterator[Store]:
    """A Store (one pooled connection) on the loaded database."""
    _load(bench_db, lambda line: _say(request, line))
    with Store(bench_db, min_size=1, max_size=1) as s:
        yield s


@dataclass(frozen=True)
class Listing:
    """A listing to benchmark: its filter and how many rows deep the page starts."""

    flt: ExecutionFilter
    depth: int  # 0: the first page; otherwise the cursor is the row at this position


LISTINGS = {
    "first-page[workflow_name]": Listing(ExecutionFilter(workflow_name="accounts.close"), 0),
    "deep-page[workflow_name]": Listing(ExecutionFilter(workflow_name="accounts.close"), 10_000),
    "deep-page[all]": Listing(ExecutionFilter(), 500_000),
    "first-page[status]": Listing(ExecutionFilter(statuses=["FAILED"]), 0),
    "deep-page[status]": Listing(ExecutionFilter(statuses=["FAILED"]), 20_000),
}


def _cursor(store: Store, listing: Listing) -> str | None:
    """The cursor of the page that starts after the row `depth` rows deep (newest first)."""
    if listing.depth == 0:
        return None
    # The listing's own WHERE and ORDER BY, to find the row at that position.
    query, params = build_list_query(store.schema, listing.flt, "created", "desc", 1, None)
    with store.connection() as conn:
        text = query.as_bytes(conn).replace(b"LIMIT %(limit)s", b"OFFSET %(offset)s LIMIT 1")
        del params["limit"]
        row = conn.execute(text, params | {"offset": listing.depth - 1}).fetchone()
    assert row is not None
    return encode_cursor("created", "desc", [row[8]], row[0])


def _plan(conn: psycopg.Connection[Any], query: bytes, params: dict[str, Any]) -> list[str]:
    """The indexes, sorts and sequential scans in the plan of query."""
    row = conn.execute(b"EXPLAIN (FORMAT JSON) " + query, params).fetchone()
    assert row is not None
    found: list[str] = []
    pending = [row[0][0]["Plan"]]
    while pending:
        node = pending.pop()
        if "Index Name" in node:
            found.append(node["Index Name"])
        if node["Node Type"] == "Sort":
            found.append("Sort")
        if node["Node Type"] == "Seq Scan":
            found.append(f"Seq Scan on {node['Relation Name']}")
        pending.extend(node.get("Plans", []))
    return found


def _plan_counts(store: Store) -> tuple[int, int]:
    """Generic and custom plans made so far for the statements psycopg prepared on the
    store's one pooled connection (it prepares a statement on its fifth execution)."""
    with store.connection() as conn:
        row = conn.execute(
            "SELECT coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0) "
            "FROM pg_prepared_statements"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _measure(
    benchmark: BenchmarkFixture,
    request: pytest.FixtureRequest,
    store: Store,
    label: str,
    target: Callable[[], object],
    plan: list[str],
) -> None:
    """Run target ROUNDS times (after a warm-up), record p50/p99 and print a summary line."""
    for _ in range(20):
        target()
    generic_before, custom_before = _plan_counts(store)
    timings: list[float] = []

    def timed() -> None:
        started = time.perf_counter()
        target()
        timings.append(time.perf_counter() - started)

    benchmark.pedantic(timed, rounds=ROUNDS, iterations=1)  # type: ignore[no-untyped-call]
    generic_after, custom_after = _plan_counts(store)
    plans = f"{generic_after - generic_before} generic / {custom_after - custom_before} custom"
    ordered = sorted(timings)
    p50 = ordered[len(ordered) // 2] * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    benchmark.extra_info["p50_ms"] = round(p50, 3)
    benchmark.extra_info["p99_ms"] = round(p99, 3)
    benchmark.extra_info["goal_p99_ms"] = GOAL_MS
    benchmark.extra_info["goal_met"] = p99 < GOAL_MS
    benchmark.extra_info["plan"] = plan
    benchmark.extra_info["server_plans"] = plans
    verdict = "under" if p99 < GOAL_MS else "OVER"
    _say(
        request,
        f"[scale] {label:<36} p50 {p50:7.3f} ms  p99 {p99:7.3f} ms  "
        f"({verdict} the {GOAL_MS:g} ms p99 goal, {len(ordered)} rounds; "
        f"plan: {', '.join(plan) or 'primary keys'}; server plans: {plans})",
    )


@pytest.mark.parametrize("label", list(LISTINGS))
def test_list_executions(
    benchmark: BenchmarkFixture, store: Store, request: pytest.FixtureRequest, label: str
) -> None:
    """One page of 50 through Store.list_executions, newest first, filtered, at some depth."""
    listing = LISTINGS[label]
    cursor = _cursor(store, listing)
    query, params = build_list_query(store.schema, listing.flt, "created", "desc", PAGE, cursor)
    with store.connection() as conn:
        plan = _plan(conn, query.as_bytes(conn), params)

    def page() -> None:
        result = store.list_executions(listing.flt, limit=PAGE, cursor=cursor)
        assert len(result.items) == PAGE

    _measure(benchmark, request, store, label, page, plan)


def test_get_execution_and_list_steps(
    benchmark: BenchmarkFixture, store: Store, request: pytest.FixtureRequest
) -> None:
    """get_execution and list_steps of one execution, a different random one each round."""
    picks = random.Random(7).sample(range(1, EXECUTIONS + 1), ROUNDS + 20)
    remaining = iter([execution_id(n) for n in picks])

    def read() -> None:
        picked = next(remaining)
        assert store.get_execution(picked) is not None
        assert len(store.list_steps(picked)) == STEPS_PER_EXECUTION

    _measure(benchmark, request, store, "get_execution+list_steps", read, [])


HEALTH = {
    # Three executors heartbeat; the fourth died an hour ago, its running executions not yet
    # claimed by a sweep.
    "one-executor-down": "UPDATE stepstone.executors SET heartbeat_at = now() "
    "WHERE id <> 'executor-4'",
    # Every lease expired: each running execution is also checked for a live executor that
    # could claim it.
    "all-leases-expired": "UPDATE stepstone.executors SET heartbeat_at = now() - interval '1 hour'",
}


@pytest.mark.parametrize("scenario", list(HEALTH))
def test_health_status(
    benchmark: BenchmarkFixture, store: Store, request: pytest.FixtureRequest, scenario: str
) -> None:
    """Store.health_status(): reachability, schema version and the counts of running work."""
    with store.connection() as conn:
        conn.execute(HEALTH[scenario])
        row = conn.execute(
            "SELECT count(*) FROM stepstone.executions e JOIN stepstone.executors x "
            "ON x.id = e.owner WHERE e.status = 'RUNNING' "
            "AND x.heartbeat_at < now() - make_interval(secs => x.lease_seconds)"
        ).fetchone()
        plan = _plan(conn, store.queries["health_counts"], {})
    health = store.health_status()
    assert health.running == ACTIVE - ACTIVE // 3
    assert health.enqueued == ACTIVE // 3
    assert row is not None
    assert health.expired_lease == row[0] > 0
    _measure(benchmark, request, store, f"health_status[{scenario}]", store.health_status, plan)
