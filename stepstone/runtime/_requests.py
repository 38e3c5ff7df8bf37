"""The requests of the runtime's own plans (see `stepstone.persistence.plans`): run a
workflow's or a step's body, pause between attempts. Each runs with plain calls for the
sync driver and with `await` for the async one; a body's outcome is answered as (True,
its result) or (False, what it raised), never thrown into the plan."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from stepstone.runtime._execution import Execution

__all__ = ["Call", "Sleep", "StepBody", "run_body"]


def run_body(
    execution: Execution, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[bool, Any]:
    """Run a plain `def` step body as part of its step: (True, its result) or (False, what
    it raised). No I/O of stepstone's, so a plan may call it directly (the hot path saves a
    round through the driver)."""
    execution.in_step = True
    try:
        return True, fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - answered to the plan
        return False, exc
    finally:
        execution.in_step = False


class StepBody:
    """The request that runs a step's body (as part of the step: `in_step` is set while it
    runs); it answers (True, the result) or (False, what the body raised)."""

    __slots__ = ("args", "execution", "fn", "kwargs")

    def __init__(
        self,
        execution: Execution,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.execution = execution
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def run(self, io: object) -> tuple[bool, Any]:
        return run_body(self.execution, self.fn, self.args, self.kwargs)

    async def arun(self, aio: object) -> tuple[bool, Any]:
        execution = self.execution
        execution.in_step = True
        try:
            return True, await self.fn(*self.args, **self.kwargs)
        except BaseException as exc:  # noqa: BLE001 - answered to the plan
            return False, exc
        finally:
            execution.in_step = False


class Call:
    """The request that runs a workflow's body: (True, its result) or (False, what it
    raised)."""

    __slots__ = ("args", "fn", "kwargs")

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def run(self, io: object) -> tuple[bool, Any]:
        try:
            return True, self.fn(*self.args, **self.kwargs)
        except BaseException as exc:  # noqa: BLE001 - answered to the plan
            return False, exc

    async def arun(self, aio: object) -> tuple[bool, Any]:
        try:
            value = self.fn(*self.args, **self.kwargs)
            return True, (await value) if asyncio.iscoroutine(value) else value
        except BaseException as exc:  # noqa: BLE001 - answered to the plan
            return False, exc


class Sleep:
    """The request that pauses between a step's attempts."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def run(self, io: object) -> None:
        time.sleep(self.seconds)

    async def arun(self, aio: object) -> None:
        await asyncio.sleep(self.seconds)
