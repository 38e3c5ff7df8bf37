"""What the `stepstone` command exits with when it cannot do what it was asked.

One place decides: status 2 for a usage error (arguments that cannot be used: a malformed
value, an unknown option, a bad database URL), status 1 for an operation that failed (an
unknown id, an execution in the wrong state, a database that cannot be reached or has no
stepstone tables). argparse's own errors exit 2 before any of this runs.
"""

from __future__ import annotations

from stepstone.errors import ConfigurationError, InvalidWorkflowId, SerializationError
from stepstone.persistence.listing import InvalidQuery

__all__ = ["FAILED", "USAGE", "BadArgument", "OperationFailed", "exit_status"]

USAGE = 2
FAILED = 1


class BadArgument(Exception):
    """A command-line value that cannot be used; the message names it and says what to write."""


class OperationFailed(Exception):
    """The command's arguments were fine, but what it acts on does not allow it."""


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
