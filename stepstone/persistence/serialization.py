"""How values are turned into text for the database, and back.

`JsonSerializer` is the default: plain JSON, with tagged objects for the Python types JSON
lacks, so that datetime, date, time, timedelta, UUID, Decimal, bytes, tuples, sets and
dataclasses round-trip exactly. Nothing is ever unpickled. Any object with `dumps` and
`loads` (the `Serializer` protocol) can replace it.

A datetime or time is stored as its ISO text (wall time and UTC offset, what any reader
understands) and, beside it, what the ISO text cannot say: the IANA key of a `ZoneInfo`
(`"z"`), the name given to a fixed-offset `datetime.timezone` (`"n"`), a fixed offset with
a fraction of a second in microseconds (`"o"`: `fromisoformat` misreads some) and `fold=1`
(`"f"`). So a ZoneInfo datetime comes back with its zone, and arithmetic across a daylight
saving change gives the same result on replay as on the first run. Values stored before
these fields existed read as they always did. Other tzinfo classes keep their UTC offset.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import json
import pathlib
import sys
import uuid
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable
from zoneinfo import ZoneInfo

import msgspec

from stepstone.errors import SerializationError

__all__ = [
    "DEFAULT_MAX_SIZE",
    "Described",
    "JsonSerializer",
    "Serializer",
    "check_size",
    "describe_type",
    "described",
    "unstorable",
]

DEFAULT_MAX_SIZE = 1024 * 1024
"""Default limit on one serialized value: 1 MiB."""

_TAG = "__stepstone__"

_Clock = TypeVar("_Clock", dt.datetime, dt.time)
_MICROSECOND = dt.timedelta(microseconds=1)


@runtime_checkable
class Serializer(Protocol):
    """Turns values into text and back. `loads(dumps(v))` must equal `v`."""

    def dumps(self, value: Any) -> str:
        """Return the text form of `value`; raise TypeError or ValueError if it has none."""
        ...

    def loads(self, data: str) -> Any:
        """Return the value that `dumps` turned into `data`."""
        ...


def describe_type(value: object) -> str:
    """The qualified name of a value's type, as error messages show it."""
    kind = type(value)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


Described = str | Callable[[], str]
"""What a value is, for error messages; a callable is only called when an error is raised
(so that the hot path does not format descriptions it will not use)."""


def described(what: Described) -> str:
    """The text of a description."""
    return what if isinstance(what, str) else what()


def check_size(text: str, limit: int, what: Described) -> None:
    """Raise SerializationError if `text` is not valid UTF-8 text (lone surrogates) or
    encodes to more than `limit` bytes."""
    try:
        size = len(text.encode())
    except UnicodeEncodeError as exc:
        raise SerializationError(
            f"{described(what)} contains text that is not valid Unicode ({exc.reason} at position "
            f"{exc.start}): PostgreSQL cannot store it; clean the string first"
        ) from exc
    if size > limit:
        raise SerializationError(
            f"{described(what)} is {size} bytes once serialized, over the limit of {limit} bytes: "
            "store large data elsewhere and pass a reference, or raise max_value_size"
        )


def unstorable(text: str) -> str | None:
    """Why PostgreSQL cannot store `text` in a text column (a NUL character, or a lone
    surrogate, which is not valid Unicode), or None if it can."""
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "is not valid Unicode text (it holds a lone surrogate)"
    return None


class JsonSerializer:
    """JSON with exact round trips for the common Python types beyond JSON's own."""

    def dumps(self, value: Any) -> str:
        return json.dumps(_encode(value), ensure_ascii=False, separators=(",", ":"), allow_nan=True)

    def loads(self, data: str) -> Any:
        # One decoder for all calls: json.loads with an object_hook builds a new one each time.
        return _DECODER.decode(data)

    def loads_plain(self, data: str) -> Any:
        """As `loads`, but a stored dataclass is the dict of its fields: nothing depends on
        which classes this process imported (the function's annotations rebuild them)."""
        return _PLAIN_DECODER.decode(data)


def _encode(value: Any) -> Any:
    # Exact type checks first: bool and int are the overwhelmingly common leaves.
    kind = type(value)
    if kind in (str, int, float, bool) or value is None:
        return value
    if kind is list:
        return [_encode(item) for item in value]
    if kind is dict:
        if all(type(key) is str for key in value):
            encoded = {key: _encode(item) for key, item in value.items()}
            if _TAG in encoded:
                return {_TAG: "dict", "v": [[key, item] for key, item in encoded.items()]}
            return encoded
        return {_TAG: "dict", "v": [[_encode(key), _encode(item)] for key, item in value.items()]}
    if kind is tuple:
        return {_TAG: "tuple", "v": [_encode(item) for item in value]}
    if kind is dt.datetime:
        return _encode_clock("datetime", value)
    if kind is dt.date:
        return {_TAG: "date", "v": value.isoformat()}
    if kind is dt.time:
        return _encode_clock("time", value)
    if kind is dt.timedelta:
        return {_TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if kind is uuid.UUID:
        return {_TAG: "uuid", "v": str(value)}
    if kind is decimal.Decimal:
        return {_TAG: "decimal", "v": str(value)}
    if kind is bytes:
        return {_TAG: "bytes", "v": base64.b64encode(value).decode("ascii")}
    if kind is set or kind is frozenset:
        return {_TAG: kind.__name__, "v": [_encode(item) for item in value]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {_TAG: "dataclass", "t": f"{kind.__module__}:{kind.__qualname__}", "v": fields}
    return _encode_other(value)


def _encode_other(value: Any) -> Any:
    """Values of users' types, written as the plain values they stand for (the reader's
    annotations rebuild them)."""
    if isinstance(value, enum.Enum):  # before str and int: IntEnum and StrEnum are both
        return _encode(value.value)
    if isinstance(value, str):
        return str.__str__(value)  # the plain str, whatever the subclass's __str__ says
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, tuple):  # named tuples
        return {_TAG: "tuple", "v": [_encode(item) for item in value]}
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, bytearray):
        return {_TAG: "bytes", "v": base64.b64encode(value).decode("ascii")}
    if isinstance(value, msgspec.Struct):
        return _encode(msgspec.structs.asdict(value))
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        return _encode(value.model_dump())
    if isinstance(value, dict):
        return _encode(dict(value))
    if isinstance(value, list):
        return [_encode(item) for item in value]
    raise TypeError(f"values of type {describe_type(value)} cannot be serialized to JSON")


