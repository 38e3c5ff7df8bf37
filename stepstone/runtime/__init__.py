"""What users decorate and call: Runtime, its decorators, handles and `current()`."""

from __future__ import annotations

from stepstone.runtime.client import Client, ClientHandle
from stepstone.runtime.context import State, WorkflowContext, current
from stepstone.runtime.continuation import continue_as_new, continue_as_new_async
from stepstone.runtime.definitions import Step, TransactionStep, Workflow
from stepstone.runtime.handle import WorkflowHandle
from stepstone.runtime.queues import Queue
from stepstone.runtime.retry import RetryPolicy
from stepstone.runtime.runtime import Runtime
from stepstone.runtime.waits import (
    recv,
    recv_async,
    sleep,
    sleep_async,
    sleep_until,
    sleep_until_async,
    wait_state,
    wait_state_async,
)

__all__ = [
    "Client",
    "ClientHandle",
    "Queue",
    "RetryPolicy",
    "Runtime",
    "State",
    "Step",
    "TransactionStep",
    "Workflow",
    "WorkflowContext",
    "WorkflowHandle",
    "continue_as_new",
    "continue_as_new_async",
    "current",
    "recv",
    "recv_async",
    "sleep",
    "sleep_async",
    "sleep_until",
    "sleep_until_async",
    "wait_state",
    "wait_state_async",
]
