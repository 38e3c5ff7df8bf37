from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import math
import uuid
import zoneinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepstone.errors import SerializationError
from stepstone.persistence.serialization import (
    JsonSerializer,
    Serializer,
    check_size,
    describe_type,
)


@dataclasses.dataclass
class Shipment:
    sku: str
    dims: tuple[int, int, int]
    shipped_at: dt.datetime
    tags: list[str]


@dataclasses.dataclass(frozen=True)
class Address:
    street: str
    number: int


@dataclasses.dataclass
class Customer:
    name: str
    address: Address
    balance: decimal.Decimal


@dataclasses.dataclass
class Doubled:
    base: int
    twice: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.twice = self.base * 2


class Plain:
    """A class that is not a dataclass."""


class Outer:
    class Inner:
        pass


def assert_same(expected: Any, actual: Any, path: str = "value") -> None:
    """Assert equal values of identical types, recursively through containers."""
    assert type(actual) is type(expected), f"{path}: {type(actual)!r} != {type(expected)!r}"
    kind = type(expected)
    if kind is float and math.isnan(expected):
        assert math.isnan(actual), f"{path}: {actual!r} is not nan"
    elif kind in (list, tuple):
        assert len(actual) == len(expected), f"{path}: length differs"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            assert_same(e, a, f"{path}[{i}]")
    elif kind is dict:
        assert len(actual) == len(expected), f"{path}: size differs"
        for (ek, ev), (ak, av) in zip(expected.items(), actual.items(), strict=True):
            assert_same(ek, ak, f"{path} key {ek!r}")
            assert_same(ev, av, f"{path}[{ek!r}]")
    elif kind in (set, frozenset):
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"
        members = {item: item for item in actual}
        for item in expected:
            assert_same(item, members[item], f"{path} member {item!r}")
    elif dataclasses.is_dataclass(expected):
        for field in dataclasses.fields(expected):
            assert_same(
                getattr(expected, field.name), getattr(actual, field.name), f"{path}.{field.name}"
            )
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"
        if kind is decimal.Decimal:
            assert actual.as_tuple() == expected.as_tuple(), f"{path}: exponent or digits differ"
        if kind in (dt.datetime, dt.time):
            assert actual.utcoffset() == expected.utcoffset(), f"{path}: offset differs"
            assert actual.fold == expected.fold, f"{path}: fold differs"
            assert zone_of(actual) == zone_of(expected), f"{path}: time zone differs"


def zone_of(value: dt.datetime | dt.time) -> tuple[Any, ...] | None:
    """What identifies a value's time zone: a ZoneInfo's key, a fixed offset and its name."""
    zone = value.tzinfo
    if zone is None:
        return None
    if isinstance(zone, ZoneInfo):
        return ("zoneinfo", zone.key)
    if isinstance(zone, dt.timezone):
        return ("fixed", zone.utcoffset(None), zone.tzname(None))
    return ("other", repr(zone))


def roundtrip(value: Any) -> Any:
    serializer = JsonSerializer()
    text = serializer.dumps(value)
    assert isinstance(text, str)
    return serializer.loads(text)


@pytest.mark.parametrize(
    ("expected", "actual"),
    [
        (1, 1.0),
        (1, True),
        ([1], [1.0]),
        ((1, 2), [1, 2]),
        ({1: "a"}, {1.0: "a"}),
        ({"k": (1,)}, {"k": [1]}),
        ({frozenset({1})}, {frozenset({True})}),
        (decimal.Decimal("1.10"), decimal.Decimal("1.1")),
        (float("nan"), 0.0),
        (dt.datetime(2024, 1, 1, fold=1), dt.datetime(2024, 1, 1)),
        (
            dt.datetime(2024, 7, 1, 12, tzinfo=ZoneInfo("Europe/Paris")),
            dt.datetime(2024, 7, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        ),
        (
            dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1), "CET")),
            dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        ),
    ],
)
def test_assert_same_detects_equal_values_of_different_types(expected: Any, actual: Any) -> None:
    """The comparison helper rejects values that == hides (1 vs 1.0 vs True, tuple vs list)."""
    with pytest.raises(AssertionError):
        assert_same(expected, actual)


SCALARS = [
    None,
    True,
    False,
    0,
    -7,
    2**200,
    -(3**150),
    0.0,
    -1.5,
    1e-300,
    float("inf"),
    float("-inf"),
    "",
    "plain",
    "unicode: é ü 中文 🎉 \u0000 \n",
]


