"""Recorded errors: how an exception is stored with a step or an execution, and rebuilt.

The format is a persistence contract: the runtime writes it, the CLI and any reader of the
tables read it. A record is a JSON object:

- `type`: `"module:Qualname"` of the exception's class; `message`: `str(exc)`;
- `args`: the serializer's text of `exc.args` when all of them serialize, else null (and
  then `args_partial`: the args with null where one does not serialize, if any);
- `attrs`: the serializer's text of the instance attributes that serialize, each tried on
  its own so that one that does not is the only one lost (null when none is left);
- `traceback`: the formatted traceback, its last 16 KiB (a group's members have none: the
  group's own traceback shows theirs);
- only when there is something to say: `fields` (attributes the interpreter keeps outside
  `__dict__`: OSError's errno, strerror, filename and filename2, ImportError's name and
  path, NameError's and AttributeError's name), `notes` (`__notes__`), `group_message` and
  `exceptions` (an exception group's own message and its members' records, recursively),
  `http_headers` (urllib's HTTPError headers as name/value pairs).

Every text in a record can be stored by PostgreSQL: a NUL or a surrogate code point in the
type, message, traceback, notes or headers is escaped (`storable_text`), and a serialized
args or attributes text that would need escaping is dropped (escaped, it would no longer
decode to the same values), so the rebuild falls back on the message.

`encode_error` never raises for whatever the exception holds: a `__str__` or `__repr__` that
raises, values that do not serialize, groups nested without end. (It lets BaseExceptions
such as KeyboardInterrupt through, as the traceback module does.)

`rebuild_error` gives back the recorded type when it is already imported in this process
(no module is ever imported from data): its constructor is tried with the recorded args,
then `__new__` with them, then the same with the message alone; attributes, fields and
notes are put back, and the first candidate whose `str()` is the recorded message wins
(else the first whose `str()` and `repr()` work at all). When none will do, a stand-in
takes its place: a subclass of `StepError` with the recorded type's name, qualname and
module, the recorded message as its `str()`, the notes, and what attributes could be
decoded; a stand-in for an exception group is an ExceptionGroup of the rebuilt members, so
`except*` matches them as it did on the first run.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
import traceback
from typing import TYPE_CHECKING, Any

from stepstone.errors import StepError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from stepstone.persistence.serialization import Serializer

__all__ = ["encode_error", "error_summary", "rebuild_error", "storable_text"]

_MAX_TRACEBACK = 16 * 1024
_MAX_DEPTH = 32
"""Group nesting kept in a record; deeper groups are recorded without their members."""
_MAX_MEMBERS = 10_000
"""Group members kept in one record, all levels together."""
_MAX_STAND_INS = 1024
"""Stand-in classes cached; past this many type paths, stand-ins are made anew each time."""
_STR_FAILED = "<exception str() failed>"  # what the traceback module prints in its place

_FIELDS: tuple[tuple[type[BaseException], tuple[str, ...]], ...] = (
    (OSError, ("errno", "strerror", "filename", "filename2")),
    (ImportError, ("name", "path")),
    (NameError, ("name",)),
    (AttributeError, ("name",)),
)
_FIELD_NAMES = frozenset(name for _, names in _FIELDS for name in names)
_OPTIONAL = ("args_partial", "fields", "http_headers")
_CARRIED = ("args", "attrs", *_OPTIONAL)
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str) -> str:
    """`text` with what PostgreSQL cannot store escaped: a NUL as the four characters `\\x00`,
    a surrogate code point (a lone half of a pair: not valid Unicode) as `\\udcff`. Text
    without them is returned as it is."""
    if _UNSTORABLE.search(text) is None:
        return text
    return _UNSTORABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return "\\x00" if char == "\x00" else f"\\u{ord(char):04x}"


# -- recording -----------------------------------------------------------------------------


def encode_error(exc: BaseException, serializer: Serializer) -> dict[str, Any]:
    """The JSON-ready record of `exc`, every text in it storable by PostgreSQL."""
    try:
        record = _encode(exc, serializer, [_MAX_MEMBERS], 0)
    except Exception:  # noqa: BLE001 - recording a failure must not fail: keep what is certain
        record = {"type": _type_path(type(exc)), "message": _message(exc)}
        record.update(args=None, attrs=None)
    record["traceback"] = _traceback_text(exc, record)
    return record


def _encode(
    exc: BaseException, serializer: Serializer, budget: list[int], depth: int
) -> dict[str, Any]:
    record: dict[str, Any] = {"type": _type_path(type(exc)), "message": _message(exc)}
    own = _instance_dict(exc)
    carried = own.get("__recorded__") if isinstance(exc, _StandIn) else None
    if isinstance(carried, dict):  # a stand-in records again what it was rebuilt from
        record.update(args=carried.get("args"), attrs=carried.get("attrs"))
        record.update({key: carried[key] for key in _OPTIONAL if carried.get(key)})
    else:
        if not isinstance(exc, BaseExceptionGroup):
            record.update(_args(exc, serializer))
        else:
            record["args"] = None  # (message, members): recorded as the two keys below
        record["attrs"] = _attributes(own, serializer)
        fields = _fields(exc, serializer)
        if fields is not None:
            record["fields"] = fields
        headers = _http_headers(exc, own)
        if headers:
            record["http_headers"] = headers
    notes = _notes(own)
    if notes is not None:
        record["notes"] = notes
    if isinstance(exc, BaseExceptionGroup):
        record["group_message"] = storable_text(str(exc.message))
        members = exc.exceptions
        if depth < _MAX_DEPTH and 0 < len(members) <= budget[0]:
            budget[0] -= len(members)
            record["exceptions"] = [
                _encode(member, serializer, budget, depth + 1) for member in members
            ]
    return record


def _type_path(kind: type) -> str:
    try:
        module, qualname = kind.__module__, kind.__qualname__
        if isinstance(module, str) and isinstance(qualname, str):
            return storable_text(f"{module}:{qualname}")
    except Exception:  # noqa: BLE001, S110 - a class with an odd __module__ is named by __name__
        pass
    return storable_text(f"builtins:{kind.__name__}")


def _message(exc: BaseException) -> str:
    return _safe_str(exc, _STR_FAILED)


def _safe_str(value: object, failed: str) -> str:
    try:
        return storable_text(str(value))
    except Exception:  # noqa: BLE001 - a __str__ that raises leaves a placeholder
        return failed


def _dumps(serializer: Serializer, value: Any) -> str | None:
    """The serializer's text of `value`, or None if it has none PostgreSQL can store."""
    try:
        text = serializer.dumps(value)
    except Exception:  # noqa: BLE001 - pluggable serializers may raise anything
        return None
    if not isinstance(text, str) or _UNSTORABLE.search(text) is not None:
        return None
    return text


