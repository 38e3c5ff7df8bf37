"""The workflows and steps a Runtime defines, by name."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from stepstone.errors import DuplicateRegistration

if TYPE_CHECKING:
    from stepstone.runtime.definitions import Workflow

__all__ = ["Registry"]


class Registry:
    """Workflow definitions by name, and step names (which must be unique too)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._workflows: dict[str, Workflow[Any, Any]] = {}
        self._steps: set[str] = set()

    def add_workflow(self, workflow: Workflow[Any, Any]) -> None:
        with self._lock:
            existing = self._workflows.get(workflow.name)
            if existing is not None:
                raise DuplicateRegistration(
                    f"a workflow named {workflow.name!r} is already registered "
                    f"({existing.fn!r}): pass name= to tell them apart"
                )
            self._workflows[workflow.name] = workflow

    def add_step(self, name: str) -> None:
        with self._lock:
            if name in self._steps:
                raise DuplicateRegistration(
                    f"a step named {name!r} is already registered: pass name= to tell them apart"
                )
            self._steps.add(name)

    def find(self, name: str, version: str) -> Workflow[Any, Any] | None:
        """The registered workflow of that name and version, if there is one."""
        with self._lock:
            workflow = self._workflows.get(name)
        return workflow if workflow is not None and workflow.version == version else None

    def workflows(self) -> list[Workflow[Any, Any]]:
        with self._lock:
            return list(self._workflows.values())

    def registered(self) -> list[tuple[str, str]]:
        """(name, version) of every registered workflow."""
        with self._lock:
            return [(w.name, w.version) for w in self._workflows.values()]
