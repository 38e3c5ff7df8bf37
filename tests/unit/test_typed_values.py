"""Stored values rebuilt by type annotations (persistence._typed and runtime._signatures)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import pathlib
import uuid
from typing import Any, NamedTuple, TypedDict
from zoneinfo import ZoneInfo

import msgspec
import pydantic
import pytest

from stepstone.persistence._typed import convert
from stepstone.persistence.serialization import JsonSerializer
from stepstone.runtime._signatures import decode_arguments, function_types

SERIALIZER = JsonSerializer()


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Mode(enum.StrEnum):
    FAST = "fast"


class Point(NamedTuple):
    x: int
    y: int


class Options(TypedDict):
    retries: int
    at: dt.datetime


class Sku(str):
    pass


class Cents(int):
    pass


@dataclasses.dataclass(frozen=True)
class Job:
    name: str
    due: dt.datetime
    color: Color
    tags: tuple[str, ...] = ()


class Invoice(pydantic.BaseModel):
    number: int
    total: decimal.Decimal
    issued: dt.date


class Shipment(msgspec.Struct):
    id: uuid.UUID
    weight: float


ZONED = dt.datetime(2026, 11, 1, 1, 30, tzinfo=ZoneInfo("America/New_York"), fold=1)

CASES: list[tuple[Any, Any]] = [
    (Color, Color.RED),
    (Level, Level.HIGH),
    (Mode, Mode.FAST),
    (Point, Point(1, 2)),
    (Options, Options(retries=2, at=ZONED)),
    (pathlib.Path, pathlib.Path("/srv/data/in.csv")),
    (bytearray, bytearray(b"\x00raw")),
    (Sku, Sku("sku-1")),
    (Cents, Cents(250)),
    (Job, Job("nightly", ZONED, Color.RED, ("a", "b"))),
    (Invoice, Invoice(number=7, total=decimal.Decimal("10.10"), issued=dt.date(2026, 1, 2))),
    (Shipment, Shipment(uuid.UUID(int=5), 1.5)),
    (list[Job], [Job("a", ZONED, Color.RED)]),
    (dict[str, Point], {"p": Point(3, 4)}),
    (Job | None, None),
    (dt.datetime, ZONED),
    (set[int], {1, 2}),
    (tuple[int, str], (1, "x")),
]


def _round_trip(value: Any, annotation: Any) -> Any:
    return convert(SERIALIZER.loads_plain(SERIALIZER.dumps(value)), annotation)


@pytest.mark.parametrize(("annotation", "value"), CASES, ids=[repr(c[0]) for c in CASES])
def test_values_of_users_types_round_trip_by_their_annotation(annotation: Any, value: Any) -> None:
    """Each supported type comes back equal and of the same type, from its annotation alone."""
    back = _round_trip(value, annotation)
    assert back == value
    assert type(back) is type(value)
    if isinstance(value, dt.datetime):
        assert back.tzinfo == value.tzinfo
        assert back.fold == value.fold


def test_a_dataclass_stored_under_a_main_path_is_rebuilt_by_the_annotation() -> None:
    """A dataclass stored as `__main__:Job` (a script's) decodes by the annotation, not the path."""
    stored = SERIALIZER.dumps(Job("x", ZONED, Color.RED))
    from_script = stored.replace(f'"{__name__}:Job"', '"__main__:Job"')
    assert '"__main__:Job"' in from_script
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        SERIALIZER.loads(from_script)
    assert convert(SERIALIZER.loads_plain(from_script), Job) == Job("x", ZONED, Color.RED)


def test_unannotated_values_decode_as_plain_values() -> None:
    """Without an annotation, a dataclass is the dict of its fields and an enum its value."""
    plain = _round_trip({"job": Job("x", ZONED, Color.RED), "mode": Mode.FAST}, Any)
    assert plain == {"job": {"name": "x", "due": ZONED, "color": "red", "tags": ()}, "mode": "fast"}
    assert type(plain["mode"]) is str


def test_a_value_already_of_the_annotated_type_passes_through_untouched() -> None:
    """What a user's serializer rebuilt itself is returned as the same object."""
    job = Job("x", ZONED, Color.RED)
    assert convert(job, Job) is job
    assert convert(ZONED, dt.datetime) is ZONED


def test_a_value_that_does_not_fit_its_annotation_raises_value_error() -> None:
    """A value the annotation cannot describe raises ValueError naming the type."""
    with pytest.raises(ValueError, match="not a valid Job"):
        convert({"name": "x"}, Job)
    with pytest.raises(ValueError, match="not a valid"):
        convert("blue", Color)


def test_arguments_decode_by_parameter_annotations_including_variadics() -> None:
    """Stored args and kwargs bind to the signature; each converts by its parameter's annotation."""

    def fn(job: Job, *points: Point, untyped: Any = None, **colors: Color) -> None:
        return None

    stored = SERIALIZER.loads_plain(
        SERIALIZER.dumps(
            {
                "args": [Job("a", ZONED, Color.RED), Point(1, 2)],
                "kwargs": {"untyped": Job("b", ZONED, Color.RED), "c": Color.RED},
            }
        )
    )
    args, kwargs = decode_arguments(fn, stored["args"], stored["kwargs"])
    assert args == (Job("a", ZONED, Color.RED), Point(1, 2))
    assert type(args[1]) is Point
    assert kwargs == {"untyped": stored["kwargs"]["untyped"], "c": Color.RED}
    assert isinstance(kwargs["untyped"], dict)
    with pytest.raises(ValueError, match="do not fit"):
        decode_arguments(fn, [], {})


def test_an_annotation_that_cannot_be_resolved_is_treated_as_absent() -> None:
    """A name only imported for type checkers leaves that value untyped, not an error."""
    namespace: dict[str, Any] = {"Job": Job}
    # Compiled with this module's `from __future__ import annotations`: text annotations.
    exec(  # noqa: S102 - a function whose module lacks one of its annotations' names
        "def fn(conn: psycopg.Connection, job: Job) -> Missing: ...", namespace
    )
    types = function_types(namespace["fn"])
    assert types.parameters["job"][1] is Job
    assert types.parameters["conn"][1] is Any
    assert types.returns is Any