def _args(exc: BaseException, serializer: Serializer) -> dict[str, Any]:
    args = list(exc.args)
    text = _dumps(serializer, args)
    if text is not None or not args:
        return {"args": text}
    kept = [value if _dumps(serializer, value) is not None else None for value in args]
    partial = _dumps(serializer, kept)
    return {"args": None, "args_partial": partial} if partial is not None else {"args": None}


def _instance_dict(exc: BaseException) -> dict[Any, Any]:
    # Read the instance dict directly: a class's __getattr__ (urllib's HTTPError has one that
    # raises KeyError) never runs, and an odd __dict__ reads as empty.
    try:
        found = object.__getattribute__(exc, "__dict__")
        return dict(dict.items(found)) if isinstance(found, dict) else {}
    except Exception:  # noqa: BLE001
        return {}


def _attributes(own: dict[Any, Any], serializer: Serializer) -> str | None:
    kept = {
        key: value
        for key, value in own.items()
        if isinstance(key, str)
        and not key.startswith("__")
        and _dumps(serializer, value) is not None
    }
    return _dumps(serializer, kept) if kept else None


def _fields(exc: BaseException, serializer: Serializer) -> str | None:
    kept: dict[str, Any] = {}
    for base, names in _FIELDS:
        if isinstance(exc, base):
            for name in names:
                try:
                    value = getattr(exc, name)
                except Exception:  # noqa: BLE001, S112 - a field that cannot be read is skipped
                    continue
                if value is not None and _dumps(serializer, value) is not None:
                    kept[name] = value
    return _dumps(serializer, kept) if kept else None


def _notes(own: dict[Any, Any]) -> list[str] | None:
    notes = own.get("__notes__")
    if not isinstance(notes, list | tuple):
        return None
    return [_safe_str(note, "<note str() failed>") for note in notes]


def _http_error_type() -> type[BaseException] | None:
    # Only when urllib.error is already imported: an HTTPError cannot exist otherwise.
    kind = getattr(sys.modules.get("urllib.error"), "HTTPError", None)
    return kind if isinstance(kind, type) and issubclass(kind, BaseException) else None


def _http_headers(exc: BaseException, own: dict[Any, Any]) -> list[list[str]] | None:
    http_error = _http_error_type()
    if http_error is None or not isinstance(exc, http_error):
        return None
    try:
        items = own["hdrs"].items()
        return [[_safe_str(name, ""), _safe_str(value, "")] for name, value in items]
    except Exception:  # noqa: BLE001 - no headers (None), or not a mapping of headers
        return None


