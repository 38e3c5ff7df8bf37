"""Inspecting and operating on executions: listings, statistics, checkpoints, and the
operator actions (cancel, resume, fork, purge), each recorded in the audit log with its
actor. `Store` offers each (its `operations` collaborator does the work); the SQL is in
queries.sql and the migrations.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import Jsonb

from stepstone.errors import (
    PersistenceError,
    UsageError,
    WorkflowIdConflict,
    WorkflowNotFound,
)
from stepstone.persistence.ids import check_workflow_id
from stepstone.persistence.listing import (
    ExecutionFilter,
    ExecutionPage,
    InvalidQuery,
    build_list_query,
    page_from_rows,
)
from stepstone.persistence.rows import Checkpoint, ExecutorRow, SlowStep, WorkflowStats

if TYPE_CHECKING:
    from stepstone.persistence._statements import Statements

__all__ = ["Operations"]


class Operations:
    """Listings, statistics and operator actions, on a store's statements. `Store` offers
    each as a method of its own."""

    def __init__(self, statements: Statements, schema: str) -> None:
        self._sql = statements
        self.schema = schema

    def list_checkpoints(self, execution_id: str) -> list[Checkpoint]:
        """Every checkpoint of an execution, by position (state values are serialized text)."""
        return [Checkpoint(*row) for row in self._sql.all("list_checkpoints", {"id": execution_id})]

    def list_executions(
        self,
        flt: ExecutionFilter | None = None,
        *,
        sort: str = "created",
        direction: str = "desc",
        limit: int = 50,
        cursor: str | None = None,
    ) -> ExecutionPage:
        """One page of executions matching `flt`, sorted by created, updated, duration (ended
        executions only) or name, newest or largest first with "desc"; `cursor` continues
        from the page that returned it. InvalidQuery for anything that cannot be used."""
        query, params = build_list_query(
            self.schema, flt or ExecutionFilter(), sort, direction, limit, cursor
        )
        rows = self._sql.run(query, params, fetch="all", action="listing executions")
        return page_from_rows(rows, sort, direction, limit)

    def workflow_stats(
        self, since: dt.datetime, until: dt.datetime | None = None, workflow_name: str | None = None
    ) -> list[WorkflowStats]:
        """Per workflow, the executions created in [since, until): counts by outcome,
        p50/p95/p99 duration and retries."""
        params = _window(since, until) | {"name": workflow_name}
        return [WorkflowStats(*row) for row in self._sql.all("workflow_stats", params)]

    def slowest_steps(
        self,
        since: dt.datetime,
        until: dt.datetime | None = None,
        *,
        limit: int = 10,
        workflow_name: str | None = None,
    ) -> list[SlowStep]:
        """The slowest steps of the executions created in [since, until)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidQuery(f"limit must be an int from 1 to 1000, got {limit!r}")
        params = _window(since, until) | {"name": workflow_name, "limit": limit}
        return [SlowStep(*row) for row in self._sql.all("slowest_steps", params)]

    # -- operations --------------------------------------------------------------------------

    def cancel_execution(self, execution_id: str, actor: str) -> str:
        """Cancel a RUNNING, WAITING or ENQUEUED execution (its executor stops at its next step
        boundary); return the status it had. Refused, changing nothing, otherwise."""
        row = self._sql.one(
            "cancel_execution", {"id": check_workflow_id(execution_id), "actor": actor}
        )
        status = row[0] if row else None
        if status is None:
            raise WorkflowNotFound(f"no execution has workflow id {execution_id!r}")
        if status not in ("RUNNING", "WAITING", "ENQUEUED"):
            raise UsageError(f"cannot cancel {execution_id!r}: it already ended ({status})")
        return str(status)

    def resume_execution(self, execution_id: str, actor: str, owner: str | None = None) -> str:
        """Make a FAILED or CANCELLED execution RUNNING again from its last recorded step
        (trailing failed steps run again), owned by `owner` (None: claimed by the next sweep
        of an executor that runs its workflow); the descendants its cancellation cancelled
        run again too, claimed by the next sweep. An execution of a queue goes back to
        ENQUEUED instead, for a dispatcher to start within the queue's limits. Returns the
        status it had."""
        row = self._sql.one(
            "resume_execution",
            {"id": check_workflow_id(execution_id), "actor": actor, "owner": owner},
        )
        status, held_by = row if row else (None, None)
        if status is None:
            raise WorkflowNotFound(f"no execution has workflow id {execution_id!r}")
        if held_by is not None:
            raise UsageError(
                f"cannot resume {execution_id!r}: its dedup key is held by {held_by!r}, an "
                "unfinished execution of its queue; resume it once that one has ended"
            )
        if status == "WAITING":
            raise UsageError(
                f"cannot resume {execution_id!r}: it is WAITING, and resumes by itself when its "
                "wait is due (its time comes, its message arrives, the execution it waits for "
                "ends); to run it again now, cancel it, then resume it"
            )
        if status not in ("FAILED", "CANCELLED"):
            raise UsageError(
                f"cannot resume {execution_id!r}: it is {status}; only FAILED or CANCELLED "
                "executions can be resumed"
            )
        return str(status)

    def fork_execution(
        self,
        execution_id: str,
        from_step: int,
        actor: str,
        *,
        new_id: str | None = None,
        owner: str | None = None,
    ) -> str:
        """Start a new execution of the same workflow and inputs that keeps the recorded
        steps before position `from_step` and the state checkpointed there, and runs from
        it. Returns the new execution's id (default: `<id>-fork-<random>`)."""
        if isinstance(from_step, bool) or not isinstance(from_step, int):
            raise InvalidQuery(f"from_step must be an int, got {from_step!r}")
        if self._sql.one("get_status", {"id": check_workflow_id(execution_id)}) is None:
            raise WorkflowNotFound(f"no execution has workflow id {execution_id!r}")
        row = self._sql.one("count_steps", {"id": execution_id})
        recorded = int(row[0]) if row else 0
        if not 0 <= from_step <= recorded:
            raise UsageError(
                f"cannot fork {execution_id!r} from step {from_step}: it has {recorded} recorded "
                f"steps, so from_step must be between 0 and {recorded}"
            )
        target = check_workflow_id(
            new_id if new_id is not None else f"{execution_id[:200]}-fork-{secrets.token_hex(4)}"
        )
        params = {
            "id": execution_id,
            "step": from_step,
            "new_id": target,
            "actor": actor,
            "owner": owner,
        }
        try:
            self._sql.run(
                self._sql.queries["fork_execution"],
                params,
                fetch=None,
                action=f"forking {execution_id!r}",
            )
        except PersistenceError as exc:
            if not isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
                raise
            existing = self._sql.one("get_execution", {"id": target})
            raise WorkflowIdConflict(
                target,
                str(existing[1]) if existing else "(another execution)",
                f"a fork of execution {execution_id}",
            ) from None
        return target

    def purge(
        self,
        older_than: dt.timedelta,
        actor: str,
        *,
        batch_size: int = 1000,
        max_batches: int | None = None,
    ) -> int:
        """Delete executions that ended more than `older_than` ago, with their steps, state,
        checkpoints and log, `batch_size` executions per transaction (at most `max_batches`
        transactions), and the rows of executors whose last heartbeat is older than that
        and that own no running execution; return how many executions."""
        if not isinstance(older_than, dt.timedelta) or older_than <= dt.timedelta(0):
            raise InvalidQuery(f"older_than must be a positive timedelta, got {older_than!r}")
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, int)
            or not 1 <= batch_size <= 100_000
        ):
            raise InvalidQuery(f"batch_size must be an int from 1 to 100000, got {batch_size!r}")
        cutoff = dt.datetime.now(dt.UTC) - older_than
        total = batches = 0
        while max_batches is None or batches < max_batches:
            row = self._sql.one("purge_executions", {"cutoff": cutoff, "batch": batch_size})
            deleted = int(row[0]) if row else 0
            total += deleted
            batches += 1
            if deleted < batch_size:
                break
        # Executors dead for longer than that go too (not one that still owns work).
        pruned = [str(row[0]) for row in self._sql.all("prune_executors", {"cutoff": cutoff})]
        if total or pruned:
            details = {
                "deleted": total,
                "ended_before": cutoff.isoformat(),
                "executors_pruned": pruned,
            }
            self._sql.exec(
                "log_system_event",
                {"event": "executions_purged", "actor": actor, "details": Jsonb(details)},
            )
        return total

    def list_executors(self) -> list[ExecutorRow]:
        """Every registered executor, by id (see ExecutorRow)."""
        return [ExecutorRow(*row) for row in self._sql.all("list_executors", {})]


def _window(since: dt.datetime, until: dt.datetime | None) -> dict[str, Any]:
    for name, value in (("since", since), ("until", until)):
        if value is not None and (not isinstance(value, dt.datetime) or value.utcoffset() is None):
            raise InvalidQuery(f"{name} must be an aware datetime, got {value!r}")
    end = until or dt.datetime.now(dt.UTC)
    if since >= end:
        raise InvalidQuery(
            f"the window is empty: since {since.isoformat()} is not before {end.isoformat()}"
        )
    return {"since": since, "until": end}
