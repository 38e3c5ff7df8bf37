from __future__ import annotations

import copy
import decimal
import errno
import http.client
import io
import json
import pickle
import re
import sys
from typing import TYPE_CHECKING, Any
from urllib.error import HTTPError

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepstone.errors import StepError
from stepstone.persistence.recorded_errors import (
    encode_error,
    error_summary,
    rebuild_error,
    storable_text,
)
from stepstone.persistence.serialization import JsonSerializer

if TYPE_CHECKING:
    from collections.abc import Callable

SERIALIZER = JsonSerializer()
MAX_TRACEBACK = 16 * 1024


class PaymentDeclined(Exception):
    """An exception whose __init__ takes two required arguments."""

    def __init__(self, code: str, amount: decimal.Decimal) -> None:
        super().__init__(f"payment declined ({code}) for {amount}")
        self.code = code
        self.amount = amount


class Outer:
    class NestedError(Exception):
        pass


class Opaque(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.handle = object()


def raised(exc: BaseException) -> BaseException:
    """`exc` after it was raised and caught, so that it has a traceback."""
    try:
        raise exc
    except BaseException as caught:
        return caught


def stored(record: dict[str, Any]) -> dict[str, Any]:
    """The record as it reads back after a trip through JSON (the database column)."""
    return json.loads(json.dumps(record))


def roundtrip(exc: BaseException) -> BaseException:
    return rebuild_error(stored(encode_error(exc, SERIALIZER)), SERIALIZER)


def test_value_error_round_trips() -> None:
    """A ValueError is rebuilt as a ValueError with the same args and str."""
    original = raised(ValueError("bad input", 42))
    rebuilt = roundtrip(original)
    assert type(rebuilt) is ValueError
    assert rebuilt.args == ("bad input", 42)
    assert str(rebuilt) == str(original)


@pytest.mark.parametrize(
    "original",
    [KeyError("missing"), RuntimeError(), ZeroDivisionError("division by zero")],
    ids=repr,
)
def test_builtin_exceptions_round_trip(original: BaseException) -> None:
    """Builtin exceptions keep their type, args and str (KeyError's quoting included)."""
    rebuilt = roundtrip(original)
    assert type(rebuilt) is type(original)
    assert rebuilt.args == original.args
    assert str(rebuilt) == str(original)


def test_custom_exception_with_required_init_args_round_trips() -> None:
    """A custom exception whose __init__ needs two args is rebuilt with its attributes."""
    original = raised(PaymentDeclined("card_expired", decimal.Decimal("12.50")))
    rebuilt = roundtrip(original)
    assert type(rebuilt) is PaymentDeclined
    assert isinstance(rebuilt, PaymentDeclined)
    assert rebuilt.args == original.args
    assert str(rebuilt) == "payment declined (card_expired) for 12.50"
    assert rebuilt.code == "card_expired"
    assert rebuilt.amount == decimal.Decimal("12.50")
    assert type(rebuilt.amount) is decimal.Decimal


def test_record_names_the_type_by_module_and_qualname() -> None:
    """The record's type is "module:Qualname", nested classes included."""
    record = encode_error(Outer.NestedError("x"), SERIALIZER)
    assert record["type"] == f"{__name__}:Outer.NestedError"
    assert record["message"] == "x"


def test_nested_exception_class_round_trips() -> None:
    """An exception class nested in another class is found through its qualname."""
    rebuilt = roundtrip(Outer.NestedError("inner"))
    assert type(rebuilt) is Outer.NestedError
    assert rebuilt.args == ("inner",)


def test_record_is_json_ready() -> None:
    """encode_error returns only JSON-serializable values."""
    record = encode_error(raised(PaymentDeclined("c", decimal.Decimal(1))), SERIALIZER)
    assert stored(record) == record


def test_type_from_unimported_module_rebuilds_as_a_stand_in_of_the_same_name() -> None:
    """A record whose module is not imported rebuilds as a StepError subclass with the
    recorded type's name, qualname and module, the message as str() and the args."""
    record = {
        "type": "not_a_module_xyz:Boom",
        "message": "it broke",
        "args": '["it broke", 7]',
        "attrs": '{"code": "E42"}',
        "traceback": "",
    }
    rebuilt = rebuild_error(record, SERIALIZER)
    assert isinstance(rebuilt, StepError)
    assert type(rebuilt).__name__ == "Boom"
    assert type(rebuilt).__qualname__ == "Boom"
    assert type(rebuilt).__module__ == "not_a_module_xyz"
    assert str(rebuilt) == "it broke"
    assert rebuilt.args == ("it broke", 7)
    assert rebuilt.code == "E42"  # type: ignore[attr-defined]
    assert rebuilt.error_type == "not_a_module_xyz.Boom"
    assert rebuilt.error_message == "it broke"


def test_rebuild_never_imports_a_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """A record naming an importable but unimported module's exception is not imported."""
    monkeypatch.delitem(sys.modules, "tabnanny", raising=False)
    record = {"type": "tabnanny:NannyNag", "message": "nag", "args": '["nag"]', "attrs": None}
    rebuilt = rebuild_error(record, SERIALIZER)
    assert isinstance(rebuilt, StepError)
    assert type(rebuilt).__name__ == "NannyNag"
    assert rebuilt.error_type == "tabnanny.NannyNag"
    assert "tabnanny" not in sys.modules


@pytest.mark.parametrize(
    ("type_path", "name"),
    [
        ("builtins:dict", "dict"),
        ("builtins:len", "len"),
        ("builtins:NoSuchName", "NoSuchName"),
        (f"{__name__}:Outer", f"{__name__}.Outer"),
        (f"{__name__}:SERIALIZER", f"{__name__}.SERIALIZER"),
    ],
)
def test_type_that_is_not_an_exception_class_rebuilds_as_a_stand_in(
    type_path: str, name: str
) -> None:
    """A record naming something other than an exception class rebuilds as a stand-in."""
    record = {"type": type_path, "message": "m", "args": '["m"]', "attrs": None}
    rebuilt = rebuild_error(record, SERIALIZER)
    assert isinstance(rebuilt, StepError)
    assert type(rebuilt).__qualname__ == type_path.partition(":")[2]
    assert rebuilt.error_type == name
    assert rebuilt.error_message == "m"
    assert str(rebuilt) == "m"


def _fail_deep_in_the_stack() -> None:
    raise ValueError("boom from the helper")


def test_traceback_is_recorded_as_text() -> None:
    """The record holds the formatted traceback, naming the raising function and the error."""
    try:
        _fail_deep_in_the_stack()
    except ValueError as exc:
        record = encode_error(exc, SERIALIZER)
    text = record["traceback"]
    assert isinstance(text, str)
    assert text.startswith("Traceback (most recent call last)")
    assert "_fail_deep_in_the_stack" in text
    assert text.rstrip().endswith("ValueError: boom from the helper")


def test_long_traceback_is_truncated_keeping_its_end() -> None:
    """A traceback over 16 KiB is cut to 16 KiB, keeping the final exception line."""
    record = encode_error(raised(ValueError("x" * 40_000 + "END")), SERIALIZER)
    text = record["traceback"]
    assert len(text) == MAX_TRACEBACK
    assert len(text.encode()) <= MAX_TRACEBACK
    assert text.endswith("xxxxEND\n")


def test_short_traceback_is_not_truncated() -> None:
    """A traceback under the limit is kept whole."""
    record = encode_error(raised(ValueError("short")), SERIALIZER)
    assert record["traceback"].startswith("Traceback")
    assert len(record["traceback"]) < MAX_TRACEBACK


def test_unserializable_args_still_encode_and_rebuild_with_message() -> None:
    """Args the serializer refuses are recorded as None; the rebuilt error keeps the message."""
    original = raised(ValueError("cannot store", object()))
    record = encode_error(original, SERIALIZER)
    assert record["args"] is None
    assert record["message"] == str(original)
    rebuilt = rebuild_error(stored(record), SERIALIZER)
    assert type(rebuilt) is ValueError
    assert rebuilt.args == (str(original),)
    assert str(rebuilt) == str(original)


def test_unserializable_attributes_are_dropped() -> None:
    """Attributes the serializer refuses are not recorded; the rebuild runs the type's own
    constructor, so the rebuilt exception has the attribute its constructor sets."""
    original = raised(Opaque("has a handle"))
    record = encode_error(original, SERIALIZER)
    assert record["attrs"] is None
    rebuilt = rebuild_error(stored(record), SERIALIZER)
    assert type(rebuilt) is Opaque
    assert rebuilt.args == ("has a handle",)
    assert isinstance(rebuilt.handle, object)  # type: ignore[attr-defined]
    assert rebuilt.handle is not original.handle  # type: ignore[attr-defined]


def test_one_unserializable_attribute_does_not_lose_the_others() -> None:
    """Attributes are serialized one by one: the ones that serialize are kept."""
    original = raised(Opaque("mixed"))
    original.retry_after = 30  # type: ignore[attr-defined]
    original.region = "eu-west"  # type: ignore[attr-defined]
    record = encode_error(original, SERIALIZER)
    assert SERIALIZER.loads(record["attrs"]) == {"retry_after": 30, "region": "eu-west"}
    rebuilt = rebuild_error(stored(record), SERIALIZER)
    assert type(rebuilt) is Opaque
    assert rebuilt.retry_after == 30  # type: ignore[attr-defined]
    assert rebuilt.region == "eu-west"  # type: ignore[attr-defined]


def test_exception_without_attributes_records_no_attrs() -> None:
    """An exception with an empty __dict__ records attrs as None."""
    assert encode_error(ValueError("x"), SERIALIZER)["attrs"] is None


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"type": "builtins:ValueError", "message": "bad"}, ("ValueError", "bad")),
        ({"type": "builtins:KeyError", "message": "'k'"}, ("KeyError", "'k'")),
        ({"type": "payments.errors:Declined", "message": "no"}, ("payments.errors.Declined", "no")),
        ({"type": "pkg.mod:Outer.Inner", "message": ""}, ("pkg.mod.Outer.Inner", "")),
    ],
)
def test_error_summary_names_builtins_bare_and_others_qualified(
    record: dict[str, Any], expected: tuple[str, str]
) -> None:
    """error_summary gives ("ValueError", msg) for builtins and ("module.Class", msg) otherwise."""
    assert error_summary(record) == expected