def _traceback_text(exc: BaseException, record: dict[str, Any]) -> str:
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception:  # noqa: BLE001 - an exception that breaks the formatter, or a deep group
        try:
            text = "".join(traceback.format_tb(exc.__traceback__))
        except Exception:  # noqa: BLE001
            text = ""
        name, message = error_summary(record)
        text += f"{name}: {message}\n"
    return storable_text(text)[-_MAX_TRACEBACK:]


# -- reading -------------------------------------------------------------------------------


def error_summary(record: Any) -> tuple[str, str]:
    """(type name as users know it, message) of a recorded error."""
    if not isinstance(record, dict):
        return "", ""
    module, _, qualname = str(record.get("type", "")).partition(":")
    name = qualname if module == "builtins" else f"{module}.{qualname}"
    return name, str(record.get("message", ""))


def rebuild_error(record: dict[str, Any], serializer: Serializer) -> BaseException:
    """The exception a record describes, or a stand-in of the same name (a StepError)."""
    try:
        return _rebuild(record, serializer, [_MAX_MEMBERS], 0)
    except Exception:  # noqa: BLE001 - a malformed record still gives the caller an error
        return StepError(*error_summary(record))


@dataclasses.dataclass
class _Parts:
    """What a record holds, decoded."""

    message: str
    args: list[Any] | None
    partial: list[Any] | None
    attrs: dict[str, Any]
    fields: dict[str, Any]
    notes: list[str] | None
    headers: list[list[str]] | None
    group_message: str


def _rebuild(record: Any, serializer: Serializer, budget: list[int], depth: int) -> BaseException:
    if not isinstance(record, dict):
        record = {}
    path = str(record.get("type", ""))
    parts = _decode(record, serializer)
    members = _members(record, serializer, budget, depth)
    kind = _find_type(path)
    if kind is not None:
        exc = _best(kind, _candidates(kind, parts, members), parts)
        if exc is not None:
            return exc
    return _stand_in(path, parts, members, record)


def _decode(record: dict[str, Any], serializer: Serializer) -> _Parts:
    args = _loads(serializer, record.get("args"))
    partial = _loads(serializer, record.get("args_partial"))
    attrs = _loads(serializer, record.get("attrs"))
    fields = _loads(serializer, record.get("fields"))
    notes = record.get("notes")
    headers = record.get("http_headers")
    message = str(record.get("message", ""))
    group_message = record.get("group_message")
    return _Parts(
        message=message,
        args=args if isinstance(args, list) else None,
        partial=partial if isinstance(partial, list) else None,
        attrs={
            k: v
            for k, v in (attrs.items() if isinstance(attrs, dict) else ())
            if isinstance(k, str) and not k.startswith("__")
        },
        fields={
            k: v
            for k, v in (fields.items() if isinstance(fields, dict) else ())
            if k in _FIELD_NAMES
        },
        notes=[str(n) for n in notes] if isinstance(notes, list) else None,
        headers=[
            [str(h[0]), str(h[1])]
            for h in (headers if isinstance(headers, list) else ())
            if isinstance(h, list) and len(h) == 2
        ]
        or None,
        group_message=group_message if isinstance(group_message, str) else message,
    )


def _loads(serializer: Serializer, text: Any) -> Any:
    if not isinstance(text, str):
        return None
    try:
        return serializer.loads(text)
    except Exception:  # noqa: BLE001 - what cannot be decoded is left out of the rebuild
        return None


def _members(
    record: dict[str, Any], serializer: Serializer, budget: list[int], depth: int
) -> list[BaseException] | None:
    records = record.get("exceptions")
    if not isinstance(records, list) or not records:
        return None
    if depth >= _MAX_DEPTH or len(records) > budget[0]:
        return None
    budget[0] -= len(records)
    return [_rebuild(member, serializer, budget, depth + 1) for member in records]


def _find_type(path: str) -> type[BaseException] | None:
    # Only what is already imported, read from namespaces' own dicts: a module's __getattr__
    # (which may import) never runs. No module is imported from data.
    module_name, _, qualname = path.partition(":")
    found: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        if found is None:
            return None
        try:
            found = vars(found).get(part)
        except TypeError:
            return None
    if isinstance(found, type) and issubclass(found, BaseException):
        return found
    return None


