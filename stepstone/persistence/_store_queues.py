"""The queue part of `Store`: declaring queues, enqueuing (also in the caller's
transaction) and dispatching, each one statement."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb

from stepstone.errors import UsageError
from stepstone.persistence.plans import Statement, on_connection
from stepstone.persistence.rows import (
    DispatchResult,
    EnqueueRequest,
    EnqueueResult,
    ResumeRecord,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    import psycopg

    from stepstone.persistence._queries import Queries
    from stepstone.persistence._statements import Statements

__all__ = ["QueueStore", "split_registered"]


class QueueStore:
    """Queues: a part of `Store` (its statements, pool and describe)."""

    _sql: Statements
    queries: Queries
    _opened: bool
    describe: Callable[[], str]

    def declare_queue(
        self,
        name: str,
        *,
        concurrency: int | None,
        rate_limit: tuple[int, float] | None,
        partition_concurrency: int | None,
    ) -> None:
        """Create queue `name` with these limits, or change its limits to these."""
        count, period = rate_limit if rate_limit is not None else (None, None)
        params = {
            "name": name,
            "concurrency": concurrency,
            "rate_limit": count,
            "rate_period": period,
            "partition_concurrency": partition_concurrency,
        }
        self._sql.one("declare_queue", params)

    def enqueue(
        self,
        request: EnqueueRequest,
        conn: psycopg.Connection[Any] | None = None,
        *,
        registered: bool = False,
    ) -> EnqueueResult:
        """Write execution `request.id` ENQUEUED on its queue, in one round trip (see
        EnqueueResult for what else can happen; then nothing is written). With `conn`, in
        that connection's transaction: enqueued when the caller commits, not at all if it
        rolls back. With `registered`, only a definition some worker registered
        (`save_workflow`) is enqueued: `request.workflow_version`, or with None the version
        of that name seen most recently; otherwise the outcome is "no_workflow"."""
        statement = self.enqueue_statement(request, registered=registered)
        result: EnqueueResult = on_connection(conn, statement).run(self._sql)
        return result

    def enqueue_statement(self, request: EnqueueRequest, *, registered: bool = False) -> Statement:
        """`enqueue` as a request (its result: an EnqueueResult), for either driver; run it
        on the caller's connection with `plans.on_connection`."""
        if request.workflow_version is None and not registered:
            raise UsageError(
                f"enqueuing {request.id!r} needs a workflow version, or registered=True"
            )
        params = {
            "id": request.id,
            "name": request.workflow_name,
            "version": request.workflow_version,
            "inputs": request.inputs,
            "queue": request.queue,
            "priority": request.priority,
            "dedup_key": request.dedup_key,
            "partition_key": request.partition_key,
            "delay": request.delay,
            "timeout": request.timeout,
            "parent": request.parent_id,
            "trace": Jsonb(request.trace_context) if request.trace_context else None,
            "attributes": Jsonb(request.attributes) if request.attributes else None,
            "actor": request.actor,
        }
        return Statement(
            self.queries["enqueue_registered" if registered else "enqueue"],
            params,
            "one",
            lambda: f"enqueuing {request.id!r}",
            convert=_enqueue_result,
        )

    def dispatch(
        self,
        owner: str,
        capacity: Mapping[str, int],
        total: int,
        registered: Sequence[tuple[str, str]],
    ) -> DispatchResult:
        """In one statement, claim startable executions of the queues in `capacity` (up to
        capacity[queue] of each, `total` in all) whose definitions are in `registered`,
        within each queue's limits: they are RUNNING, owned by `owner`."""
        names, versions = split_registered(registered)
        queues = sorted(capacity)
        rows = self._sql.all(
            "dispatch",
            {
                "owner": owner,
                "queues": queues,
                "capacity": [capacity[q] for q in queues],
                "total": total,
                "names": names,
                "versions": versions,
            },
        )
        claimed = [
            (str(row[10]), ResumeRecord.from_row(row[1:10])) for row in rows if row[0] == "claimed"
        ]
        next_in = next((row[11] for row in rows if row[0] == "next"), None)
        return DispatchResult(claimed, next_in)


def _enqueue_result(row: Any) -> EnqueueResult:
    if row is None:  # only a registered-only enqueue returns no row
        return EnqueueResult("no_workflow", None, None, None)
    return EnqueueResult(*row)


def split_registered(registered: Sequence[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """The (name, version) pairs as two parallel lists, as the SQL functions take them."""
    return [name for name, _ in registered], [version for _, version in registered]