@pytest.mark.parametrize("value", SCALARS, ids=repr)
def test_scalars_round_trip_exactly(value: Any) -> None:
    """None, bools, ints (huge too), floats (inf too) and unicode strings keep value and type."""
    assert_same(value, roundtrip(value))


def test_nan_round_trips_as_nan() -> None:
    """A float nan comes back as a float nan."""
    result = roundtrip(float("nan"))
    assert type(result) is float
    assert math.isnan(result)


def test_nan_inside_containers_round_trips() -> None:
    """nan nested in a list and a dict value comes back as nan."""
    assert_same([float("nan"), {"x": float("nan")}], roundtrip([float("nan"), {"x": float("nan")}]))


def test_list_and_nested_dicts_round_trip() -> None:
    """Lists and string-keyed dicts nested in each other keep structure, order and leaf types."""
    value = {"a": [1, 2.0, "3", None, True], "b": {"c": {"d": []}, "e": {}}, "f": [[{"g": 1}]]}
    assert_same(value, roundtrip(value))


def test_string_keyed_dict_is_plain_json() -> None:
    """A string-keyed dict of JSON values serializes to an ordinary JSON object."""
    value = {"a": 1, "b": [True, None]}
    assert json.loads(JsonSerializer().dumps(value)) == value


@pytest.mark.parametrize(
    "value",
    [
        {1: "one", 2: "two"},
        {(1, 2): "pair", (): "empty"},
        {1: "int", "1": "str", 1.5: "float", None: "none"},
        {True: [1], (1, ("nested",)): {2: 3}},
    ],
    ids=["int keys", "tuple keys", "mixed keys", "nested keys"],
)
def test_dict_with_non_string_keys_round_trips(value: dict[Any, Any]) -> None:
    """Dicts whose keys are not strings come back with the same keys, key types and order."""
    assert_same(value, roundtrip(value))


def test_dict_with_reserved_tag_key_round_trips() -> None:
    """A dict whose keys include the literal "__stepstone__" comes back as that dict."""
    value = {"__stepstone__": "tuple", "v": [1, 2], "other": (3,)}
    assert_same(value, roundtrip(value))


def test_dict_with_only_the_reserved_key_round_trips() -> None:
    """A dict holding only the "__stepstone__" key is not mistaken for a tagged value."""
    value = {"__stepstone__": None}
    assert_same(value, roundtrip(value))


@pytest.mark.parametrize(
    "value",
    [(), (1,), (1, "a", None), ((1, 2), ((3,), ())), ([1, (2,)], {"k": (3, 4)})],
    ids=repr,
)
def test_tuples_round_trip_as_tuples(value: tuple[Any, ...]) -> None:
    """Tuples, nested and empty, come back as tuples rather than lists."""
    assert_same(value, roundtrip(value))


@pytest.mark.parametrize(
    "value",
    [
        set(),
        {1, 2, 3},
        {"a", (1, 2), frozenset({3})},
        frozenset(),
        frozenset({1.5, "x", (1, (2,))}),
    ],
    ids=repr,
)
def test_sets_and_frozensets_round_trip(value: set[Any] | frozenset[Any]) -> None:
    """Sets and frozensets come back as the same kind with members of the same types."""
    assert_same(value, roundtrip(value))


@pytest.mark.parametrize(
    "value",
    [b"", b"ascii", "é中".encode(), b"\xff\xfe\x00\x80invalid utf-8", bytes(range(256))],
    ids=repr,
)
def test_bytes_round_trip(value: bytes) -> None:
    """Bytes, including bytes that are not valid UTF-8, come back byte for byte."""
    assert_same(value, roundtrip(value))


IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
NEGATIVE_OFFSET = dt.timezone(dt.timedelta(hours=-3, minutes=-15))


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2024, 2, 29, 13, 45, 7, 123456),
        dt.datetime(2024, 2, 29, 13, 45, 7, 1, tzinfo=dt.UTC),
        dt.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=IST),
        dt.datetime(2000, 1, 1, tzinfo=NEGATIVE_OFFSET),
    ],
    ids=["naive", "utc", "ist", "negative offset"],
)
def test_datetimes_round_trip_with_offset_and_microseconds(value: dt.datetime) -> None:
    """Naive and aware datetimes keep microseconds, awareness and their UTC offset."""
    result = roundtrip(value)
    assert_same(value, result)
    assert (result.tzinfo is None) == (value.tzinfo is None)
    assert result.microsecond == value.microsecond


