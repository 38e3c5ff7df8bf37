"""The persistence layer: the only code that talks to the database, usable on its own."""

from __future__ import annotations

from stepstone.persistence.rows import (
    Checkpoint,
    ExecutionRow,
    HealthStatus,
    LogRow,
    RecordedStep,
    ResumeRecord,
    StartRequest,
    StartResult,
    StepCommit,
    StepRow,
    WorkflowRow,
)
from stepstone.persistence.serialization import DEFAULT_MAX_SIZE, JsonSerializer, Serializer
from stepstone.persistence.store import Store

__all__ = [
    "DEFAULT_MAX_SIZE",
    "Checkpoint",
    "ExecutionRow",
    "HealthStatus",
    "JsonSerializer",
    "LogRow",
    "RecordedStep",
    "ResumeRecord",
    "Serializer",
    "StartRequest",
    "StartResult",
    "StepCommit",
    "StepRow",
    "Store",
    "WorkflowRow",
]
