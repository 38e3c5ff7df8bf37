"""Per-step CPU of values, side by side: encode and decode of typical step values, as the
serializer did before annotations (`loads` rebuilds a dataclass from its stored type path)
and as it does now (`loads_plain`, then the step's return annotation through
`msgspec.convert`), with pydantic's `TypeAdapter` in the same place for comparison. No
database: compare the rows of one run with each other (ratios), not across runs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import uuid
from typing import TYPE_CHECKING, Any

import pydantic
import pytest

from stepstone.persistence._typed import convert
from stepstone.persistence.serialization import JsonSerializer

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture


@dataclasses.dataclass(frozen=True)
class Order:
    id: uuid.UUID
    customer: str
    total: decimal.Decimal
    placed: dt.datetime
    lines: tuple[str, ...]


ORDER = Order(
    uuid.UUID(int=42),
    "acme",
    decimal.Decimal("120.50"),
    dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC),
    ("sku-1", "sku-2"),
)

# name: (value, its step's return annotation)
VALUES: dict[str, tuple[Any, Any]] = {
    "int": (42, int),
    "dict": ({"status": "ok", "count": 3, "ids": [1, 2, 3]}, dict[str, Any]),
    "dataclass": (ORDER, Order),
    "list_of_10_dataclasses": ([ORDER] * 10, list[Order]),
}

SERIALIZER = JsonSerializer()
ADAPTERS = {name: pydantic.TypeAdapter(annotation) for name, (_, annotation) in VALUES.items()}


def _today(value: Any, annotation: Any) -> Any:
    return SERIALIZER.loads(SERIALIZER.dumps(value))


def _annotated(value: Any, annotation: Any) -> Any:
    return convert(SERIALIZER.loads_plain(SERIALIZER.dumps(value)), annotation)


def _pydantic(value: Any, annotation: Any) -> Any:
    adapter = ADAPTERS[next(k for k, (_, a) in VALUES.items() if a is annotation)]
    return adapter.validate_python(SERIALIZER.loads_plain(SERIALIZER.dumps(value)))


PATHS = {"today": _today, "annotated_msgspec": _annotated, "annotated_pydantic": _pydantic}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("value", list(VALUES))
def test_encode_and_decode(benchmark: BenchmarkFixture, value: str, path: str) -> None:
    """One step value written and read back (what a step commit and its replay cost)."""
    benchmark.group = value
    sample, annotation = VALUES[value]
    decode = PATHS[path]
    assert decode(sample, annotation) == sample
    benchmark(decode, sample, annotation)