def test_naive_datetime_stays_naive() -> None:
    """A naive datetime does not come back aware (aware and naive never compare equal)."""
    value = dt.datetime(2024, 1, 1, 0, 0, 0, 5)
    assert roundtrip(value).tzinfo is None


@pytest.mark.parametrize(
    "value",
    [
        dt.date(2024, 2, 29),
        dt.date(1, 1, 1),
        dt.time(0, 0),
        dt.time(23, 59, 59, 999999),
        dt.time(12, 30, 0, 5, tzinfo=IST),
    ],
    ids=repr,
)
def test_dates_and_times_round_trip(value: dt.date | dt.time) -> None:
    """Dates stay dates (not datetimes) and times keep microseconds and offset."""
    assert_same(value, roundtrip(value))


PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")  # a 30-minute daylight saving shift


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2024, 7, 1, 19, 0, tzinfo=PARIS),
        dt.datetime(2024, 1, 15, 8, 30, 0, 250, tzinfo=NEW_YORK),
        dt.datetime(2024, 4, 7, 1, 45, fold=1, tzinfo=LORD_HOWE),
        dt.datetime(2024, 1, 1, tzinfo=ZoneInfo("UTC")),
        dt.datetime(1, 1, 1, tzinfo=ZoneInfo("Asia/Kolkata")),
    ],
    ids=["paris summer", "new york winter", "lord howe fold", "zoneinfo utc", "year 1"],
)
def test_zoneinfo_datetimes_keep_their_zone(value: dt.datetime) -> None:
    """A datetime in a ZoneInfo comes back in the same ZoneInfo (same key), not a fixed offset."""
    result = roundtrip(value)
    assert_same(value, result)
    assert isinstance(result.tzinfo, ZoneInfo)
    assert result.tzinfo.key == value.tzinfo.key  # type: ignore[union-attr]


def test_zoneinfo_datetime_arithmetic_across_dst_matches_the_original() -> None:
    """Adding a day across the spring change gives the same instant on the decoded value as on
    the original (a fixed offset would be an hour off: the reported 17:00Z vs 16:00Z)."""
    before = dt.datetime(2024, 3, 30, 18, 0, tzinfo=PARIS)
    decoded = roundtrip(before)
    later = decoded + dt.timedelta(days=1)
    assert later == before + dt.timedelta(days=1)
    assert later.astimezone(dt.UTC) == dt.datetime(2024, 3, 31, 16, 0, tzinfo=dt.UTC)
    assert later.utcoffset() == dt.timedelta(hours=2)


@pytest.mark.parametrize("fold", [0, 1])
def test_ambiguous_wall_time_keeps_its_fold(fold: int) -> None:
    """2024-11-03 01:30 in New York happens twice: fold 0 and fold 1 come back distinct (in
    offset and instant) and each equal to its original, and so does an hour later."""
    value = dt.datetime(2024, 11, 3, 1, 30, fold=fold, tzinfo=NEW_YORK)
    result = roundtrip(value)
    assert_same(value, result)
    assert result.fold == fold
    assert result.utcoffset() == dt.timedelta(hours=-4 - fold)
    assert result.timestamp() == value.timestamp()
    assert_same(value + dt.timedelta(hours=1), result + dt.timedelta(hours=1))
    other = roundtrip(value.replace(fold=1 - fold))
    assert other.timestamp() != result.timestamp()
    assert other.utcoffset() != result.utcoffset()


@pytest.mark.parametrize("fold", [0, 1])
def test_wall_time_in_the_spring_gap_round_trips(fold: int) -> None:
    """2024-03-10 02:30 does not exist in New York; it comes back with the same wall time, fold
    and offset, so it resolves to the same instant as the original."""
    value = dt.datetime(2024, 3, 10, 2, 30, fold=fold, tzinfo=NEW_YORK)
    result = roundtrip(value)
    assert_same(value, result)
    assert result.timestamp() == value.timestamp()


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2024, 11, 3, 1, 30, fold=1),
        dt.time(1, 30, fold=1),
        dt.time(1, 30, fold=1, tzinfo=IST),
        dt.datetime(2024, 1, 1, 12, fold=1, tzinfo=dt.UTC),
    ],
    ids=repr,
)
def test_fold_is_kept_on_naive_and_aware_values(value: dt.datetime | dt.time) -> None:
    """fold=1 survives for naive datetimes, times and fixed-offset values too."""
    result = roundtrip(value)
    assert_same(value, result)
    assert result.fold == 1


