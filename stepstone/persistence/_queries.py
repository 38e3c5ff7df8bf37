"""The named SQL blocks of `queries.sql`, rendered once per schema."""

from __future__ import annotations

import importlib.resources
import re
from functools import cache
from typing import LiteralString, cast

from psycopg import sql

__all__ = ["Queries"]

_NAME = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)


@cache
def _blocks() -> dict[str, str]:
    text = importlib.resources.files(__package__).joinpath("queries.sql").read_text("utf-8")
    parts = _NAME.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    return {
        name: _strip_comments(body) for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def _strip_comments(body: str) -> str:
    # Comments document the file; they need not travel to the server with every call.
    return "\n".join(
        line for line in body.strip().splitlines() if not line.lstrip().startswith("--")
    )


def _trusted(text: str) -> LiteralString:
    # The text comes from a file shipped in this package, never from input.
    return cast(LiteralString, text)  # type: ignore[redundant-cast]  # mypy sees LiteralString as str


class Queries:
    """Each named query with `{schema}` filled in, as bytes ready to execute."""

    def __init__(self, schema: str) -> None:
        ident = sql.Identifier(schema)
        self._rendered = {
            name: sql.SQL(_trusted(body)).format(schema=ident).as_bytes(None)
            for name, body in _blocks().items()
        }

    def __getitem__(self, name: str) -> bytes:
        return self._rendered[name]
