"""Values rebuilt by type annotations, as a function declares them.

A stored value is read without any user type (`JsonSerializer.loads_plain`: JSON values,
and the datetime, UUID, Decimal, bytes, tuples and sets the serializer tags), then
converted to the annotation of the parameter or return value it is for: a dict becomes the
annotated dataclass, TypedDict, msgspec struct or pydantic model, a value the enum, a list
the named tuple, a str the `pathlib.Path` or `str` subclass, and so on through containers
(`list[Job]`, `dict[str, Job]`, `Job | None`). A value already of the annotated type is
returned as it is, so a serializer that rebuilds types itself keeps working. No annotation
(or `Any`) leaves the value as read.

The conversion is msgspec's (`msgspec.convert`, in C): it covers dataclasses, named tuples,
TypedDicts, enums, structs, datetimes, UUIDs, Decimals and containers of them, and calls
`_rebuild` for the rest (paths, `str`/`int`/`float`/`bytes` subclasses, pydantic models).
"""

from __future__ import annotations

import pathlib
import typing
from typing import Any

import msgspec

__all__ = ["UNTYPED", "convert"]

UNTYPED: Any = Any
"""The annotation of a value that has none: converted to nothing."""

_PLAIN_BASES = (str, int, float, bytes)


def convert(value: Any, annotation: Any) -> Any:
    """`value` as the type `annotation` describes. ValueError says why it cannot be; an
    annotation the conversion does not understand leaves the value as it is."""
    if annotation is Any or annotation is object:
        return value
    if type(value) is annotation:
        return value
    try:
        plain = _plain[annotation]
    except KeyError:
        plain = _plain.setdefault(annotation, _plain_class(annotation))
    except TypeError:  # an annotation that cannot be a key (Annotated with a list...)
        plain = None
    if plain is not None and type(value) is plain:
        return value  # `dict[str, Any]` and its like: nothing inside to convert
    try:
        return msgspec.convert(value, type=annotation, strict=False, dec_hook=_rebuild)
    except msgspec.ValidationError as exc:
        raise ValueError(f"it is not a valid {_name(annotation)}: {exc}") from exc
    except TypeError as exc:
        if "not supported" in str(exc):  # an annotation msgspec has no conversion for
            return value
        raise ValueError(f"it is not a valid {_name(annotation)}: {exc}") from exc
    except Exception as exc:  # a class whose own annotations do not resolve (NameError)...
        raise ValueError(
            f"it cannot be converted to {_name(annotation)}: {type(exc).__name__}: {exc}"
        ) from exc


_plain: dict[Any, type | None] = {}


def _plain_class(annotation: Any) -> type | None:
    """`dict` for `dict[str, Any]` (or `dict[Any, Any]`), `list` for `list[Any]`: a value of
    that class already is what the annotation describes. None for other annotations."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and args == (Any,):
        return list
    if origin is dict and len(args) == 2 and args[0] in (str, Any) and args[1] is Any:
        return dict
    return None


def _rebuild(kind: Any, value: Any) -> Any:
    """The types msgspec leaves to its caller."""
    if isinstance(kind, type):
        if isinstance(value, kind):
            return value
        if issubclass(kind, pathlib.PurePath) and isinstance(value, str):
            return kind(value)
        if issubclass(kind, _PLAIN_BASES) and isinstance(value, _PLAIN_BASES):
            plain: Any = value
            return kind(plain)
        validate = getattr(kind, "model_validate", None)  # a pydantic model
        if validate is not None:
            return validate(value)
    raise TypeError(f"expected {_name(kind)}, got {type(value).__name__}")


def _name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__qualname__
    return repr(annotation)
