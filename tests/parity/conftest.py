"""Fixtures of the parity suite: each test runs once per flavour (sync and async) against
its own database (the `rt` and `db` fixtures of tests/conftest.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.parity.flavours import FLAVOURS, Flavour, flavour_of

if TYPE_CHECKING:
    from collections.abc import Iterator

    from stepstone import Runtime


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest, rt: Runtime) -> Iterator[Flavour]:
    """Builds and runs this test's workflows as `def` (sync) or `async def` (async) code
    on `rt`; shuts the runtime down after the test."""
    f = flavour_of(request.param, rt)
    yield f
    f.close()
