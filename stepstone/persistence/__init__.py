"""The persistence layer: the only code that talks to the database, usable on its own."""

from __future__ import annotations

from stepstone.persistence.listing import (
    ExecutionFilter,
    ExecutionPage,
    ExecutionSummary,
    InvalidQuery,
)
from stepstone.persistence.rows import (
    Checkpoint,
    ExecutionRow,
    HealthStatus,
    LogRow,
    ReceivedMessage,
    RecordedStep,
    ResumeRecord,
    SlowStep,
    StartRequest,
    StartResult,
    StepCommit,
    StepRow,
    UnreadMessages,
    WorkflowRegistration,
    WorkflowRow,
    WorkflowStats,
)
from stepstone.persistence.serialization import DEFAULT_MAX_SIZE, JsonSerializer, Serializer
from stepstone.persistence.store import Store

__all__ = [
    "DEFAULT_MAX_SIZE",
    "Checkpoint",
    "ExecutionFilter",
    "ExecutionPage",
    "ExecutionRow",
    "ExecutionSummary",
    "HealthStatus",
    "InvalidQuery",
    "JsonSerializer",
    "LogRow",
    "ReceivedMessage",
    "RecordedStep",
    "ResumeRecord",
    "Serializer",
    "SlowStep",
    "StartRequest",
    "StartResult",
    "StepCommit",
    "StepRow",
    "Store",
    "UnreadMessages",
    "WorkflowRegistration",
    "WorkflowRow",
    "WorkflowStats",
]
