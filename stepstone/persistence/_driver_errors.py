"""The one place where psycopg's errors become stepstone's, by SQLSTATE (never by message).

Three kinds of driver error reach the store:

- the fence refused a write (SQLSTATE SS001: another executor owns the execution; SS002: it
  was cancelled): `OwnershipLost` or `ExecutionCancelled`, which stop the execution here;
- an error the user's own SQL caused in a transaction step, raised by one of its statements
  or at its COMMIT (a deferred foreign key, a serialization failure, a read-only
  transaction, a check constraint, a lock or statement timeout): the step's own failure,
  retried or recorded per its policy, so the driver's exception is passed on unchanged;
- everything else (the connection lost, the server shutting down, the pool exhausted, an
  error in stepstone's own statements): `PersistenceError`, which the runtime treats as an
  interruption: the execution stays RUNNING and is resumed when the database answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from stepstone.errors import ExecutionCancelled, OwnershipLost, PersistenceError

if TYPE_CHECKING:
    from collections.abc import Callable

    import psycopg

__all__ = ["CANCELLED_SQLSTATE", "FENCE_SQLSTATE", "Fence", "classify", "fenced", "outage"]

FENCE_SQLSTATE = "SS001"
"""SQLSTATE raised by the fence when an executor no longer owns an execution."""
CANCELLED_SQLSTATE = "SS002"
"""SQLSTATE raised by the fence when the execution was cancelled."""

Fence = tuple[str, str, int]
"""(execution id, owner, epoch) of a fenced write."""

Kind = Literal["fenced", "cancelled", "step", "outage"]

# SQLSTATE classes that a transaction step's own SQL causes: data exceptions (22),
# integrity (23), invalid transaction state such as a read-only transaction (25),
# serialization failures and deadlocks (40), syntax and access (42), WITH CHECK OPTION (44),
# object state such as a lock timeout (55), errors raised by PL/pgSQL (P0), and a few rarer
# ones (21 cardinality, 2B/2D/2F/38/39/3B routine and savepoint errors, 54 program limits).
_STEP_CLASSES = frozenset(
    {
        "21",
        "22",
        "23",
        "25",
        "27",
        "2B",
        "2D",
        "2F",
        "38",
        "39",
        "3B",
        "40",
        "42",
        "44",
        "54",
        "55",
        "P0",
    }
)
# In class 57 (operator intervention) only a cancelled statement (a statement_timeout or
# pg_cancel_backend) is the step's own; a server shutting down is an outage.
_STEP_CODES = frozenset({"57014"})


def classify(exc: psycopg.Error, *, user_sql: bool, broken: bool = False) -> Kind:
    """What an error means. `user_sql`: it came from a transaction in which the user's
    statements ran; `broken`: the connection was found unusable afterwards."""
    state = exc.sqlstate or ""
    if state == FENCE_SQLSTATE:
        return "fenced"
    if state == CANCELLED_SQLSTATE:
        return "cancelled"
    if broken or not user_sql:
        return "outage"
    if state in _STEP_CODES or state[:2] in _STEP_CLASSES:
        return "step"
    return "outage"


def fenced(kind: Kind, exc: psycopg.Error, fence: Fence) -> OwnershipLost | ExecutionCancelled:
    """The control signal of a fenced-out write."""
    error: OwnershipLost | ExecutionCancelled
    if kind == "cancelled":
        error = ExecutionCancelled(f"workflow {fence[0]!r} was cancelled", fence[0])
    else:
        error = OwnershipLost(*fence, detail=exc.diag.message_detail)
    error.__cause__ = exc
    return error


def outage(exc: BaseException, action: str, where: Callable[[], str]) -> PersistenceError:
    """The PersistenceError for a failure that is not the caller's doing."""
    reason = str(exc).strip() or type(exc).__name__
    error = PersistenceError(f"{action} failed on {where()}: {reason}")
    error.__cause__ = exc
    return error
