"""Fixtures shared by every test that talks to PostgreSQL."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import structlog

from stepstone import Runtime
from tests.support import databases
from tests.support.server import pytest_configure, pytest_unconfigure  # noqa: F401 - hooks

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(autouse=True)
def _structlog_unconfigured() -> Iterator[None]:
    """Each test starts with structlog as an application that never configured it (a test
    using structlog.testing.capture_logs leaves it configured, printing to stdout)."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    """A database with stepstone's schema migrated, copied for each test."""
    name = databases.create_template()
    yield name
    databases.drop_database(name)


@pytest.fixture
def db(template_db: str) -> Iterator[str]:
    """The connection string of a fresh, migrated database of this test's own."""
    name = databases.create_database(template=template_db)
    yield databases.dsn_for(name)
    databases.drop_database(name)


@pytest.fixture
def empty_db() -> Iterator[str]:
    """The connection string of a fresh database with nothing in it."""
    name = databases.create_database()
    yield databases.dsn_for(name)
    databases.drop_database(name)


@pytest.fixture
def rt(db: str) -> Iterator[Runtime]:
    """A Runtime on this test's database; the test registers its workflows, then launches."""
    runtime = Runtime(db, executor_id="test-executor", workers=4, pool_max_size=6)
    yield runtime
    runtime.shutdown()
