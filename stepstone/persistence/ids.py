"""The rule for workflow ids (which are execution ids): what the executions table stores."""

from __future__ import annotations

from stepstone.errors import InvalidWorkflowId
from stepstone.persistence.serialization import unstorable

__all__ = ["MAX_WORKFLOW_ID_LENGTH", "check_workflow_id"]

MAX_WORKFLOW_ID_LENGTH = 255


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
