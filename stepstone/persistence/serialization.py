"""How values are turned into text for the database, and back.

`JsonSerializer` is the default: plain JSON, with tagged objects for the Python types JSON
lacks, so that datetime, date, time, timedelta, UUID, Decimal, bytes, tuples, sets and
dataclasses round-trip exactly. Nothing is ever unpickled. Any object with `dumps` and
`loads` (the `Serializer` protocol) can replace it.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import json
import sys
import uuid
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

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
        return json.loads(data, object_hook=_decode)


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
        return {_TAG: "datetime", "v": value.isoformat()}
    if kind is dt.date:
        return {_TAG: "date", "v": value.isoformat()}
    if kind is dt.time:
        return {_TAG: "time", "v": value.isoformat()}
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
            return dt.datetime.fromisoformat(v)
        case "date":
            return dt.date.fromisoformat(v)
        case "time":
            return dt.time.fromisoformat(v)
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
