"""Recorded errors: how an exception is stored with a step or an execution, and rebuilt.

The format is a persistence contract: the runtime writes it, the CLI and any reader of the
tables read it.

An error is stored as its type's path, its message, its args and attributes (serialized
when the serializer accepts them) and its traceback. It is rebuilt only from a type that is
already imported in this process and derives from BaseException; otherwise a `StepError`
with the recorded type and message stands in for it. No module is ever imported from data.
"""

from __future__ import annotations

import sys
import traceback
from typing import TYPE_CHECKING, Any

from stepstone.errors import StepError

if TYPE_CHECKING:
    from stepstone.persistence.serialization import Serializer

__all__ = ["encode_error", "error_summary", "rebuild_error"]

_MAX_TRACEBACK = 16 * 1024


def encode_error(exc: BaseException, serializer: Serializer) -> dict[str, Any]:
    """The JSON-ready record of `exc`."""
    kind = type(exc)
    record: dict[str, Any] = {
        "type": f"{kind.__module__}:{kind.__qualname__}",
        "message": str(exc),
        "args": _try_dumps(serializer, list(exc.args)),
        "attrs": _try_dumps(serializer, _attributes(exc))
        if getattr(exc, "__dict__", None)
        else None,
        "traceback": "".join(traceback.format_exception(exc))[-_MAX_TRACEBACK:],
    }
    return record


def error_summary(record: dict[str, Any]) -> tuple[str, str]:
    """(type name as users know it, message) of a recorded error."""
    module, _, qualname = str(record.get("type", "")).partition(":")
    name = qualname if module == "builtins" else f"{module}.{qualname}"
    return name, str(record.get("message", ""))


def rebuild_error(record: dict[str, Any], serializer: Serializer) -> BaseException:
    """The exception a record describes, or a StepError standing in for it."""
    module_name, _, qualname = str(record.get("type", "")).partition(":")
    kind: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        kind = getattr(kind, part, None)
    name, message = error_summary(record)
    if not (isinstance(kind, type) and issubclass(kind, BaseException)):
        return StepError(name, message)
    args = _try_loads(serializer, record.get("args"))
    try:
        exc = kind.__new__(kind, *(args if isinstance(args, list) else [message]))
        exc.args = tuple(args) if isinstance(args, list) else (message,)
        attrs = _try_loads(serializer, record.get("attrs"))
        if isinstance(attrs, dict):
            exc.__dict__.update(attrs)
    except Exception:  # noqa: BLE001 - a type that refuses to be rebuilt gets a stand-in
        return StepError(name, message)
    return exc


def _attributes(exc: BaseException) -> dict[str, Any]:
    return {k: v for k, v in vars(exc).items() if not k.startswith("__")}


def _try_dumps(serializer: Serializer, value: Any) -> str | None:
    try:
        return serializer.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return None


def _try_loads(serializer: Serializer, text: Any) -> Any:
    if not isinstance(text, str):
        return None
    try:
        return serializer.loads(text)
    except (TypeError, ValueError):
        return None