def test_error_summary_of_encoded_custom_error() -> None:
    """error_summary of an encoded module-level exception gives its dotted path and message."""
    record = encode_error(PaymentDeclined("c", decimal.Decimal(2)), SERIALIZER)
    assert error_summary(record) == (
        f"{__name__}.PaymentDeclined",
        "payment declined (c) for 2",
    )


# -- faithful rebuilds ---------------------------------------------------------------------


def assert_same_error(original: BaseException, rebuilt: BaseException) -> None:
    """Same type, args, str, repr and notes; groups member by member."""
    assert type(rebuilt) is type(original)
    assert rebuilt.args == original.args or isinstance(original, BaseExceptionGroup)
    assert str(rebuilt) == str(original)
    assert repr(rebuilt) == repr(original)
    assert getattr(rebuilt, "__notes__", None) == getattr(original, "__notes__", None)
    if isinstance(original, BaseExceptionGroup):
        assert isinstance(rebuilt, BaseExceptionGroup)
        assert rebuilt.message == original.message
        assert len(rebuilt.exceptions) == len(original.exceptions)
        for member, rebuilt_member in zip(original.exceptions, rebuilt.exceptions, strict=True):
            assert_same_error(member, rebuilt_member)


def with_notes(exc: BaseException, *notes: str) -> BaseException:
    for note in notes:
        exc.add_note(note)
    return exc