def _decode(obj: dict[str, Any]) -> Any:
    tag = obj.get(_TAG)
    if tag is None:
        return obj
    v = obj["v"]
    match tag:
        case "tuple":
            return tuple(v)
        case "dict":
            return dict(v)
        case "datetime":
            return _decode_clock(obj, dt.datetime.fromisoformat(v))
        case "date":
            return dt.date.fromisoformat(v)
        case "time":
            return _decode_clock(obj, dt.time.fromisoformat(v))
        case "timedelta":
            return dt.timedelta(days=v[0], seconds=v[1], microseconds=v[2])
        case "uuid":
            return uuid.UUID(v)
        case "decimal":
            return decimal.Decimal(v)
        case "bytes":
            return base64.b64decode(v)
        case "set":
            return set(v)
        case "frozenset":
            return frozenset(v)
        case "dataclass":
            return _build_dataclass(_find_dataclass(obj["t"]), v)
    raise ValueError(f"unknown serialized type tag {tag!r}")


def _encode_clock(tag: str, value: dt.datetime | dt.time) -> dict[str, Any]:
    # The ISO text keeps the wall time and the offset; the zone key, a fixed offset's own
    # name and fold ride beside it, only when present (so UTC and naive values stay small).
    obj: dict[str, Any] = {_TAG: tag, "v": value.isoformat()}
    zone = value.tzinfo
    if zone is not None and zone is not dt.UTC:
        if isinstance(zone, ZoneInfo):
            if zone.key is not None:  # ZoneInfo.from_file() has no key: its offset is kept
                obj["z"] = zone.key
        elif type(zone) is dt.timezone:
            offset = zone.utcoffset(None)
            name = zone.tzname(None)
            if name != dt.timezone(offset).tzname(None):
                obj["n"] = name
            if offset.microseconds:  # fromisoformat() reads +00:00:00.000001 as +00:00
                obj["o"] = offset // _MICROSECOND
    if value.fold:
        obj["f"] = 1
    return obj


def _decode_clock(obj: dict[str, Any], value: _Clock) -> _Clock:
    fold = obj.get("f", 0)
    key = obj.get("z")
    if key is not None:
        return value.replace(tzinfo=_zone(key, obj["v"]), fold=fold)
    name, micros = obj.get("n"), obj.get("o")
    if name is not None or micros is not None:
        offset = value.utcoffset() if micros is None else micros * _MICROSECOND
        if offset is None or not isinstance(name, str | None):
            raise ValueError(f"time zone of {obj['v']!r} is not valid: {name!r}, {micros!r}")
        zone = dt.timezone(offset) if name is None else dt.timezone(offset, name)
        value = value.replace(tzinfo=zone)
    return value.replace(fold=fold) if fold else value


def _zone(key: Any, text: Any) -> ZoneInfo:
    try:
        return ZoneInfo(key)
    except (ValueError, TypeError, LookupError) as exc:  # ZoneInfoNotFoundError is a KeyError
        raise ValueError(
            f"{text!r} is in the time zone {key!r}, which this machine does not know: install "
            "the tzdata package or update the system's time zone database, then read it again"
        ) from exc


def _build_dataclass(kind: Any, values: dict[str, Any]) -> Any:
    fields = dataclasses.fields(kind)
    obj = kind(**{f.name: values[f.name] for f in fields if f.init and f.name in values})
    for f in fields:
        if not f.init and f.name in values:
            object.__setattr__(obj, f.name, values[f.name])  # frozen dataclasses too
    return obj


def _find_dataclass(path: str) -> Any:
    # Only types already imported by this process are used: data never imports modules.
    module_name, _, qualname = path.partition(":")
    module = sys.modules.get(module_name)
    if module is None:
        raise ValueError(
            f"dataclass {path} cannot be rebuilt: module {module_name!r} is not imported in "
            "this process; import it before reading this value"
        )
    target: Any = module
    for part in qualname.split("."):
        target = getattr(target, part, None)
    if not (isinstance(target, type) and dataclasses.is_dataclass(target)):
        raise ValueError(
            f"dataclass {path} cannot be rebuilt: {qualname!r} is not a dataclass there"
        )
    return target


def _decode_plain(obj: dict[str, Any]) -> Any:
    if obj.get(_TAG) == "dataclass":
        fields: dict[str, Any] = obj["v"]
        return fields
    return _decode(obj)


_DECODER = json.JSONDecoder(object_hook=_decode)
_PLAIN_DECODER = json.JSONDecoder(object_hook=_decode_plain)