@pytest.mark.parametrize(
    "value",
    [dt.time(9, 15, tzinfo=PARIS), dt.time(23, 59, 59, 999999, fold=1, tzinfo=NEW_YORK)],
    ids=repr,
)
def test_times_keep_their_zoneinfo(value: dt.time) -> None:
    """A time with a ZoneInfo (which has no offset without a date) keeps the zone."""
    result = roundtrip(value)
    assert_same(value, result)
    assert result.tzinfo is value.tzinfo


@pytest.mark.parametrize(
    "zone",
    [
        dt.timezone(dt.timedelta(hours=1), "CET"),
        dt.timezone(dt.timedelta(hours=-3, minutes=-15), "Somewhere"),
        dt.timezone(dt.timedelta(0), "GMT"),
        dt.timezone(dt.timedelta(hours=5, minutes=30)),
        dt.timezone(dt.timedelta(seconds=1, microseconds=7)),
        dt.timezone(dt.timedelta(microseconds=1)),
        dt.timezone(-dt.timedelta(microseconds=500), "tiny"),
    ],
    ids=repr,
)
def test_fixed_offset_zones_keep_offset_and_name(zone: dt.timezone) -> None:
    """A datetime.timezone comes back with the same offset and the same name (given or not)."""
    value = dt.datetime(2024, 6, 1, 12, tzinfo=zone)
    result = roundtrip(value)
    assert_same(value, result)
    assert result.tzinfo == zone
    assert result.tzname() == value.tzname()


def test_utc_stays_the_utc_singleton() -> None:
    """A UTC datetime comes back with datetime.UTC itself, stored without extra fields."""
    value = dt.datetime(2024, 6, 1, 12, tzinfo=dt.UTC)
    assert roundtrip(value).tzinfo is dt.UTC
    assert json.loads(JsonSerializer().dumps(value)) == {
        "__stepstone__": "datetime",
        "v": "2024-06-01T12:00:00+00:00",
    }


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (
            '{"__stepstone__":"datetime","v":"2024-11-03T01:30:00-05:00"}',
            dt.datetime(2024, 11, 3, 1, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        ),
        (
            '{"__stepstone__":"datetime","v":"2024-01-01T00:00:00.000007"}',
            dt.datetime(2024, 1, 1, 0, 0, 0, 7),
        ),
        ('{"__stepstone__":"time","v":"12:30:00+05:30"}', dt.time(12, 30, tzinfo=IST)),
    ],
)
def test_values_stored_in_the_older_form_decode_as_before(stored: str, expected: Any) -> None:
    """A datetime or time stored before zones and fold were kept reads back as it always did."""
    assert_same(expected, JsonSerializer().loads(stored))


def test_older_readers_see_the_offset_of_a_zoneinfo_datetime() -> None:
    """The stored ISO text of a ZoneInfo datetime holds its UTC offset, so a reader that ignores
    the zone key still gets the right instant."""
    value = dt.datetime(2024, 11, 3, 1, 30, fold=1, tzinfo=NEW_YORK)
    stored = json.loads(JsonSerializer().dumps(value))
    assert stored == {
        "__stepstone__": "datetime",
        "v": "2024-11-03T01:30:00-05:00",
        "z": "America/New_York",
        "f": 1,
    }
    # (PEP 495: a time in the fold never compares equal across zones; compare instants.)
    assert dt.datetime.fromisoformat(stored["v"]).timestamp() == value.timestamp()


@pytest.mark.parametrize("key", ["Mars/Olympus_Mons", "../etc/passwd", ""])
def test_unknown_zone_key_raises_value_error_naming_it(key: str) -> None:
    """Decoding a ZoneInfo key this machine does not know raises ValueError naming the key."""
    stored = json.dumps({"__stepstone__": "datetime", "v": "2024-01-01T00:00:00+01:00", "z": key})
    with pytest.raises(ValueError, match="time zone") as info:
        JsonSerializer().loads(stored)
    assert repr(key) in str(info.value)
    assert "tzdata" in str(info.value)


def test_zoneinfo_without_a_key_keeps_its_offset() -> None:
    """A ZoneInfo read from a file (it has no key) is stored by its UTC offset, as other tzinfo
    classes are: the instant survives, the zone cannot."""
    files = [Path(root) / "Europe" / "Paris" for root in zoneinfo.TZPATH]
    found = [path for path in files if path.is_file()]
    if not found:
        pytest.skip("no system time zone database to read a zone file from")
    with found[0].open("rb") as file:
        keyless = ZoneInfo.from_file(file)
    value = dt.datetime(2024, 7, 1, 12, tzinfo=keyless)
    result = roundtrip(value)
    assert result == value
    assert result.utcoffset() == dt.timedelta(hours=2)
    assert isinstance(result.tzinfo, dt.timezone)


