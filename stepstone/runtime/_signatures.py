"""What a workflow or step function declares: the arguments it takes and the types of its
parameters and result. Stored inputs and results are rebuilt by these types
(`persistence._typed`); arguments are checked against them before anything is written.

The annotations are resolved once per function, at its first use (not at decoration, so
that a type defined further down its module resolves), with `typing.get_type_hints`; an
annotation that cannot be resolved there is treated as absent.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stepstone.errors import UsageError
from stepstone.persistence._typed import UNTYPED, convert

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["FunctionTypes", "check_arguments", "decode_arguments", "function_types"]


@dataclass(frozen=True, slots=True)
class FunctionTypes:
    """A function's signature (None if it has none) and resolved annotations."""

    signature: inspect.Signature | None
    parameters: Mapping[str, tuple[Any, Any]]  # name: (kind, annotation)
    returns: Any
    typed: bool  # some parameter has an annotation other than Any


_cache: dict[Callable[..., Any], FunctionTypes] = {}
_lock = threading.Lock()


def function_types(fn: Callable[..., Any]) -> FunctionTypes:
    """The types `fn` declares (cached)."""
    found = _cache.get(fn)
    if found is not None:
        return found
    try:
        signature: inspect.Signature | None = inspect.signature(fn)
    except (TypeError, ValueError):
        signature = None  # a builtin: nothing to check or convert
    hints = _hints(fn)
    parameters = {
        name: (parameter.kind, hints.get(name, UNTYPED))
        for name, parameter in (signature.parameters.items() if signature else ())
    }
    found = FunctionTypes(
        signature,
        parameters,
        hints.get("return", UNTYPED),
        any(annotation is not UNTYPED for _, annotation in parameters.values()),
    )
    with _lock:
        _cache[fn] = found
    return found


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """`fn`'s resolved annotations. One that cannot be resolved (a name imported only for
    type checkers, such as `psycopg.Connection` under TYPE_CHECKING) is left out: that
    value decodes as stored, untyped."""
    with contextlib.suppress(Exception):  # NameError, AttributeError, TypeError...
        return typing.get_type_hints(fn)
    hints: dict[str, Any] = {}
    namespace = getattr(fn, "__globals__", {})
    for name, annotation in getattr(fn, "__annotations__", {}).items():
        try:
            hints[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation  # noqa: S307 - the function's own annotation text, as typing does
        except Exception:  # noqa: BLE001, S112 - left untyped
            continue
    return hints


def decode_arguments(
    fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Stored arguments (read without user types) as `fn`'s annotations describe them.
    ValueError if they do not fit its signature or one cannot be converted."""
    types = function_types(fn)
    if types.signature is None:
        return tuple(args), kwargs
    try:
        bound = types.signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise ValueError(f"they do not fit {types.signature} ({exc})") from None
    if not types.typed:
        return bound.args, bound.kwargs
    arguments = bound.arguments
    for name, value in arguments.items():
        kind, annotation = types.parameters[name]
        if annotation is UNTYPED:
            continue
        try:
            if kind is inspect.Parameter.VAR_POSITIONAL:
                arguments[name] = tuple(convert(item, annotation) for item in value)
            elif kind is inspect.Parameter.VAR_KEYWORD:
                arguments[name] = {key: convert(item, annotation) for key, item in value.items()}
            else:
                arguments[name] = convert(value, annotation)
        except ValueError as exc:
            raise ValueError(f"argument {name!r}: {exc}") from exc
    return bound.args, bound.kwargs


def check_arguments(
    fn: Callable[..., Any],
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    outcome: str,
) -> None:
    """UsageError unless `fn` (workflow `name`) accepts `args` and `kwargs`; `outcome`
    says what did not happen (\"nothing was enqueued\")."""
    signature = function_types(fn).signature
    if signature is None:
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        bare = signature.replace(
            parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
            return_annotation=signature.empty,
        )
        raise UsageError(
            f"the arguments do not fit workflow {name!r}{bare}: {exc} (it does not take "
            f"them); {outcome}"
        ) from None


def check_decodable(
    fn: Callable[..., Any], name: str, read: Callable[[], Any], outcome: str
) -> None:
    """UsageError unless the stored inputs (`read()`: read back without user types, as a
    resuming executor reads them) convert to the annotations of `fn` (workflow `name`): an
    execution that no executor could decode is never written. Nothing is read for a
    function without annotated parameters."""
    try:
        if function_types(fn).typed:
            stored = read()
            decode_arguments(fn, stored["args"], stored["kwargs"])
    except ValueError as exc:
        raise UsageError(
            f"the arguments of workflow {name!r} would not decode by its annotations when it "
            f"resumes: {exc}; {outcome}"
        ) from None
