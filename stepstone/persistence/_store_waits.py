"""The waiting part of `Store`: durable waits, waits for other executions, messages and
one key of an execution's state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb

from stepstone.errors import UsageError, WorkflowNotFound
from stepstone.persistence.ids import check_text, check_topic, check_workflow_id
from stepstone.persistence.plans import Statement
from stepstone.persistence.rows import (
    ReceivedMessage,
    UnreadMessages,
    WaitOutcome,
    WaitRequest,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    import psycopg

    from stepstone.persistence._queries import Queries
    from stepstone.persistence._statements import Statements
    from stepstone.persistence.serialization import Described

__all__ = ["WaitStore"]


class WaitStore:
    """Waits and mailboxes: a part of `Store` (its statements, pool and describe)."""

    _sql: Statements
    queries: Queries
    _opened: bool
    describe: Callable[[], str]
    encode: Callable[[Any, Described], str]

    def wait(self, request: WaitRequest) -> WaitOutcome:
        """A sleep or a receive reached by a running execution, in one statement (fenced):
        done now (its step row written, with the state changes), or the execution WAITING
        with no owner until it is due. OwnershipLost or ExecutionCancelled if fenced out."""
        outcome: WaitOutcome = self.wait_statement(request).run(self._sql)
        return outcome

    def wait_statement(self, request: WaitRequest) -> Statement:
        """`wait` as a request (its result: a WaitOutcome)."""
        params = {
            "id": request.execution_id,
            "owner": request.owner,
            "epoch": request.epoch,
            "seq": request.seq,
            "name": request.name,
            "kind": request.kind,
            "waiting": Jsonb(request.waiting),
            "seconds": request.seconds,
            "until": request.until,
            "started_at": request.started_at,
            "state": Jsonb(request.state) if request.state else None,
            "deleted": request.deleted or None,
        }
        return Statement(
            self.queries["wait"],
            params,
            "one",
            lambda: f"recording a {request.kind} of {request.execution_id!r}",
            (request.execution_id, request.owner, request.epoch),
            convert=_wait_outcome,
        )

    def await_execution(
        self,
        execution_id: str,
        owner: str,
        epoch: int,
        seq: int,
        target: str,
        state: tuple[dict[str, str] | None, list[str] | None],
    ) -> tuple[str, str | None, dict[str, Any] | None] | None:
        """Execution `execution_id` (owned by `owner` at `epoch`) waits for `target` to end,
        in one statement (fenced): if it has ended, nothing is written and its (status,
        output, error) is returned; otherwise the execution becomes WAITING on it, with the
        state changes `state` (changed, deleted), and None is returned. WorkflowNotFound if
        there is no `target`."""
        ended: tuple[str, str | None, dict[str, Any] | None] | None = self.await_statement(
            execution_id, owner, epoch, seq, target, state
        ).run(self._sql)
        return ended

    def await_statement(
        self,
        execution_id: str,
        owner: str,
        epoch: int,
        seq: int,
        target: str,
        state: tuple[dict[str, str] | None, list[str] | None],
    ) -> Statement:
        """`await_execution` as a request."""
        changed, deleted = state
        params = {
            "id": execution_id,
            "owner": owner,
            "epoch": epoch,
            "seq": seq,
            "target": target,
            "state": Jsonb(changed) if changed else None,
            "deleted": deleted or None,
        }

        def ended(row: Any) -> tuple[str, str | None, dict[str, Any] | None] | None:
            done, status, output, error = row
            if status is None:
                raise WorkflowNotFound(f"no execution has workflow id {target!r}")
            return (status, output, error) if done else None

        return Statement(
            self.queries["await"],
            params,
            "one",
            lambda: f"waiting for {target!r} in {execution_id!r}",
            (execution_id, owner, epoch),
            convert=ended,
        )

    def encode_message(
        self, workflow_id: str, topic: str, message: Any, idempotency_key: str | None
    ) -> str:
        """`message` to `workflow_id` on `topic`, serialized, once the id, the topic and the
        idempotency key are checked (InvalidWorkflowId or UsageError naming a bad one;
        SerializationError for a message that cannot be stored)."""
        check_workflow_id(workflow_id)
        check_topic(topic)
        check_text("idempotency key", idempotency_key)
        return self.encode(
            message, lambda: f"message to workflow {workflow_id!r} on topic {topic!r}"
        )

    def send(
        self,
        execution_id: str,
        topic: str,
        payload: str,
        *,
        idempotency_key: str | None = None,
        sender: str | None = None,
        conn: psycopg.Connection[Any] | None = None,
    ) -> tuple[str, bool]:
        """Put a serialized message into the mailbox (execution_id, topic): the status the
        execution had and whether the message was stored (once per idempotency key). With
        `conn`, in that connection's transaction: it is sent when the caller commits, and
        not at all if it rolls back. WorkflowNotFound for an unknown id; UsageError, naming
        its status, for an execution that has ended (nothing is stored)."""
        if conn is None:
            sent: tuple[str, bool] = self.send_statement(
                execution_id, topic, payload, idempotency_key=idempotency_key, sender=sender
            ).run(self._sql)
            return sent
        params = _send_params(execution_id, topic, payload, idempotency_key, sender)
        row = self._sql.one_on(conn, "send", params, f"sending to {execution_id!r}")
        return _sent(execution_id, row)

    def send_statement(
        self,
        execution_id: str,
        topic: str,
        payload: str,
        *,
        idempotency_key: str | None = None,
        sender: str | None = None,
    ) -> Statement:
        """`send` on a pooled connection, as a request (its result: (status, stored))."""
        return Statement(
            self.queries["send"],
            _send_params(execution_id, topic, payload, idempotency_key, sender),
            "one",
            lambda: f"sending to {execution_id!r}",
            convert=lambda row: _sent(execution_id, row),
        )

    def count_waiting(self) -> dict[str, int]:
        """How many executions are WAITING now, by workflow name, in the whole schema (one
        index-only scan of executions_waiting_idx); empty when the store is closed."""
        if not self._opened:
            return {}
        return {str(name): int(count) for name, count in self._sql.all("count_waiting", {})}

    def unread_messages(self, execution_id: str) -> list[UnreadMessages]:
        """The mailbox of an execution: per topic (in topic order), how many messages wait
        unread and when the oldest of them was sent."""
        rows = self._sql.all("unread_messages", {"id": execution_id})
        return [UnreadMessages(*row) for row in rows]

    def received_messages(self, execution_id: str) -> list[ReceivedMessage]:
        """The messages the current run of an execution received (a continue-as-new starts a
        run afresh), in the order it received them, each with the position of the receive
        that consumed it (payloads are that receive's step output)."""
        rows = self._sql.all("received_messages", {"id": execution_id})
        return [ReceivedMessage(*row) for row in rows]


def _wait_outcome(row: Any) -> WaitOutcome:
    return WaitOutcome(*row)


def _send_params(
    execution_id: str, topic: str, payload: str, key: str | None, sender: str | None
) -> dict[str, Any]:
    return {"id": execution_id, "topic": topic, "payload": payload, "key": key, "sender": sender}


def _sent(execution_id: str, row: Any) -> tuple[str, bool]:
    """What a send's row says: (the status the execution had, whether the message was
    stored); WorkflowNotFound or UsageError (naming its status) when it was not sent."""
    assert row is not None  # noqa: S101 - the function returns one row
    status, stored = row
    if status is None:
        raise WorkflowNotFound(
            f"no execution has workflow id {execution_id!r}: the message was not sent"
        )
    if status in ("SUCCEEDED", "FAILED", "CANCELLED"):
        raise UsageError(
            f"workflow {execution_id!r} has ended ({status}): it receives no more messages, "
            "so the message was not sent"
        )
    return str(status), bool(stored)
