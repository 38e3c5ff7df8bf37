"""Fixtures of the parity suite: each test runs once per flavour (sync and async) against
its own database (the `rt` and `db` fixtures of tests/conftest.py), or, to count what it
costs, against a cluster with pg_stat_statements (as tests/integration/test_round_trips.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from psycopg import sql

from stepstone import Runtime, migrations
from tests.parity.flavours import FLAVOURS, Flavour, flavour_of
from tests.support.cluster import Cluster, cluster
from tests.support.metering import Meter
from tests.support.wire import CountingProxy

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest, rt: Runtime) -> Iterator[Flavour]:
    """Builds and runs this test's workflows as `def` (sync) or `async def` (async) code
    on `rt`; shuts the runtime down after the test."""
    f = flavour_of(request.param, rt)
    yield f
    f.close()


COUNTED_DB = "counted"


@pytest.fixture(scope="session")
def counted_server() -> Iterator[Cluster]:
    """A throwaway cluster with pg_stat_statements loaded, holding a migrated database
    COUNTED_DB with a table `marks (id bigserial, note text)`."""
    with cluster({"shared_preload_libraries": "'pg_stat_statements'"}) as c:
        with c.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(COUNTED_DB)))
        with c.connect(COUNTED_DB) as conn:
            migrations.migrate(conn, "stepstone")
            conn.execute("CREATE TABLE marks (id bigserial PRIMARY KEY, note text NOT NULL)")
        yield c


@pytest.fixture
def proxy(counted_server: Cluster) -> Iterator[CountingProxy]:
    """A proxy to the counted cluster counting round trips."""
    p = CountingProxy("127.0.0.1", counted_server.port)
    yield p
    p.close()


@pytest.fixture
def meter(counted_server: Cluster, proxy: CountingProxy) -> Iterator[Meter]:
    """Statements, round trips and transactions of a block of client code."""
    m = Meter(counted_server, proxy, COUNTED_DB)
    yield m
    m.admin.close()


@pytest.fixture(params=FLAVOURS)
def counted(request: pytest.FixtureRequest, proxy: CountingProxy) -> Iterator[Flavour]:
    """A flavour on a runtime with one pooled connection (so that every statement is
    prepared after a warm-up) talking to the counted cluster through the proxy."""
    runtime = Runtime(
        proxy.dsn(COUNTED_DB), executor_id="counted", pool_min_size=1, pool_max_size=1, workers=1
    )
    f = flavour_of(request.param, runtime)
    yield f
    f.close()
    runtime.shutdown()
