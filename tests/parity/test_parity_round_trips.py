"""What the hot path costs the database is the same for sync and async workflows: counted
by the server (pg_stat_statements), on the wire (round trips) and in transaction ids."""

from __future__ import annotations

from itertools import count
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.parity.flavours import Flavour
    from tests.support.metering import Cost, Meter

_ids = count()


def _call(f: Flavour, workflow: Any, *args: Any) -> Any:
    return f.call(workflow, *args, workflow_id=f"rt-{f.name}-{next(_ids)}")


def _warm(f: Flavour, workflow: Any, *args: Any) -> None:
    # psycopg prepares a statement on its sixth execution (one extra round trip, once per
    # connection); measure the steady state after that.
    for _ in range(8):
        _call(f, workflow, *args)


def _only(cost: Cost, fragment: str) -> int:
    return sum(calls for query, calls in cost.statements.items() if fragment in query)


def test_start_and_finish_cost_one_statement_each(counted: Flavour, meter: Meter) -> None:
    """A workflow with no steps: its start and its completion are one statement, one
    round trip and one commit each."""
    f = counted

    @f.workflow("nothing")
    def nothing() -> int:
        return 1

    _warm(f, nothing)
    meter.begin()
    assert _call(f, nothing) == 1
    cost = meter.end()
    assert (cost.total_statements, cost.round_trips, cost.transactions) == (2, 2, 2)
    assert _only(cost, "start_execution") == 1
    assert _only(cost, "finish_execution") == 1


def test_a_plain_step_costs_one_statement_one_round_trip_and_one_commit(
    counted: Flavour, meter: Meter
) -> None:
    """Each plain step adds one statement (its commit_step), one round trip and one
    transaction, with no BEGIN."""
    f = counted

    @f.step("echo")
    def echo(n: int) -> int:
        return n

    @f.workflow("steps")
    def steps(n: int) -> Any:
        total = 0
        for i in range(n):
            total += yield echo(i)
        return total

    _warm(f, steps, 3)
    for n in (1, 10):
        meter.begin()
        assert _call(f, steps, n) == sum(range(n))
        cost = meter.end()
        assert (cost.total_statements, cost.round_trips, cost.transactions) == (2 + n,) * 3
        assert _only(cost, "commit_step") == n
        assert not any(q.upper() in ("BEGIN", "COMMIT") for q in cost.statements)


def test_a_transaction_step_is_begin_the_users_sql_and_one_pipelined_commit(
    counted: Flavour, meter: Meter
) -> None:
    """A transaction step with k statements costs BEGIN + k + one round trip carrying the
    step record and COMMIT together, in one transaction."""
    f = counted

    @f.transaction("mark")
    def mark(notes: list[str]) -> Any:
        for note in notes:
            yield f.sql("INSERT INTO marks (note) VALUES (%s)", note)
        return len(notes)

    @f.workflow("marking")
    def marking(notes: list[str]) -> Any:
        return (yield mark(notes))

    _warm(f, marking, ["warm"])
    for k in (1, 2, 5):
        meter.begin()
        assert _call(f, marking, [f"{f.name}-{k}-{i}" for i in range(k)]) == k
        cost = meter.end()
        assert cost.round_trips - 2 == k + 2  # minus start and completion
        assert _only(cost, "INSERT INTO marks") == k
        assert _only(cost, "commit_transaction_step") == 1
        assert _only(cost, "BEGIN") == 1
        assert _only(cost, "COMMIT") == 1
        assert cost.transactions == 1 + 2  # the step's one transaction, start, completion