def test_exception_group_round_trips_with_members_and_notes() -> None:
    """An ExceptionGroup comes back as one, with its message, notes and members (groups
    nested in it included), each rebuilt as its own type."""
    original = raised(
        with_notes(
            ExceptionGroup(
                "batch failed",
                [
                    with_notes(ValueError("bad row", 3), "row 3"),
                    KeyError("sku"),
                    ExceptionGroup("inner", [TypeError("t"), PaymentDeclined("c", 2)]),
                ],
            ),
            "while importing",
        )
    )
    assert_same_error(original, roundtrip(original))


def test_except_star_matches_a_rebuilt_group() -> None:
    """`except*` matches the rebuilt members as it matched the original ones."""
    rebuilt = roundtrip(ExceptionGroup("g", [ValueError("v"), KeyError("k"), OSError("o")]))
    matched: list[str] = []
    try:
        raise rebuilt
    except* ValueError as values:
        matched += [repr(e) for e in values.exceptions]
    except* (KeyError, OSError) as others:
        matched += [repr(e) for e in others.exceptions]
    assert matched == ["ValueError('v')", "KeyError('k')", "OSError('o')"]


def test_base_exception_group_keeps_base_exception_members() -> None:
    """A BaseExceptionGroup holding a KeyboardInterrupt comes back as a BaseExceptionGroup."""
    original = BaseExceptionGroup("stop", [KeyboardInterrupt(), ValueError("v")])
    assert_same_error(original, roundtrip(original))


class Batch(ExceptionGroup[Exception]):
    """A group subclass whose constructor takes an extra argument."""

    def __new__(cls, batch_id: int, errors: list[Exception]) -> Batch:
        self = super().__new__(cls, f"batch {batch_id}", errors)
        self.batch_id = batch_id
        return self

    def __init__(self, batch_id: int, errors: list[Exception]) -> None:
        super().__init__(f"batch {batch_id}", errors)

    def derive(self, excs: Any) -> Batch:
        return Batch(self.batch_id, excs)


def test_group_subclass_with_its_own_constructor_round_trips() -> None:
    """A group subclass whose constructor differs from ExceptionGroup's is rebuilt through
    __new__, with its attributes and members."""
    original = Batch(7, [ValueError("a"), ValueError("b")])
    rebuilt = roundtrip(original)
    assert type(rebuilt) is Batch
    assert rebuilt.batch_id == 7
    assert str(rebuilt) == str(original)
    assert [repr(e) for e in rebuilt.exceptions] == ["ValueError('a')", "ValueError('b')"]


def test_file_not_found_keeps_errno_strerror_and_filename(tmp_path: Any) -> None:
    """A FileNotFoundError raised by open() comes back with errno, strerror, filename and str."""
    try:
        (tmp_path / "missing.txt").open()
    except FileNotFoundError as exc:
        original = exc
    rebuilt = roundtrip(original)
    assert_same_error(original, rebuilt)
    assert isinstance(rebuilt, FileNotFoundError)
    assert rebuilt.errno == errno.ENOENT
    assert rebuilt.strerror == original.strerror
    assert rebuilt.filename == str(tmp_path / "missing.txt")


