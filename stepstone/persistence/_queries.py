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
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


class Queries:
    """Each named query with `{schema}` filled in, as bytes ready to execute."""

    def __init__(self, schema: str) -> None:
        ident = sql.Identifier(schema)
        self._rendered = {
            # The text comes from a file shipped in this package, never from input.
            name: sql.SQL(cast(LiteralString, body)).format(schema=ident).as_bytes(None)
            for name, body in _blocks().items()
        }

    def __getitem__(self, name: str) -> bytes:
        return self._rendered[name]
