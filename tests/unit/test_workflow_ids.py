from __future__ import annotations

import pytest

from stepstone.errors import InvalidWorkflowId, UsageError
from stepstone.persistence.ids import check_workflow_id


@pytest.mark.parametrize(
    "workflow_id",
    ["a", "order-42", "x" * 255, "é" * 255, "🎉" * 255, "注文-1", " spaces inside ", "a/b:c"],
    ids=lambda v: f"{v[:10]!r}x{len(v)}",
)
def test_accepts_strings_of_1_to_255_characters(workflow_id: str) -> None:
    """Strings of 1 to 255 characters, unicode included, are returned unchanged."""
    assert check_workflow_id(workflow_id) is workflow_id


def test_invalid_workflow_id_is_a_value_error() -> None:
    """InvalidWorkflowId is both a UsageError and a ValueError."""
    with pytest.raises(ValueError, match="empty") as info:
        check_workflow_id("")
    assert isinstance(info.value, InvalidWorkflowId)
    assert isinstance(info.value, UsageError)


def test_rejects_empty_string() -> None:
    """An empty id is rejected with a message saying to pass an id or none."""
    with pytest.raises(InvalidWorkflowId) as info:
        check_workflow_id("")
    message = str(info.value)
    assert "must not be empty" in message
    assert "pass an id" in message


@pytest.mark.parametrize("length", [256, 1000])
def test_rejects_ids_over_255_characters(length: int) -> None:
    """An id over 255 characters is rejected naming its length, the limit and the remedy."""
    workflow_id = "k" * length
    with pytest.raises(InvalidWorkflowId) as info:
        check_workflow_id(workflow_id)
    message = str(info.value)
    assert f"{length} characters" in message
    assert "255" in message
    assert "use a shorter id" in message
    assert "k" * 40 in message


def test_length_is_counted_in_characters_not_bytes() -> None:
    """256 multibyte characters are rejected and 255 are not, whatever their byte size."""
    check_workflow_id("€" * 255)
    with pytest.raises(InvalidWorkflowId, match="256 characters"):
        check_workflow_id("€" * 256)


@pytest.mark.parametrize(
    ("workflow_id", "fragment"),
    [(None, "None (NoneType)"), (42, "42 (int)"), (b"bytes", "b'bytes' (bytes)")],
    ids=["None", "int", "bytes"],
)
def test_rejects_non_strings(workflow_id: object, fragment: str) -> None:
    """A non-string id is rejected naming the value, its type and that a string is required."""
    with pytest.raises(InvalidWorkflowId) as info:
        check_workflow_id(workflow_id)
    message = str(info.value)
    assert "must be a string" in message
    assert fragment in message


@pytest.mark.parametrize(
    ("workflow_id", "reason"),
    [
        ("bad\x00id", "NUL"),
        ("\x00", "NUL"),
        ("x" * 254 + "\x00", "NUL"),
        ("a\ud800", "lone surrogate"),
        ("\udfff", "lone surrogate"),
        ("x" * 250 + "\udc80", "lone surrogate"),
    ],
    ids=["nul-inside", "nul-only", "nul-at-255", "surrogate", "surrogate-only", "surrogate-end"],
)
def test_rejects_text_postgresql_cannot_store(workflow_id: str, reason: str) -> None:
    """An id holding a NUL character or a lone surrogate (not valid Unicode, which UTF-8
    cannot encode) is rejected naming the value and why it cannot be stored."""
    with pytest.raises(InvalidWorkflowId) as info:
        check_workflow_id(workflow_id)
    message = str(info.value)
    assert reason in message
    assert "PostgreSQL cannot store" in message
    assert repr(workflow_id) in message