@pytest.mark.parametrize(
    "original",
    [
        OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b"),
        PermissionError(errno.EACCES, "Permission denied", b"/bytes/path"),
        IsADirectoryError(errno.EISDIR, "Is a directory", 3),
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        OSError("no errno at all"),
        TimeoutError(),
    ],
    ids=repr,
)
def test_os_errors_keep_their_fields(original: OSError) -> None:
    """OSError and its subclasses keep errno, strerror, filename and filename2 (which are not
    in __dict__), and so their str."""
    rebuilt = roundtrip(original)
    assert_same_error(original, rebuilt)
    assert isinstance(rebuilt, OSError)
    fields = ("errno", "strerror", "filename", "filename2")
    assert [getattr(rebuilt, f) for f in fields] == [getattr(original, f) for f in fields]


def test_import_errors_keep_name_and_path() -> None:
    """ImportError's name and path (keyword-only, outside args) come back."""
    original = raised(ModuleNotFoundError("No module named 'nope'", name="nope", path="/x"))
    rebuilt = roundtrip(original)
    assert_same_error(original, rebuilt)
    assert (rebuilt.name, rebuilt.path) == ("nope", "/x")  # type: ignore[attr-defined]


def http_error(code: int = 503, headers: dict[str, str] | None = None) -> HTTPError:
    hdrs = http.client.HTTPMessage()
    for name, value in (headers or {}).items():
        hdrs[name] = value
    return HTTPError(
        "https://api.example.test/charge", code, "Service Unavailable", hdrs, io.BytesIO(b"x")
    )


def test_http_error_keeps_code_reason_url_headers_and_str() -> None:
    """urllib's HTTPError comes back with code, msg/reason, url/filename, headers and str,
    and its file-like side works (an empty body)."""
    original = raised(http_error(503, {"Retry-After": "30", "X-Request-Id": "r-1"}))
    assert isinstance(original, HTTPError)
    rebuilt = roundtrip(original)
    assert type(rebuilt) is HTTPError
    assert rebuilt.code == 503
    assert rebuilt.msg == rebuilt.reason == "Service Unavailable"
    assert rebuilt.url == rebuilt.filename == "https://api.example.test/charge"
    assert rebuilt.headers["Retry-After"] == "30"
    assert rebuilt.headers.items() == original.headers.items()
    assert str(rebuilt) == str(original) == "HTTP Error 503: Service Unavailable"
    assert repr(rebuilt) == repr(original)
    assert rebuilt.read() == b""


def test_rebuilt_http_error_records_again_the_same() -> None:
    """Recording a rebuilt HTTPError (a failure re-raised on replay) gives the same record."""
    first = stored(encode_error(http_error(404, {"A": "b"}), SERIALIZER))
    again = stored(encode_error(rebuild_error(first, SERIALIZER), SERIALIZER))
    first.pop("traceback")
    again.pop("traceback")
    assert again == first


def test_notes_round_trip() -> None:
    """__notes__ come back in order; an exception without notes gets none."""
    original = with_notes(ValueError("v"), "first", "second")
    assert_same_error(original, roundtrip(original))
    assert not hasattr(roundtrip(ValueError("v")), "__notes__")


class Defaulted(Exception):
    """A constructor that accepts the message as its code, and says something else."""

    def __init__(self, code: str, detail: str = "none") -> None:
        super().__init__(f"failed with {code} ({detail})")
        self.code = code
        self.detail = detail


def test_constructor_that_says_something_else_gives_way_to_new() -> None:
    """When calling the constructor with the recorded args gives another message, __new__
    with the recorded args and attributes is used: the str is the original's."""
    original = Defaulted("E1", "card expired")
    rebuilt = roundtrip(original)
    assert_same_error(original, rebuilt)
    assert rebuilt.detail == "card expired"  # type: ignore[attr-defined]


class Refuses(Exception):
    """A type that cannot be made again: constructor and __new__ both refuse."""

    def __new__(cls, *_args: Any) -> Refuses:
        raise TypeError("only the library that raises it can make one")


def test_type_that_refuses_to_be_rebuilt_gets_a_stand_in() -> None:
    """A type whose constructor and __new__ refuse the recorded args gives a stand-in with the
    type's name, the message and the notes."""
    original = with_notes(Exception.__new__(Refuses, "again"), "a note")
    rebuilt = roundtrip(original)
    assert isinstance(rebuilt, StepError)
    assert isinstance(rebuilt, Exception)
    assert type(rebuilt).__name__ == "Refuses"
    assert type(rebuilt).__qualname__ == "Refuses"
    assert type(rebuilt).__module__ == __name__
    assert str(rebuilt) == "again"
    assert rebuilt.__notes__ == ["a note"]


class NeedsItsSession(Exception):
    """An exception whose str reads an attribute that cannot be serialized."""

    def __init__(self, session: object) -> None:
        super().__init__()
        self.session = session

    def __str__(self) -> str:
        return f"session {self.session.name} expired"  # type: ignore[attr-defined]


