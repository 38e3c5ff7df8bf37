"""The PostgreSQL server a test session uses: the one STEPSTONE_TEST_ADMIN_DSN names, else
an embedded cluster started for the session (pg_stat_statements preloaded) and removed at
its end. Conftests import these two hooks."""

from __future__ import annotations

import os

import pytest

from tests.support.cluster import Cluster
from tests.support.databases import ADMIN_ENV

_SERVER = pytest.StashKey[Cluster]()

SESSION_SETTINGS = {
    "shared_preload_libraries": "'pg_stat_statements'",
    "max_connections": "200",
    "fsync": "off",  # a crash of this server is never tested: throwaway clusters are
}


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(ADMIN_ENV):
        return
    server = Cluster(SESSION_SETTINGS)
    config.stash[_SERVER] = server
    os.environ[ADMIN_ENV] = server.dsn()  # subprocesses of the tests inherit it


def pytest_unconfigure(config: pytest.Config) -> None:
    server = config.stash.get(_SERVER, None)
    if server is not None:
        os.environ.pop(ADMIN_ENV, None)
        server.destroy()
