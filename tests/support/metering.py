"""Measuring what client code costs on a PostgreSQL server: statements (pg_stat_statements),
round trips (ReadyForQuery messages seen by a proxy) and transactions (transaction ids)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.support.cluster import Cluster
    from tests.support.wire import CountingProxy


@dataclass
class Cost:
    round_trips: int
    statements: dict[str, int]
    transactions: int
    rows: dict[str, int]

    @property
    def total_statements(self) -> int:
        return sum(self.statements.values())


class Meter:
    """Measures what a block of client code costs on the server."""

    def __init__(self, server: Cluster, proxy: CountingProxy, dbname: str) -> None:
        self.dbname = dbname
        self.server = server
        self.proxy = proxy
        self.admin = server.connect("postgres")
        self.admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def begin(self) -> None:
        self.admin.execute("SELECT pg_stat_statements_reset()")
        self._xid = self._next_xid()
        self.proxy.reset()

    def end(self) -> Cost:
        round_trips = self.proxy.round_trips
        transactions = self._next_xid() - self._xid
        rows = self.admin.execute(
            "SELECT query, calls, rows FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
            "WHERE d.datname = %s",
            [self.dbname],
        ).fetchall()
        return Cost(
            round_trips,
            {str(q): int(c) for q, c, _ in rows},
            transactions,
            {str(q): int(r) for q, _, r in rows},
        )

    def calls(self, cost: Cost, fragment: str) -> int:
        """Calls of the statements whose text contains `fragment`."""
        return sum(calls for query, calls in cost.statements.items() if fragment in query)

    def _next_xid(self) -> int:
        row = self.admin.execute(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
        ).fetchone()
        assert row is not None
        return int(row[0])