def test_rebuilt_exception_whose_str_raises_is_not_used() -> None:
    """If every way of rebuilding gives an exception whose str() raises, a stand-in with the
    recorded message takes its place."""
    session = type("Session", (), {"name": "s-1"})()
    rebuilt = roundtrip(NeedsItsSession(session))
    assert isinstance(rebuilt, StepError)
    assert type(rebuilt).__name__ == "NeedsItsSession"
    assert str(rebuilt) == "session s-1 expired"


def local_error_class() -> type[Exception]:
    class Vanishing(Exception):
        def __init__(self, code: str) -> None:
            super().__init__(f"vanished: {code}")
            self.code = code

    return Vanishing


def test_stand_in_keeps_name_message_args_attributes_and_notes() -> None:
    """A type that cannot be found (defined inside a function) gives a stand-in with the same
    __name__, __qualname__ and __module__, str, args, attributes and notes."""
    kind = local_error_class()
    original = with_notes(raised(kind("E7")), "n1")
    rebuilt = roundtrip(original)
    assert isinstance(rebuilt, StepError)
    assert (type(rebuilt).__name__, type(rebuilt).__qualname__, type(rebuilt).__module__) == (
        kind.__name__,
        kind.__qualname__,
        kind.__module__,
    )
    assert str(rebuilt) == str(original) == "vanished: E7"
    assert repr(rebuilt) == repr(original)
    assert rebuilt.args == original.args
    assert rebuilt.code == "E7"  # type: ignore[attr-defined]
    assert rebuilt.__notes__ == ["n1"]


def test_stand_in_classes_are_cached_per_type_path() -> None:
    """Two rebuilds of one unknown type give instances of one class; another path another."""
    record = {"type": "gone_pkg.mod:Outer.Gone", "message": "m", "args": None, "attrs": None}
    first = rebuild_error(record, SERIALIZER)
    second = rebuild_error(dict(record, message="other"), SERIALIZER)
    other = rebuild_error(dict(record, type="gone_pkg.mod:Outer.Other"), SERIALIZER)
    assert type(first) is type(second)
    assert type(other) is not type(first)
    assert type(first).__name__ == "Gone"
    assert type(first).__qualname__ == "Outer.Gone"
    with pytest.raises(StepError) as caught:
        raise first
    assert caught.value is first


@pytest.mark.parametrize("group", [False, True], ids=["plain", "group"])
def test_stand_ins_copy_and_pickle(group: bool) -> None:
    """copy.copy, copy.deepcopy and pickle give a stand-in of the same class, str, args,
    attributes and notes (its class is found again by type path, never imported)."""
    kind = local_error_class()
    member = with_notes(kind("E1"), "n")
    original = Batch(1, [member, ValueError("v")]) if group else member
    record = stored(encode_error(original, SERIALIZER))
    record["type"] = "gone_module:Batch" if group else record["type"]
    stand_in = rebuild_error(record, SERIALIZER)
    assert isinstance(stand_in, StepError)
    assert isinstance(stand_in, ExceptionGroup) == group
    for twin in (
        copy.copy(stand_in),
        copy.deepcopy(stand_in),
        pickle.loads(pickle.dumps(stand_in)),  # noqa: S301 - our own bytes
    ):
        assert type(twin) is type(stand_in)
        assert str(twin) == str(stand_in)
        assert repr(twin) == repr(stand_in)
        assert twin.args == stand_in.args or group
        assert vars(twin).get("__notes__") == vars(stand_in).get("__notes__")
        if not group:
            assert twin.code == "E1"  # type: ignore[attr-defined]


def test_stand_in_records_again_as_the_original_type() -> None:
    """A stand-in re-raised and recorded again keeps the original type path, message, args and
    attributes, so a process that has the type rebuilds the real thing."""
    record = stored(encode_error(raised(PaymentDeclined("c", decimal.Decimal(3))), SERIALIZER))
    record["type"] = "gone_module:PaymentDeclined"
    stand_in = rebuild_error(record, SERIALIZER)
    assert isinstance(stand_in, StepError)
    again = stored(encode_error(stand_in, SERIALIZER))
    assert {k: again[k] for k in ("type", "message", "args", "attrs")} == {
        k: record[k] for k in ("type", "message", "args", "attrs")
    }
    again["type"] = f"{__name__}:PaymentDeclined"
    real = rebuild_error(again, SERIALIZER)
    assert type(real) is PaymentDeclined
    assert real.amount == decimal.Decimal(3)