_FIXED_ZONES = st.builds(
    dt.timezone,
    st.timedeltas(
        min_value=dt.timedelta(hours=-23, minutes=-59), max_value=dt.timedelta(hours=23, minutes=59)
    ),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=8),
) | st.builds(
    dt.timezone,
    st.timedeltas(
        min_value=dt.timedelta(hours=-23, minutes=-59), max_value=dt.timedelta(hours=23, minutes=59)
    ),
)
_ZONES = st.none() | st.just(dt.UTC) | st.timezones() | _FIXED_ZONES


@given(
    value=st.datetimes(timezones=_ZONES, allow_imaginary=True),
    fold=st.integers(min_value=0, max_value=1),
)
def test_datetimes_round_trip_exactly(value: dt.datetime, fold: int) -> None:
    """Any datetime, naive or in any zone, with either fold, comes back with the same wall
    time, fold, zone (ZoneInfo key, or offset and name) and offset, and behaves the same."""
    value = value.replace(fold=fold)
    result = roundtrip(value)
    assert_same(value, result)
    assert result.replace(tzinfo=None) == value.replace(tzinfo=None)
    if value.tzinfo is not None and dt.MINYEAR < value.year < dt.MAXYEAR:
        assert_same(value + dt.timedelta(days=1), result + dt.timedelta(days=1))


@given(
    value=st.times(timezones=_ZONES),
    fold=st.integers(min_value=0, max_value=1),
)
def test_times_round_trip_exactly(value: dt.time, fold: int) -> None:
    """Any time, naive or in any zone, with either fold, comes back the same."""
    value = value.replace(fold=fold)
    assert_same(value, roundtrip(value))


@pytest.mark.parametrize(
    "value",
    [
        dt.timedelta(0),
        dt.timedelta(days=3, seconds=7, microseconds=11),
        dt.timedelta(microseconds=-1),
        dt.timedelta(days=-5, hours=-3, microseconds=-250),
        dt.timedelta(days=999999999, seconds=86399, microseconds=999999),
    ],
    ids=repr,
)
def test_timedeltas_round_trip_including_negative(value: dt.timedelta) -> None:
    """Timedeltas, negative ones included, come back equal to the microsecond."""
    assert_same(value, roundtrip(value))


def test_uuid_round_trips() -> None:
    """A UUID comes back as a uuid.UUID, not as its string."""
    value = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert_same(value, roundtrip(value))
    assert_same([value, uuid.UUID(int=0)], roundtrip([value, uuid.UUID(int=0)]))


@pytest.mark.parametrize(
    "text",
    [
        "0",
        "1.10",
        "-0.000",
        "1E+3",
        "3.14159265358979323846264338327950288419716939937510582097494459230781640628620899",
        "123456789012345678901234567890.123456789012345678901234567890",
    ],
)
def test_decimals_round_trip_with_exponent_and_precision(text: str) -> None:
    """Decimals keep every digit and their exponent ("1.10" stays "1.10", not "1.1")."""
    value = decimal.Decimal(text)
    result = roundtrip(value)
    assert_same(value, result)
    assert str(result) == text


def test_dataclass_nested_in_list_round_trips() -> None:
    """A dataclass inside a list comes back as the class, its tuple and datetime intact."""
    when = dt.datetime(2024, 5, 1, 8, 30, 0, 250000, tzinfo=IST)
    value = [Shipment("SKU-1", (10, 20, 30), when, ["fragile"]), "trailer"]
    result = roundtrip(value)
    assert_same(value, result)
    assert isinstance(result[0], Shipment)


def test_dataclass_containing_dataclass_round_trips() -> None:
    """A dataclass holding a frozen dataclass and a Decimal comes back field for field."""
    value = Customer("Ada", Address("Main St", 12), decimal.Decimal("10.50"))
    assert_same(value, roundtrip(value))


def test_dataclass_with_init_false_field_round_trips() -> None:
    """A dataclass with a field(init=False) computed in __post_init__ round-trips."""
    value = Doubled(21)
    assert_same(value, roundtrip(value))


def test_kitchen_sink_round_trips() -> None:
    """Every supported type mixed in one structure keeps values and types."""
    value = {
        "ids": {uuid.UUID(int=1), uuid.UUID(int=2)},
        (1, "k"): frozenset({b"\x00", dt.date(2020, 1, 1)}),
        "times": [dt.time(1, 2, 3), dt.timedelta(seconds=-1), decimal.Decimal("2.500")],
        "ship": Shipment("S", (1, 2, 3), dt.datetime(2020, 1, 1), []),
    }
    assert_same(value, roundtrip(value))


