"""Benchmarks run against the machine's PostgreSQL, each module in a database of its own.

Run them with `python -m pytest benchmarks` (they are not part of the default test run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.support import databases
from tests.support.server import pytest_configure, pytest_unconfigure  # noqa: F401 - hooks

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(scope="module")
def bench_db() -> Iterator[str]:
    """A fresh migrated database for one benchmark module."""
    template = databases.create_template()
    name = databases.create_database(template=template)
    yield databases.dsn_for(name)
    databases.drop_database(name)
    databases.drop_database(template)