def test_stand_in_of_an_unknown_group_is_a_group_of_rebuilt_members() -> None:
    """An exception group of an unknown type comes back as a stand-in that is also an
    ExceptionGroup of the rebuilt members, so `except*` matches them."""
    record = stored(encode_error(Batch(1, [ValueError("v"), KeyError("k")]), SERIALIZER))
    record["type"] = "gone_module:Batch"
    rebuilt = rebuild_error(record, SERIALIZER)
    assert isinstance(rebuilt, StepError)
    assert isinstance(rebuilt, ExceptionGroup)
    assert type(rebuilt).__name__ == "Batch"
    assert str(rebuilt) == "batch 1 (2 sub-exceptions)"
    caught: list[BaseException] = []
    try:
        raise rebuilt
    except* ValueError as group:
        caught += group.exceptions
    except* KeyError as group:
        caught += group.exceptions
    assert [repr(e) for e in caught] == ["ValueError('v')", "KeyError('k')"]


def test_records_from_before_members_and_fields_still_rebuild() -> None:
    """A record of the older form (type, message, args, attrs, traceback) rebuilds as before."""
    record = {
        "type": "builtins:FileNotFoundError",
        "message": "[Errno 2] No such file or directory",
        "args": '[2,"No such file or directory"]',
        "attrs": None,
        "traceback": "Traceback ...",
    }
    rebuilt = rebuild_error(record, SERIALIZER)
    assert type(rebuilt) is FileNotFoundError
    assert rebuilt.errno == 2
    assert str(rebuilt) == record["message"]


@pytest.mark.parametrize(
    "record",
    [
        {},
        {"type": 3, "message": None},
        {"type": "builtins:ValueError", "message": "m", "args": "not json", "attrs": "[1]"},
        {"type": "builtins:ValueError", "message": "m", "args": '{"a": 1}', "notes": "x"},
        {"type": "builtins:ValueError", "message": "m", "fields": '{"__class__": 1}'},
        {"type": "builtins:ExceptionGroup", "message": "m", "exceptions": [1, None, "x"]},
        {"type": "builtins:ExceptionGroup", "message": "m", "exceptions": []},
        {"type": "urllib.error:HTTPError", "message": "m", "http_headers": [[1], "x", None]},
    ],
    ids=repr,
)
def test_malformed_records_still_rebuild_to_an_exception(record: dict[str, Any]) -> None:
    """Whatever a record holds, rebuild_error returns an exception whose str and repr work."""
    rebuilt = rebuild_error(record, SERIALIZER)
    assert isinstance(rebuilt, BaseException)
    str(rebuilt)
    repr(rebuilt)
    assert type(rebuilt) is not int


# -- recording never raises ----------------------------------------------------------------


UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def assert_storable(value: Any, path: str = "record") -> None:
    """Every text in the record is one PostgreSQL can store (no NUL, no surrogate), and the
    record is JSON as psycopg's Jsonb writes it."""
    if isinstance(value, str):
        assert UNSTORABLE.search(value) is None, f"{path}: {value!r}"
    elif isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str)
            assert_storable(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            assert_storable(item, f"{path}[{i}]")
    else:
        assert value is None or type(value) in (int, bool), f"{path}: {value!r}"


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")


class ReprRaises(Exception):
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class NothingWorks(Exception):
    def __str__(self) -> str:
        raise KeyError("no str")

    def __repr__(self) -> str:
        raise RecursionError("no repr")


class StrNotText(Exception):
    def __str__(self) -> Any:
        return 42  # noqa: PLE0307 - the point


class GetattrRaises(Exception):
    def __getattr__(self, name: str) -> Any:
        raise KeyError(name)


class ArgsRaise(Exception):
    @property  # type: ignore[override]
    def args(self) -> Any:
        raise RuntimeError("no args")


class DictRaises(Exception):
    @property
    def __dict__(self) -> Any:  # type: ignore[override]
        raise RuntimeError("no dict")


class OddModule(Exception):
    pass


OddModule.__module__ = 42  # type: ignore[assignment]


def self_referential() -> BaseException:
    items: list[Any] = []
    items.append(items)
    return ValueError("loop", items)


def deep_group(depth: int) -> BaseException:
    exc: BaseException = ValueError("leaf")
    for level in range(depth):
        exc = ExceptionGroup(f"level {level}", [exc])
    return exc


def odd_dict() -> BaseException:
    exc = ValueError("odd")
    exc.__dict__[1] = "int key"
    exc.__dict__["handle"] = object()
    exc.__dict__["kept"] = "yes"
    return exc


def odd_notes() -> BaseException:
    exc = ValueError("notes")
    exc.__notes__ = [StrRaises(), 3, "nul\x00", "\udcff"]  # type: ignore[attr-defined]
    return exc


def notes_not_a_list() -> BaseException:
    exc = ValueError("notes")
    exc.__notes__ = "a string"  # type: ignore[attr-defined]
    return exc


def cause_cycle() -> BaseException:
    a, b = ValueError("a"), ValueError("b")
    a.__cause__, b.__cause__ = b, a
    return a


HOSTILE: list[tuple[str, Callable[[], BaseException]]] = [
    ("str raises", lambda: StrRaises("x")),
    ("repr raises", lambda: ReprRaises("x")),
    ("str and repr raise", lambda: NothingWorks("x")),
    ("str returns an int", lambda: StrNotText("x")),
    ("__getattr__ raises KeyError", lambda: GetattrRaises("x")),
    ("args property raises", lambda: ArgsRaise("x")),
    ("__dict__ property raises", lambda: DictRaises("x")),
    ("non-text __module__", lambda: OddModule("x")),
    ("unserializable args", lambda: ValueError(object(), {1, object})),
    ("self-referential args", self_referential),
    ("odd __dict__", odd_dict),
    ("odd notes", odd_notes),
    ("notes not a list", notes_not_a_list),
    ("cause cycle", cause_cycle),
    ("NUL and surrogate text", lambda: ValueError("nul\x00 lone\udcff", "\ud800")),
    ("HTTPError made by __new__", lambda: HTTPError.__new__(HTTPError)),
    ("rebuilt HTTPError", lambda: roundtrip(http_error())),
    ("HTTPError without headers", lambda: HTTPError("u", 500, "m", None, None)),  # type: ignore[arg-type]
    ("group 3000 deep", lambda: deep_group(3000)),
    ("group 20000 wide", lambda: ExceptionGroup("wide", [ValueError(i) for i in range(20_000)])),
    ("KeyboardInterrupt", KeyboardInterrupt),
    ("SystemExit with a code", lambda: SystemExit(3)),
    ("huge message", lambda: ValueError("x" * 1_000_000)),
]


@pytest.mark.parametrize("make", [make for _, make in HOSTILE], ids=[n for n, _ in HOSTILE])
def test_recording_never_raises_and_the_record_rebuilds(
    make: Callable[[], BaseException],
) -> None:
    """encode_error returns a storable record for hostile exceptions (raised, so with a
    traceback), and the record rebuilds to an exception of the same type name whose str and
    repr work."""
    original = raised(make())
    record = stored(encode_error(original, SERIALIZER))
    assert_storable(record)
    assert record["type"].endswith(type(original).__qualname__)
    assert isinstance(record["traceback"], str)
    rebuilt = rebuild_error(record, SERIALIZER)
    assert type(rebuilt).__name__ == type(original).__name__
    str(rebuilt)
    repr(rebuilt)
    again = stored(encode_error(rebuilt, SERIALIZER))  # recording the replayed error
    assert again["type"] == record["type"]


def test_str_that_raises_is_recorded_as_a_placeholder() -> None:
    """An exception whose str() raises is recorded with the traceback module's placeholder."""
    record = encode_error(StrRaises("x"), SERIALIZER)
    assert record["message"] == "<exception str() failed>"
    assert record["traceback"].endswith("StrRaises: <exception str() failed>\n")


def test_deep_group_keeps_members_to_a_bounded_depth() -> None:
    """A group nested 100 deep is recorded 32 levels deep; below that a stand-in with the
    group's name and message ends the chain."""
    rebuilt = roundtrip(deep_group(100))
    depth = 0
    while isinstance(rebuilt, ExceptionGroup) and not isinstance(rebuilt, StepError):
        rebuilt = rebuilt.exceptions[0]
        depth += 1
    assert depth == 32
    assert isinstance(rebuilt, StepError)
    assert type(rebuilt).__name__ == "ExceptionGroup"
    assert str(rebuilt) == "level 67 (1 sub-exception)"


def test_group_of_up_to_ten_thousand_members_round_trips() -> None:
    """A group of 10,000 members is recorded whole; `except*` matches on the rebuilt one."""
    original = ExceptionGroup("wide", [ValueError(i) for i in range(10_000)])
    rebuilt = roundtrip(original)
    assert type(rebuilt) is ExceptionGroup
    assert [e.args for e in rebuilt.exceptions] == [(i,) for i in range(10_000)]


@st.composite
def hostile_exceptions(draw: st.DrawFn) -> BaseException:
    """Exceptions of assorted types holding assorted values and texts."""
    texts = st.text(st.characters(categories=["L", "N", "P", "Zs", "Cc", "Cs"]), max_size=20)
    values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | texts | st.just(object()),
        lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner),
        max_leaves=6,
    )
    kind = draw(
        st.sampled_from(
            [
                ValueError,
                KeyError,
                RuntimeError,
                StrRaises,
                ReprRaises,
                NothingWorks,
                GetattrRaises,
                OSError,
                Opaque,
                PaymentDeclined,
                local_error_class(),
            ]
        )
    )
    args = draw(st.lists(values, max_size=4))
    try:
        exc: BaseException = kind(*args)
    except Exception:
        exc = kind.__new__(kind, *args)
    for name, value in draw(
        st.dictionaries(st.from_regex("[a-z]{1,5}", fullmatch=True), values, max_size=3)
    ).items():
        exc.__dict__[name] = value
    for note in draw(st.lists(texts, max_size=2)):
        exc.__dict__.setdefault("__notes__", []).append(note)  # add_note calls __getattr__
    if draw(st.booleans()):
        exc = ExceptionGroup(
            draw(texts), [e for e in [exc, ValueError(draw(texts))] if isinstance(e, Exception)]
        )
    return exc


