"""A transaction step on one connection, written once for both drivers (a plan, see
`plans`): take a pooled connection, BEGIN, run the step's body on it, then send the step
record together with COMMIT in one pipelined round trip; roll back whatever fails.

Errors raised by the body, and errors the body's SQL causes at the COMMIT (a deferred
constraint, a serialization failure, a read-only transaction), are the step's own: the
plan answers them (after the rollback) or lets them propagate unchanged. A lost connection
or an exhausted pool is a PersistenceError; a fenced-out record is OwnershipLost or
ExecutionCancelled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row

from stepstone.errors import UsageError
from stepstone.persistence._driver_errors import classify, outage
from stepstone.persistence.plans import CommitWith, Execute, GiveBack, TakeConnection
from stepstone.telemetry import EventLog

if TYPE_CHECKING:
    from collections.abc import Callable

    from stepstone.persistence._driver_errors import Fence
    from stepstone.persistence.plans import AsyncStatements, Plan, Request, Statements
    from stepstone.persistence.rows import StepCommit

__all__ = ["CallWith", "TransactionSteps"]

log = EventLog("stepstone.persistence")


class TransactionSteps:
    """The plan of a transaction step, for a store's statements and settings."""

    def __init__(
        self,
        begin: bytes,
        commit_query: bytes,
        commit_params: Callable[[StepCommit], dict[str, Any]],
        describe: Callable[[], str],
        fail: Callable[[psycopg.Error, str, Fence], NoReturn],
    ) -> None:
        self._begin = begin
        self._commit_query = commit_query
        self._commit_params = commit_params
        self._describe = describe
        self._fail = fail

    def plan(
        self, body: Callable[[Any], Request], record: Callable[[Any], StepCommit]
    ) -> Plan[tuple[bool, Any]]:
        """`body(conn)` is the request that runs the step's body on the taken connection,
        and answers (True, its result) or (False, what it raised); `record(result)` builds
        the step's commit. Returns (True, the result) once committed, or (False, the body's
        exception) after the rollback; raises what is not the body's."""
        try:
            conn = yield TakeConnection()
        except psycopg.Error as exc:  # PoolTimeout, PoolClosed: not the step's doing
            raise outage(exc, "taking a connection for a transaction step", self._describe) from exc
        try:
            outcome = yield from self._body(conn, body, record)
            if outcome[0]:
                yield from self._commit(conn, outcome[2])
        finally:
            yield GiveBack(conn)
        return outcome[0], outcome[1]

    def _body(
        self, conn: Any, body: Callable[[Any], Request], record: Callable[[Any], StepCommit]
    ) -> Plan[tuple[bool, Any, Any]]:
        try:
            try:
                yield Execute(conn, self._begin)
                ok, value = yield body(conn)
                if ok:
                    _check_still_open(conn)
                    return True, value, record(value)
            except Exception as exc:
                if conn.broken or conn.closed:
                    # The server went away under the step: not the step's failure.
                    raise outage(exc, "a transaction step", self._describe) from exc
                yield from _rollback_quietly(conn)
                raise
            except BaseException:
                yield from _rollback_quietly(conn)
                raise
            # The body raised `value`.
            if isinstance(value, Exception) and (conn.broken or conn.closed):
                raise outage(value, "a transaction step", self._describe) from value
            yield from _rollback_quietly(conn)
            return False, value, None
        finally:
            conn.row_factory = tuple_row  # undo any row factory the step set

    def _commit(self, conn: Any, commit: StepCommit) -> Plan[None]:
        try:
            yield CommitWith(conn, self._commit_query, self._commit_params(commit))
        except psycopg.Error as exc:
            broken = conn.broken or conn.closed
            if not broken:
                yield from _rollback_quietly(conn)
            kind = classify(exc, user_sql=True, broken=broken)
            if kind == "step":
                raise  # the step's own SQL failed at its COMMIT: the step's failure
            fence = (commit.execution_id, commit.owner, commit.epoch)
            self._fail(exc, f"committing step {commit.seq} of {commit.execution_id!r}", fence)


def _check_still_open(conn: Any) -> None:
    """UsageError unless the step's transaction is open and not aborted."""
    status = conn.info.transaction_status
    if status == TransactionStatus.INERROR:
        raise UsageError(
            "a statement of the transaction step failed and its error was caught "
            "inside the step, so the transaction is aborted; it was rolled back"
        )
    if status != TransactionStatus.INTRANS:
        raise UsageError(
            "the transaction step ended its transaction itself (commit() or "
            "rollback() on the injected connection): stepstone commits it together "
            "with the step record, so remove that call"
        )


def _rollback_quietly(conn: Any) -> Plan[None]:
    if conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        try:
            yield Execute(conn, b"ROLLBACK")
        except psycopg.Error:
            log.warning("rollback_failed", exc_info=True)


class CallWith:
    """The request that runs a sync transaction step's body on the taken connection."""

    __slots__ = ("body",)

    def __init__(self, body: Callable[[Any], Any]) -> None:
        self.body = body

    def __call__(self, conn: Any) -> Request:
        return _Call(self.body, conn)


class _Call:
    __slots__ = ("arg", "fn")

    def __init__(self, fn: Callable[[Any], Any], arg: Any) -> None:
        self.fn = fn
        self.arg = arg

    def run(self, io: Statements) -> tuple[bool, Any]:  # noqa: ARG002 - needs no statements
        try:
            return True, self.fn(self.arg)
        except BaseException as exc:  # noqa: BLE001 - answered to the plan
            return False, exc

    async def arun(self, aio: AsyncStatements) -> tuple[bool, Any]:
        raise NotImplementedError  # a sync body: only the sync driver runs it
