"""The rules for names stored in the tables: workflow ids (which are execution ids, as the
executions table stores them), the schema name, which every statement and migration quotes,
mailbox topics and state keys."""

from __future__ import annotations

import re

from stepstone.errors import ConfigurationError, InvalidWorkflowId, UsageError
from stepstone.persistence.serialization import unstorable

__all__ = [
    "MAX_SCHEMA_NAME_LENGTH",
    "MAX_TOPIC_LENGTH",
    "MAX_WORKFLOW_ID_LENGTH",
    "SCHEMA_NAME_RULE",
    "check_schema_name",
    "check_state_key",
    "check_storable",
    "check_text",
    "check_topic",
    "check_workflow_id",
]

MAX_WORKFLOW_ID_LENGTH = 255

MAX_SCHEMA_NAME_LENGTH = 63
"""PostgreSQL's identifier limit (NAMEDATALEN - 1); it truncates longer names silently."""

SCHEMA_NAME_RULE = (
    f"1 to {MAX_SCHEMA_NAME_LENGTH} ASCII letters, digits and underscores, not starting with "
    "a digit ([A-Za-z_][A-Za-z0-9_]*), and not starting with pg_ (reserved for system schemas)"
)
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_workflow_id(workflow_id: object) -> str:
    """Return `workflow_id` if it is a valid id; InvalidWorkflowId naming it otherwise."""
    if not isinstance(workflow_id, str):
        raise InvalidWorkflowId(
            f"workflow_id must be a string, got {workflow_id!r} ({type(workflow_id).__name__})"
        )
    if not workflow_id:
        raise InvalidWorkflowId(
            "workflow_id must not be empty: pass an id, or none to get one generated"
        )
    if len(workflow_id) > MAX_WORKFLOW_ID_LENGTH:
        raise InvalidWorkflowId(
            f"workflow_id {workflow_id[:40]!r}... is {len(workflow_id)} characters long, over the "
            f"limit of {MAX_WORKFLOW_ID_LENGTH}: use a shorter id (a hash of a long key works)"
        )
    problem = unstorable(workflow_id)
    if problem is not None:
        raise InvalidWorkflowId(
            f"workflow_id {workflow_id!r} {problem}, which PostgreSQL cannot store: "
            "use an id without it"
        )
    return workflow_id


def check_schema_name(schema: object) -> str:
    """Return `schema` if it follows SCHEMA_NAME_RULE; ConfigurationError naming it otherwise.

    The name is quoted as an identifier wherever it is used, but quoting is not enough: the
    migrations put it inside `$$`-quoted function bodies, which a `$$` in it would end, and
    psycopg reads a `%` in a statement sent with parameters as a placeholder. So only plain
    identifier characters are accepted; case is kept (`Tenant_7` stays `Tenant_7`).
    """
    if not isinstance(schema, str):
        raise ConfigurationError(
            f"schema must be a string, got {schema!r} ({type(schema).__name__}): "
            f"a schema name is {SCHEMA_NAME_RULE}"
        )
    if (
        not 0 < len(schema) <= MAX_SCHEMA_NAME_LENGTH
        or _SCHEMA_NAME.fullmatch(schema) is None
        or schema.startswith("pg_")
    ):
        raise ConfigurationError(
            f"schema {schema!r} is not a name stepstone can use: a schema name is "
            f"{SCHEMA_NAME_RULE}"
        )
    return schema


MAX_TOPIC_LENGTH = 255


def check_topic(topic: object) -> str:
    """`topic` if it can name a mailbox; UsageError naming it otherwise."""
    if not isinstance(topic, str) or len(topic) > MAX_TOPIC_LENGTH:
        raise UsageError(
            f"a topic must be a string of at most {MAX_TOPIC_LENGTH} characters, got {topic!r}"
        )
    return check_storable(topic, "the topic")


def check_state_key(key: object, whose: str = "") -> str:
    """`key` if it can be a state key (`whose`: " of workflow ..." for the message);
    UsageError naming it otherwise."""
    if not isinstance(key, str):
        raise UsageError(f"state keys must be strings, got {key!r} ({type(key).__name__})")
    return check_storable(key, "state key", whose=whose, hint=": use a key without it")


def check_storable(value: str, named: str, *, whose: str = "", hint: str = "") -> str:
    """`value` if PostgreSQL can store it as text; otherwise UsageError naming it (as
    `named`, then `value`, then `whose`) and why, followed by `hint`."""
    problem = unstorable(value)
    if problem is not None:
        raise UsageError(f"{named} {value!r}{whose} {problem}, which PostgreSQL cannot store{hint}")
    return value


def check_text(what: str, value: object) -> None:
    """UsageError naming `value` unless it is None (the default) or text PostgreSQL can
    store."""
    if value is None:
        return
    if not isinstance(value, str) or not value:
        raise UsageError(f"the {what} must be a non-empty string, got {value!r}")
    check_storable(value, f"the {what}")
