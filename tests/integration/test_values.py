"""Values through the database: exact round trips, size limits, pluggable serializers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import uuid
from typing import Any

import pytest

import stepstone
from stepstone import Runtime, SerializationError, WorkflowFailed


@dataclasses.dataclass(frozen=True)
class Parcel:
    sku: str
    weight: decimal.Decimal
    dims: tuple[int, int, int]
    sent: dt.date


VALUES: dict[str, Any] = {
    "datetime": dt.datetime(
        2026, 11, 26, 1, 2, 3, 456789, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))
    ),
    "naive": dt.datetime(2026, 1, 1, 0, 0, 0, 1),
    "date": dt.date(2026, 2, 28),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "decimal": decimal.Decimal("10.10"),
    "bytes": b"\x00\xffraw",
    "tuple": (1, ("nested", 2.5), None),
    "dataclass": Parcel("sku-1", decimal.Decimal("1.250"), (1, 2, 3), dt.date(2026, 3, 1)),
    "mixed": {"list": [1, (2, 3)], 7: "int key", ("a", 1): {b"k"}},
}


def _types(value: Any) -> Any:
    """The value's structure with types, so that 1 == 1.0 and (1,) != [1] are told apart."""
    if isinstance(value, dict):
        return {(_types(k)): _types(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(_types(v) for v in value))
    if isinstance(value, set | frozenset):
        return (type(value).__name__, frozenset(_types(v) for v in value))
    if dataclasses.is_dataclass(value):
        return (type(value).__name__, _types(dataclasses.asdict(value)))
    return (type(value).__name__, value)


def test_values_round_trip_exactly_as_inputs_outputs_and_state(rt: Runtime) -> None:
    """Inputs, step outputs, workflow output and state come back with the same types."""

    @rt.step()
    def echo(value: Any) -> Any:
        return value

    seen: dict[str, Any] = {}

    @rt.workflow()
    def carry(values: dict[str, Any], parcel: Parcel) -> dict[str, Any]:
        for key, value in values.items():
            seen[key] = echo(value)
            stepstone.current().state[key] = value
        return {"values": values, "parcel": parcel}

    rt.launch()
    result = carry.with_options(workflow_id="values-1")(VALUES, parcel=VALUES["dataclass"])
    assert _types(seen) == _types(VALUES)
    # Read back through the database, in a fresh decode.
    stored = rt.handle("values-1").result(timeout=5)
    assert (
        _types(stored)
        == _types(result)
        == _types({"values": VALUES, "parcel": VALUES["dataclass"]})
    )
    assert _types(rt.get_state("values-1")) == _types(VALUES)
    steps = rt.store.list_steps("values-1")
    assert [_types(rt.store.decode(s.output or "")) for s in steps] == [
        _types(v) for v in VALUES.values()
    ]


def test_unserializable_input_fails_before_anything_is_written(rt: Runtime) -> None:
    """An input with no serial form raises naming the workflow and the type; no row is written."""

    @rt.workflow()
    def takes(x: Any) -> None:
        return None

    rt.launch()
    with pytest.raises(
        SerializationError, match=r"inputs of workflow 'takes' cannot be serialized .*object"
    ):
        takes.with_options(workflow_id="bad-in")(object())
    with pytest.raises(SerializationError):
        rt.start(takes.with_options(workflow_id="bad-in"), {1, object()})
    assert rt.store.get_execution("bad-in") is None


def test_oversized_input_fails_before_anything_is_written(db: str) -> None:
    """Inputs over max_value_size are refused with their size and the limit."""
    with Runtime(db, max_value_size=1000) as rt:

        @rt.workflow()
        def big(blob: str) -> int:
            return len(blob)

        assert big("x" * 900) == 900
        with pytest.raises(
            SerializationError,
            match=r"inputs of workflow 'big' is \d+ bytes .* limit of 1000 bytes",
        ):
            big.with_options(workflow_id="big-1")("é" * 600)
        assert rt.store.get_execution("big-1") is None


def test_default_size_limit_is_one_mebibyte(rt: Runtime) -> None:
    """Without configuration, one serialized value may be up to 1 MiB."""

    @rt.workflow()
    def sized(blob: str) -> int:
        return len(blob)

    rt.launch()
    assert sized("a" * (1024 * 1024 - 100)) == 1024 * 1024 - 100
    with pytest.raises(SerializationError, match="limit of 1048576 bytes"):
        sized("a" * (1024 * 1024 + 1))


def test_unserializable_step_output_records_nothing_for_the_step(rt: Runtime) -> None:
    """A step returning an unserializable value raises naming the step; no step row exists;
    the workflow fails with that error recorded instead of staying RUNNING."""

    @rt.step()
    def leaky() -> Any:
        return object()

    @rt.workflow()
    def uses_leaky() -> None:
        leaky()

    rt.launch()
    with pytest.raises(
        WorkflowFailed, match=r"output of step 'leaky' \(position 0\) of workflow 'leak-1'"
    ):
        uses_leaky.with_options(workflow_id="leak-1")()
    assert rt.store.list_steps("leak-1") == []
    assert rt.handle("leak-1").status() == "FAILED"


def test_unserializable_workflow_output_fails_the_execution(rt: Runtime) -> None:
    """A workflow whose result cannot be stored ends FAILED with the serialization error."""

    @rt.workflow()
    def returns_junk() -> Any:
        return lambda: None

    rt.launch()
    with pytest.raises(
        WorkflowFailed, match=r"output of workflow 'junk-1' cannot be serialized \(function\)"
    ):
        returns_junk.with_options(workflow_id="junk-1")()
    row = rt.store.get_execution("junk-1")
    assert row is not None
    assert (row.status, row.output) == ("FAILED", None)


class UpperJson:
    """A custom serializer: JSON with a marker, to show the protocol is all it takes."""

    def dumps(self, value: Any) -> str:
        return "U" + json.dumps(value)

    def loads(self, data: str) -> Any:
        assert data.startswith("U")
        return json.loads(data[1:])


def test_serializer_is_pluggable(db: str) -> None:
    """Any object with dumps/loads replaces the JSON serializer for every stored value."""
    with Runtime(db, serializer=UpperJson()) as rt:

        @rt.step()
        def double(x: int) -> int:
            return x * 2

        @rt.workflow()
        def doubled(x: int) -> int:
            return double(x)

        assert doubled.with_options(workflow_id="custom")(4) == 8
        row = rt.store.get_execution("custom")
        assert row is not None
        assert (row.inputs, row.output) == ('U{"args": [4], "kwargs": {}}', "U8")
        assert [s.output for s in rt.store.list_steps("custom")] == ["U8"]


def test_json_serializer_never_unpickles() -> None:
    """The default serializer is JSON text and has no pickle path."""
    serializer = stepstone.JsonSerializer()
    assert serializer.dumps({"a": (1,)}) == '{"a":{"__stepstone__":"tuple","v":[1]}}'
    with pytest.raises(json.JSONDecodeError):
        serializer.loads("\x80\x04K\x01.")  # a pickle of 1