def _function() -> None:
    return None


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (object(), "object"),
        (lambda: None, "function"),
        (_function, "function"),
        (Plain(), f"{__name__}.Plain"),
        (Shipment, "type"),
        ([1, {"k": Plain()}], f"{__name__}.Plain"),
    ],
    ids=[
        "object",
        "lambda",
        "function",
        "plain instance",
        "dataclass class",
        "nested",
    ],
)
def test_unsupported_types_raise_type_error_naming_the_type(value: Any, type_name: str) -> None:
    """Values of unsupported types raise TypeError whose message names the offending type."""
    with pytest.raises(TypeError, match="cannot be serialized") as info:
        JsonSerializer().dumps(value)
    assert type_name in str(info.value)


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("é" * 5, 10),  # 10 bytes, exactly the limit
        ("€" * 4, 12),  # 12 bytes in 4 characters
        ("𝄞", 4),  # one 4-byte character
        ("a" * 100, 100),
        ("", 0),
    ],
)
def test_check_size_accepts_text_at_or_under_the_limit(text: str, limit: int) -> None:
    """check_size is silent when the UTF-8 size is at most the limit."""
    check_size(text, limit, "the result")


@pytest.mark.parametrize(
    ("text", "limit", "size"),
    [
        ("é" * 5, 9, 10),
        ("€" * 4, 11, 12),  # 4 characters, under the limit by count, over it in bytes
        ("𝄞", 3, 4),
        ("a" * 101, 100, 101),
    ],
)
def test_check_size_rejects_text_over_the_limit(text: str, limit: int, size: int) -> None:
    """check_size raises SerializationError naming the UTF-8 size, the limit and the value."""
    with pytest.raises(SerializationError) as info:
        check_size(text, limit, "the result of step 'charge'")
    message = str(info.value)
    assert f"{size} bytes" in message
    assert f"limit of {limit} bytes" in message
    assert "the result of step 'charge'" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, "int"),
        ("s", "str"),
        (None, "NoneType"),
        ([], "list"),
        (decimal.Decimal(1), "decimal.Decimal"),
        (dt.date(2020, 1, 1), "datetime.date"),
        (Plain(), f"{__name__}.Plain"),
        (Outer.Inner(), f"{__name__}.Outer.Inner"),
    ],
)
def test_describe_type_names_builtins_bare_and_others_qualified(value: Any, expected: str) -> None:
    """describe_type gives builtins' bare name and other types' module.Qualname."""
    assert describe_type(value) == expected


def _dataclass_tag(path: str) -> str:
    return json.dumps({"__stepstone__": "dataclass", "t": path, "v": {}})


@pytest.mark.parametrize(
    "path",
    [
        "not_a_module_xyz:Thing",
        f"{__name__}:NoSuchClass",
        f"{__name__}:Plain",
        f"{__name__}:Outer.Missing",
        "json:JSONDecoder",
        ":Thing",
        "..relative_xyz:Thing",
    ],
)
def test_dataclass_tag_of_unknown_class_raises_value_error(path: str) -> None:
    """Decoding a dataclass tag whose class cannot be found raises ValueError naming it."""
    with pytest.raises(ValueError, match="cannot be rebuilt") as info:
        JsonSerializer().loads(_dataclass_tag(path))
    assert path in str(info.value)


def test_unknown_tag_raises_value_error() -> None:
    """Decoding an unknown type tag raises ValueError naming the tag."""
    with pytest.raises(ValueError, match="'mystery'"):
        JsonSerializer().loads('{"__stepstone__":"mystery","v":1}')


class _CustomSerializer:
    def dumps(self, value: Any) -> str:
        return repr(value)

    def loads(self, data: str) -> Any:
        return data


class _DumpsOnly:
    def dumps(self, value: Any) -> str:
        return repr(value)


def test_custom_object_with_dumps_and_loads_is_a_serializer() -> None:
    """Any object with dumps and loads satisfies the runtime-checkable Serializer protocol."""
    assert isinstance(_CustomSerializer(), Serializer)
    assert isinstance(JsonSerializer(), Serializer)


def test_object_without_loads_is_not_a_serializer() -> None:
    """An object lacking loads does not satisfy the Serializer protocol."""
    assert not isinstance(_DumpsOnly(), Serializer)
