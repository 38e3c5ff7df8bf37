"""`Statements`: how the store runs its SQL. One statement on one pooled autocommit
connection per call, with the driver's errors mapped to stepstone's in one place
(`_driver_errors`), named by what was being done. `AsyncStatements` does the same on
psycopg's async pool, for the async driver of the hot path (see `plans`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, NoReturn

import psycopg
from psycopg.rows import tuple_row

from stepstone.errors import PersistenceError, UsageError
from stepstone.persistence._driver_errors import Fence, classify, fenced, outage
from stepstone.persistence.serialization import Described, described

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from psycopg import sql
    from psycopg_pool import AsyncConnectionPool, ConnectionPool

    from stepstone.persistence._queries import Queries

__all__ = ["AsyncStatements", "Statements"]


class Statements:
    """Runs named queries (and composed ones) for a store."""

    def __init__(
        self,
        pool: ConnectionPool[Any],
        queries: Queries,
        where: Callable[[], str],
        is_open: Callable[[], bool],
    ) -> None:
        self.pool = pool  # the store replaces it when it opens a new one
        self.queries = queries
        self.where = where
        self._is_open = is_open

    def run(
        self,
        query: bytes | sql.Composed,
        params: Mapping[str, Any],
        *,
        fetch: Literal["one", "all"] | None,
        action: Described,
        fence: Fence | None = None,
    ) -> Any:
        """Run one statement on a pooled connection; driver errors become stepstone's, named
        by `action` (formatted only then) and, for a write fenced by (execution id, owner,
        epoch), OwnershipLost or ExecutionCancelled."""
        # getconn/putconn rather than `with pool.connection()`: on an autocommit connection
        # the context manager adds only a no-op commit and usage statistics, at a cost that
        # every statement of the hot path would pay.
        try:
            conn = self.pool.getconn()
            try:
                cursor = conn.execute(query, params)
                if fetch == "one":
                    return cursor.fetchone()
                return cursor.fetchall() if fetch == "all" else None
            finally:
                self.pool.putconn(conn)
        except psycopg.Error as exc:
            self.fail(exc, action, fence)
        except UnicodeEncodeError as exc:  # a parameter the driver cannot send
            raise unencodable(action, exc) from None

    def one(self, name: str, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.run(
            self.queries[name], params, fetch="one", action=name.replace("_", " ")
        )
        return row

    def one_on(
        self,
        conn: psycopg.Connection[Any] | None,
        name: str,
        params: Mapping[str, Any],
        action: str,
    ) -> tuple[Any, ...] | None:
        """One row of `name`: on a pooled connection (`conn` None), else on the caller's
        `conn`, in its transaction (committed, or rolled back, with the caller's work)."""
        if conn is None:
            return self.one(name, params)
        try:
            cursor = conn.cursor(row_factory=tuple_row)
            return cursor.execute(self.queries[name], params).fetchone()
        except psycopg.Error as exc:
            raise outage(exc, action, self.where) from exc

    def all(self, name: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self.run(
            self.queries[name], params, fetch="all", action=name.replace("_", " ")
        )
        return rows

    def exec(self, name: str, params: Mapping[str, Any], fence: Fence | None = None) -> None:
        self.run(self.queries[name], params, fetch=None, action=name.replace("_", " "), fence=fence)

    def fail(self, exc: psycopg.Error, action: Described, fence: Fence | None) -> NoReturn:
        """Raise what `exc`, met while doing `action`, means to stepstone."""
        closed = (
            None if self._is_open() else "the store is closed (call open(); Runtime.launch() does)"
        )
        raise failure(exc, action, fence, closed, self.where) from exc


class AsyncStatements:
    """Runs statements for a store on psycopg's async pool (the async driver's runner)."""

    def __init__(self, pool: AsyncConnectionPool[Any], sync: Statements) -> None:
        self.pool = pool
        self.opened = False
        self.where = sync.where

    async def run(
        self,
        query: bytes | sql.Composed,
        params: Mapping[str, Any],
        *,
        fetch: Literal["one", "all"] | None,
        action: Described,
        fence: Fence | None = None,
    ) -> Any:
        """`Statements.run`, awaited on the async pool."""
        try:
            conn = await self.pool.getconn()
            try:
                cursor = await conn.execute(query, params)
                if fetch == "one":
                    return await cursor.fetchone()
                return (await cursor.fetchall()) if fetch == "all" else None
            finally:
                await self.pool.putconn(conn)
        except psycopg.Error as exc:
            self.fail(exc, action, fence)
        except UnicodeEncodeError as exc:
            raise unencodable(action, exc) from None

    def fail(self, exc: psycopg.Error, action: Described, fence: Fence | None) -> NoReturn:
        """Raise what `exc` means to stepstone (as `Statements.fail`)."""
        closed = (
            None
            if self.opened
            else "the store's async pool is closed (call open_async(); Runtime.launch_async() does)"
        )
        raise failure(exc, action, fence, closed, self.where) from exc


def failure(
    exc: psycopg.Error,
    action: Described,
    fence: Fence | None,
    closed: str | None,
    where: Callable[[], str],
) -> BaseException:
    """What a driver error met while doing `action` means to stepstone, for both runners:
    for a fenced write, OwnershipLost or ExecutionCancelled; on a closed pool (`closed`
    says which and what to do), a PersistenceError saying so; else an outage."""
    if fence is not None:
        kind = classify(exc, user_sql=False)
        if kind in ("fenced", "cancelled"):
            return fenced(kind, exc, fence)
    if closed is not None:
        return PersistenceError(f"{described(action)} failed: {closed}")
    return outage(exc, described(action), where)


def unencodable(action: Described, exc: UnicodeEncodeError) -> UsageError:
    """A parameter the driver cannot send (not valid Unicode text)."""
    return UsageError(
        f"{described(action)}: a value given is not valid Unicode text ({exc.reason}), "
        "which PostgreSQL cannot store: pass valid text"
    )
