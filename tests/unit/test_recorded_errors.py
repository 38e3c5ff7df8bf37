from __future__ import annotations

import decimal
import json
import sys
from typing import Any

import pytest

from stepstone.errors import StepError
from stepstone.persistence.recorded_errors import encode_error, error_summary, rebuild_error
from stepstone.persistence.serialization import JsonSerializer

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


def test_type_from_unimported_module_rebuilds_as_step_error() -> None:
    """A record whose module is not imported rebuilds as StepError with its type and message."""
    record = {
        "type": "not_a_module_xyz:Boom",
        "message": "it broke",
        "args": '["it broke"]',
        "attrs": None,
        "traceback": "",
    }
    rebuilt = rebuild_error(record, SERIALIZER)
    assert type(rebuilt) is StepError
    assert isinstance(rebuilt, StepError)
    assert rebuilt.error_type == "not_a_module_xyz.Boom"
    assert rebuilt.error_message == "it broke"
    assert "not_a_module_xyz.Boom" in str(rebuilt)
    assert "it broke" in str(rebuilt)


def test_rebuild_never_imports_a_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """A record naming an importable but unimported module's exception is not imported."""
    monkeypatch.delitem(sys.modules, "tabnanny", raising=False)
    record = {"type": "tabnanny:NannyNag", "message": "nag", "args": '["nag"]', "attrs": None}
    rebuilt = rebuild_error(record, SERIALIZER)
    assert type(rebuilt) is StepError
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
def test_type_that_is_not_an_exception_class_rebuilds_as_step_error(
    type_path: str, name: str
) -> None:
    """A record naming something other than an exception class rebuilds as StepError."""
    record = {"type": type_path, "message": "m", "args": '["m"]', "attrs": None}
    rebuilt = rebuild_error(record, SERIALIZER)
    assert type(rebuilt) is StepError
    assert rebuilt.error_type == name
    assert rebuilt.error_message == "m"


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
    """Attributes the serializer refuses are recorded as None; type and args survive."""
    original = raised(Opaque("has a handle"))
    record = encode_error(original, SERIALIZER)
    assert record["attrs"] is None
    rebuilt = rebuild_error(stored(record), SERIALIZER)
    assert type(rebuilt) is Opaque
    assert rebuilt.args == ("has a handle",)
    assert not hasattr(rebuilt, "handle")


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
