"""What the `stepstone` command exits with when it cannot do what it was asked.

One place decides: status 2 for a usage error (arguments that cannot be used: a malformed
value, an unknown option, a bad database URL), status 1 for an operation that failed (an
unknown id, an execution in the wrong state, a database that cannot be reached or has no
stepstone tables). argparse's own errors (`ArgumentError`) exit 2 too.

With --json, the error is printed as one JSON object on stderr, as `gh` and `kubectl`
print theirs on stderr whatever the output format: stdout holds a command's result or
nothing, so that a pipe into `jq` never reads an error as a result. The exit status is the
same as without --json.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from stepstone.errors import ConfigurationError, InvalidWorkflowId, SerializationError
from stepstone.persistence.listing import InvalidQuery

if TYPE_CHECKING:
    import argparse

__all__ = [
    "FAILED",
    "USAGE",
    "ArgumentError",
    "BadArgument",
    "OperationFailed",
    "error_json",
    "exit_status",
]

USAGE = 2
FAILED = 1


class BadArgument(Exception):
    """A command-line value that cannot be used; the message names it and says what to write."""


class OperationFailed(Exception):
    """The command's arguments were fine, but what it acts on does not allow it."""


class ArgumentError(Exception):
    """argparse could not parse the command line; `parser` is the (sub)command's parser,
    whose usage line goes with the message."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


# Errors stepstone raises about a value it was given, which here comes from an argument.
_USAGE_ERRORS: tuple[type[Exception], ...] = (
    BadArgument,
    ConfigurationError,
    InvalidQuery,
    InvalidWorkflowId,
    SerializationError,
)


def exit_status(exc: Exception) -> int:
    """2 for an argument that cannot be used, 1 for anything else that went wrong."""
    return USAGE if isinstance(exc, _USAGE_ERRORS) else FAILED


def error_json(exc: Exception, message: str, status: int) -> str:
    """`{"error": {"type": ..., "message": ..., "exit_status": ...}}` on one line. `type` is
    the error's class name: a stepstone error's (`WorkflowNotFound`, `DatabaseUnreachable`,
    ...), `BadArgument` or `ArgumentError` for arguments that cannot be used, and
    `OperationFailed` for an operation the database's contents do not allow."""
    error = {"type": type(exc).__name__, "message": message, "exit_status": status}
    return json.dumps({"error": error}, ensure_ascii=False)