@given(original=hostile_exceptions())
def test_any_exception_records_storably_and_rebuilds_by_name(original: BaseException) -> None:
    """Property: every exception records without raising into a storable record, and
    rebuilds to one of the same type name whose str() and repr() work and whose notes are
    the recorded ones."""
    record = stored(encode_error(original, SERIALIZER))
    assert_storable(record)
    rebuilt = rebuild_error(record, SERIALIZER)
    assert type(rebuilt).__name__ == type(original).__name__
    str(rebuilt)
    repr(rebuilt)
    assert vars(rebuilt).get("__notes__") == record.get("notes")
    if type(original) in (ValueError, KeyError, RuntimeError):
        assert type(rebuilt) is type(original)
        if type(original) is not KeyError or record["args"] is not None:  # KeyError quotes
            assert storable_text(str(rebuilt)) == record["message"]


# -- text PostgreSQL cannot store ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ""),
        ("plain text, é 中文 😀", "plain text, é 中文 😀"),
        ("a\x00b", "a\\x00b"),
        ("\x00\x00", "\\x00\\x00"),
        ("lone \udcff here", "lone \\udcff here"),
        ("\ud800", "\\ud800"),
        ("\ud83d\ude00", "\\ud83d\\ude00"),  # a pair as two code points is not valid UTF-8
        ("already \\x00 escaped", "already \\x00 escaped"),
        ("C:\\path\\file", "C:\\path\\file"),
    ],
    ids=repr,
)
def test_storable_text_escapes_nul_and_surrogates(text: str, expected: str) -> None:
    """storable_text turns a NUL into `\\x00` and a surrogate into `\\udcff`; other text,
    backslashes included, is unchanged."""
    assert storable_text(text) == expected


def test_storable_text_returns_clean_text_itself() -> None:
    """Text with nothing to escape is returned as the same object (no copy on the hot path)."""
    text = "nothing to escape " * 10
    assert storable_text(text) is text


@given(st.text(st.characters(codec=None, categories=["L", "N", "P", "Cc", "Cs", "Zs"])))
def test_storable_text_is_storable_and_idempotent(text: str) -> None:
    """Property: the result encodes as UTF-8, holds no NUL, and escaping it again changes
    nothing."""
    result = storable_text(text)
    result.encode()
    assert "\x00" not in result
    assert storable_text(result) == result
    if UNSTORABLE.search(text) is None:
        assert result == text


def test_unstorable_text_is_escaped_everywhere_in_the_record() -> None:
    """A NUL or surrogate in the message, notes, traceback and type name is escaped; args
    that would need escaping are dropped and the rebuild keeps the escaped message."""
    kind = type("BadName", (ValueError,), {"__module__": "mod\x00ule"})
    original = raised(with_notes(kind("bad\x00byte \udcff"), "note\x00", "\udcff"))
    record = stored(encode_error(original, SERIALIZER))
    assert_storable(record)
    assert record["type"] == "mod\\x00ule:BadName"
    assert record["message"] == "bad\\x00byte \\udcff"
    assert record["notes"] == ["note\\x00", "\\udcff"]
    assert "BadName: bad\\x00byte \\udcff" in record["traceback"]
    assert record["args"] is None
    rebuilt = rebuild_error(record, SERIALIZER)
    assert str(rebuilt) == "bad\\x00byte \\udcff"
    assert rebuilt.__notes__ == ["note\\x00", "\\udcff"]


def test_value_error_with_nul_and_surrogate_rebuilds_as_value_error() -> None:
    """ValueError("bad\\x00byte \\udcff") rebuilds as a ValueError with the escaped message."""
    record = stored(encode_error(raised(ValueError("bad\x00byte \udcff")), SERIALIZER))
    assert_storable(record)
    rebuilt = rebuild_error(record, SERIALIZER)
    assert type(rebuilt) is ValueError
    assert rebuilt.args == ("bad\\x00byte \\udcff",)


def test_nul_in_args_that_serialize_storably_is_kept_exactly() -> None:
    """The JSON serializer writes a NUL as the escape `\\u0000`, which PostgreSQL stores: such
    args are kept, and the rebuilt exception holds the NUL itself."""
    record = stored(encode_error(ValueError("a\x00b"), SERIALIZER))
    assert_storable(record)
    assert record["message"] == "a\\x00b"
    rebuilt = rebuild_error(record, SERIALIZER)
    assert rebuilt.args == ("a\x00b",)


def test_attribute_that_would_need_escaping_is_dropped_alone() -> None:
    """An attribute whose serialized text holds a surrogate is dropped; the others stay."""
    original = ValueError("v")
    original.bad = "\udcff"  # type: ignore[attr-defined]
    original.good = "fine"  # type: ignore[attr-defined]
    record = stored(encode_error(original, SERIALIZER))
    assert_storable(record)
    assert SERIALIZER.loads(record["attrs"]) == {"good": "fine"}
