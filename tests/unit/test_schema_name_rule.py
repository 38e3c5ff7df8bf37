from __future__ import annotations

import re

import pytest

from stepstone.errors import ConfigurationError
from stepstone.persistence.ids import check_schema_name


@pytest.mark.parametrize(
    "schema",
    ["stepstone", "Tenant_7", "_", "_private", "a", "x" * 63, "PG_upper", "pgx", "public"],
)
def test_accepts_plain_identifiers(schema: str) -> None:
    """ASCII letters, digits and underscores, not starting with a digit, 1 to 63 characters,
    are returned unchanged (case kept)."""
    assert check_schema_name(schema) is schema


@pytest.mark.parametrize(
    "schema",
    [
        "abc\n",  # a pattern matched with re.match and $ would let a trailing newline through
        "\nabc",
        "tab\tname",
        "x" * 64,
        "9lives",
        "٣abc",  # a digit to Python's \d, but not ASCII
        "ab٣",
        "naïve",
        "ǅx",  # a titlecase letter
        "a-b",
        "a.b",
        "pg_catalog",
        "pg_",
    ],
    ids=ascii,
)
def test_refuses_everything_else(schema: str) -> None:
    """Any other character, a leading digit, a length over 63 or the pg_ prefix PostgreSQL
    reserves is refused, naming the value (escaped) and stating the rule."""
    with pytest.raises(ConfigurationError) as info:
        check_schema_name(schema)
    message = str(info.value)
    assert message.startswith(f"schema {schema!r} is not a name stepstone can use")
    assert "[A-Za-z_][A-Za-z0-9_]*" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("schema", "shown"), [(None, "None (NoneType)"), (b"abc", "b'abc' (bytes)"), (7, "7 (int)")]
)
def test_refuses_non_strings(schema: object, shown: str) -> None:
    """A schema that is not a string is refused naming the value and its type."""
    with pytest.raises(
        ConfigurationError, match=re.escape(f"schema must be a string, got {shown}")
    ):
        check_schema_name(schema)