def _candidates(
    kind: type[BaseException], parts: _Parts, members: list[BaseException] | None
) -> Iterator[tuple[Callable[[], BaseException], bool]]:
    """Ways of making the recorded exception, the most faithful first, each with whether it
    may stand for the record when none gives the recorded message."""
    if members is not None and issubclass(kind, BaseExceptionGroup):
        yield functools.partial(kind, parts.group_message, members), True
        yield (
            functools.partial(BaseExceptionGroup.__new__, kind, parts.group_message, members),
            True,
        )
        return
    http_error = _http_error_type()
    if http_error is not None and issubclass(kind, http_error):
        url, code = parts.fields.get("filename"), parts.attrs.get("code")
        msg, headers = parts.attrs.get("msg"), _message_headers(parts.headers)
        yield functools.partial(kind, url, code, msg, headers, None), True
    if parts.args is not None:
        arg_lists = [(parts.args, True)]
    else:
        # Args with None in the place of those that were not recorded are worth a try (the
        # type's str may not depend on them), but the message alone is the better fallback.
        partial = [] if parts.partial is None else [(parts.partial, False)]
        arg_lists = [*partial, ([parts.message], True)]
    for args, fallback in arg_lists:
        yield functools.partial(kind, *args), fallback
        yield functools.partial(_from_new, kind, args), fallback


def _from_new(kind: type[BaseException], args: list[Any]) -> BaseException:
    exc = kind.__new__(kind, *args)
    exc.args = tuple(args)
    return exc


def _message_headers(pairs: list[list[str]] | None) -> Any:
    if pairs is None:
        return None
    client = sys.modules.get("http.client")
    kind = getattr(client, "HTTPMessage", None)
    if kind is None:
        import email.message

        kind = email.message.Message
    headers = kind()
    for name, value in pairs:
        headers[name] = value
    return headers


def _best(
    kind: type[BaseException],
    candidates: Iterator[tuple[Callable[[], BaseException], bool]],
    parts: _Parts,
) -> BaseException | None:
    """The first candidate whose str() is the recorded message, else the first usable one
    that may stand for the record."""
    usable: BaseException | None = None
    for make, fallback in candidates:
        try:
            exc = make()
            if type(exc) is not kind:
                continue  # OSError(2, ...) makes a FileNotFoundError, for one
            _restore(exc, parts, plain=False)
            text = str(exc)
            repr(exc)
        except Exception:  # noqa: BLE001, S112 - a candidate that fails is not used
            continue
        if storable_text(text) == parts.message:
            return exc
        if usable is None and fallback:
            usable = exc
    return usable


def _restore(exc: BaseException, parts: _Parts, *, plain: bool) -> None:
    own = exc.__dict__
    own.update(parts.attrs)
    for name, value in parts.fields.items():
        if plain:
            own[name] = value
        else:
            setattr(exc, name, value)
    if parts.notes is not None:
        own["__notes__"] = list(parts.notes)


# -- stand-ins -----------------------------------------------------------------------------


class _StandIn(StepError):
    """The base of the classes that stand in for recorded types this process cannot rebuild."""

    def __str__(self) -> str:
        return self.error_message

    def __reduce__(self) -> tuple[Any, ...]:
        # copy and pickle: the class is found again by its type path, not by import
        kind = type(self)
        path = f"{kind.__module__}:{kind.__qualname__}"
        group = isinstance(self, BaseExceptionGroup)
        return _revive, (path, group, self.args, dict(self.__dict__))


def _revive(path: str, group: bool, args: tuple[Any, ...], state: dict[str, Any]) -> _StandIn:
    kind = _stand_in_class(path, group)
    exc = kind.__new__(kind, *args) if group else kind.__new__(kind)
    exc.args = args
    exc.__dict__.update(state)
    return exc


_stand_ins: dict[tuple[str, bool], type[_StandIn]] = {}


def _stand_in_class(path: str, group: bool) -> type[_StandIn]:
    found = _stand_ins.get((path, group))
    if found is not None:
        return found
    module, _, qualname = path.partition(":")
    namespace = {
        "__module__": module,
        "__qualname__": qualname,
        "__doc__": f"Stands in for {path}, which this process cannot rebuild.",
    }
    bases: tuple[type, ...] = (_StandIn, ExceptionGroup) if group else (_StandIn,)
    made: type[_StandIn] = type(qualname.rpartition(".")[2], bases, namespace)
    if len(_stand_ins) < _MAX_STAND_INS:
        made = _stand_ins.setdefault((path, group), made)
    return made


def _stand_in(
    path: str, parts: _Parts, members: list[BaseException] | None, record: dict[str, Any]
) -> _StandIn:
    name, message = error_summary(record)
    group = bool(members) and all(isinstance(m, Exception) for m in members or ())
    kind = _stand_in_class(path, group)
    if group:
        exc = kind.__new__(kind, parts.group_message, members)
        StepError.__init__(exc, name, message)
        exc.args = (parts.group_message, members)
    else:
        exc = kind(name, message)
        exc.args = tuple(parts.args) if parts.args is not None else (message,)
    _restore(exc, dataclasses.replace(parts, attrs=_without_own(parts.attrs)), plain=True)
    exc.__dict__["__recorded__"] = {key: record[key] for key in _CARRIED if key in record}
    return exc


def _without_own(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if k not in ("error_type", "error_message")}
