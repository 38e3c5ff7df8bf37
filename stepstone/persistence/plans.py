"""Database I/O as data (plans), for one core under two drivers.

The hot path (start, step commit, transaction step, completion, release) is written once,
as generators ("plans") that yield requests — run this statement, take a pooled
connection, run the step's body — and receive each request's result (or have its error
thrown in). A driver runs a plan: `drive` with plain calls on the sync pool, `adrive` with
`await` on psycopg's async pool. Neither goes through the other's machinery: the sync path
has no event loop under it, the async one no threads.

A request knows how to run itself both ways (`run(io)` and `arun(aio)`), where `io` is the
store's sync statement runner and `aio` its async one. The runtime adds requests of its
own (call a step body, sleep between attempts) that ignore them.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import psycopg
from psycopg.rows import tuple_row

from stepstone.errors import UsageError
from stepstone.persistence._driver_errors import outage
from stepstone.persistence._statements import AsyncStatements, Statements
from stepstone.persistence.serialization import described

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from psycopg import sql

    from stepstone.persistence._driver_errors import Fence
    from stepstone.persistence.serialization import Described

__all__ = [
    "AsyncStatements",
    "CommitWith",
    "Execute",
    "GiveBack",
    "OnConnection",
    "Plan",
    "Request",
    "Statement",
    "Statements",
    "TakeConnection",
    "adrive",
    "drive",
    "on_connection",
]

T = TypeVar("T")


class Request(Protocol):
    """One I/O operation a plan asks for."""

    def run(self, io: Statements) -> Any:
        """Do it with plain calls (the sync driver)."""

    async def arun(self, aio: AsyncStatements) -> Any:
        """Do it with `await` (the async driver)."""


Plan = Generator[Request, Any, T]
"""I/O sequencing written once: yields requests, receives their results, returns a T."""


def drive(plan: Plan[T], io: Statements) -> T:
    """Run `plan` with plain calls; what it returns (or raises)."""
    try:
        request = next(plan)
        while True:
            try:
                result = request.run(io)
            except BaseException as exc:  # noqa: BLE001 - the plan decides what it means
                request = plan.throw(exc)
            else:
                request = plan.send(result)
    except StopIteration as stop:
        value: T = stop.value
        return value


async def adrive(plan: Plan[T], aio: AsyncStatements) -> T:
    """Run `plan` with `await`; what it returns (or raises)."""
    try:
        request = next(plan)
        while True:
            try:
                result = await request.arun(aio)
            except BaseException as exc:  # noqa: BLE001 - the plan decides what it means
                request = plan.throw(exc)
            else:
                request = plan.send(result)
    except StopIteration as stop:
        value: T = stop.value
        return value


class Statement:
    """One statement on a pooled autocommit connection: its rows (`fetch`) as `convert`
    makes them; driver errors mapped as `Statements.run` maps them."""

    __slots__ = ("action", "convert", "fence", "fetch", "params", "query")

    def __init__(
        self,
        query: bytes | sql.Composed,
        params: Mapping[str, Any],
        fetch: Literal["one", "all"] | None,
        action: Described,
        fence: Fence | None = None,
        convert: Callable[[Any], Any] | None = None,
    ) -> None:
        self.query = query
        self.params = params
        self.fetch = fetch
        self.action = action
        self.fence = fence
        self.convert = convert

    def run(self, io: Statements) -> Any:
        found = io.run(
            self.query, self.params, fetch=self.fetch, action=self.action, fence=self.fence
        )
        return found if self.convert is None else self.convert(found)

    async def arun(self, aio: AsyncStatements) -> Any:
        found = await aio.run(
            self.query, self.params, fetch=self.fetch, action=self.action, fence=self.fence
        )
        return found if self.convert is None else self.convert(found)


class TakeConnection:
    """A connection of the pool, kept until `GiveBack` (driver errors unmapped)."""

    __slots__ = ()

    def run(self, io: Statements) -> Any:
        return io.pool.getconn()

    async def arun(self, aio: AsyncStatements) -> Any:
        return await aio.pool.getconn()


class GiveBack:
    """Return a connection `TakeConnection` took."""

    __slots__ = ("conn",)

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def run(self, io: Statements) -> None:
        io.pool.putconn(self.conn)

    async def arun(self, aio: AsyncStatements) -> None:
        await aio.pool.putconn(self.conn)


class Execute:
    """One statement on a taken connection, not prepared (BEGIN, ROLLBACK)."""

    __slots__ = ("conn", "query")

    def __init__(self, conn: Any, query: bytes) -> None:
        self.conn = conn
        self.query = query

    def run(self, io: Statements) -> None:
        conn: psycopg.Connection[Any] = self.conn
        conn.execute(self.query, prepare=False)

    async def arun(self, aio: AsyncStatements) -> None:
        conn: psycopg.AsyncConnection[Any] = self.conn
        await conn.execute(self.query, prepare=False)


class CommitWith:
    """A statement and COMMIT on a taken connection, pipelined: one round trip."""

    __slots__ = ("conn", "params", "query")

    def __init__(self, conn: Any, query: bytes, params: Mapping[str, Any]) -> None:
        self.conn = conn
        self.query = query
        self.params = params

    def run(self, io: Statements) -> None:
        conn: psycopg.Connection[Any] = self.conn
        with conn.pipeline():
            conn.execute(self.query, self.params)
            conn.execute(b"COMMIT", prepare=False)

    async def arun(self, aio: AsyncStatements) -> None:
        conn: psycopg.AsyncConnection[Any] = self.conn
        async with conn.pipeline():
            await conn.execute(self.query, self.params)
            await conn.execute(b"COMMIT", prepare=False)


class OnConnection:
    """A statement on the caller's own connection, in its transaction (committed, or rolled
    back, with the caller's work): a psycopg `Connection` under the sync driver, an
    `AsyncConnection` under the async one. Driver errors are outages named by the
    statement's action."""

    __slots__ = ("conn", "statement")

    def __init__(self, conn: Any, statement: Statement) -> None:
        self.conn = conn
        self.statement = statement

    def run(self, io: Statements) -> Any:
        conn = self.conn
        if not isinstance(conn, psycopg.Connection):
            raise UsageError(
                f"conn must be a psycopg.Connection here, got {conn!r}"
                + (
                    ": pass it to the async call (`..._async`)"
                    if isinstance(conn, psycopg.AsyncConnection)
                    else ""
                )
            )
        s = self.statement
        try:
            cursor = conn.cursor(row_factory=tuple_row).execute(s.query, s.params)
            found = _fetched(cursor, s.fetch)
        except psycopg.Error as exc:
            raise outage(exc, described(s.action), io.where) from exc
        return found if s.convert is None else s.convert(found)

    async def arun(self, aio: AsyncStatements) -> Any:
        conn = self.conn
        if not isinstance(conn, psycopg.AsyncConnection):
            raise UsageError(
                f"conn must be a psycopg.AsyncConnection here, got {conn!r}"
                + (": pass it to the sync call" if isinstance(conn, psycopg.Connection) else "")
            )
        s = self.statement
        try:
            cursor = await conn.cursor(row_factory=tuple_row).execute(s.query, s.params)
            found: Any
            if s.fetch == "one":
                found = await cursor.fetchone()
            else:
                found = (await cursor.fetchall()) if s.fetch == "all" else None
        except psycopg.Error as exc:
            raise outage(exc, described(s.action), aio.where) from exc
        return found if s.convert is None else s.convert(found)


def on_connection(conn: Any, statement: Statement) -> Request:
    """`statement` on a pooled connection (`conn` None), else on the caller's `conn`."""
    return statement if conn is None else OnConnection(conn, statement)


def _fetched(cursor: psycopg.Cursor[Any], fetch: Literal["one", "all"] | None) -> Any:
    if fetch == "one":
        return cursor.fetchone()
    return cursor.fetchall() if fetch == "all" else None
