"""What the in-process recovery tests share: short timings and a stand-in for a crash."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from stepstone.errors import HandedBack

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from stepstone import Runtime

FAST = {
    "lease_seconds": 1.0,
    "heartbeat_interval": 0.2,
    "sweep_interval": 0.2,
    "connect_timeout": 2,
}
"""Runtime timings that make a lease expire, and a sweep find it, within about a second."""


class Crash(HandedBack):
    """Stands for the process dying where it is raised: a control-flow signal, so the engine
    records nothing and writes nothing for it (as if the process had vanished), and the
    execution stays RUNNING and owned by its executor. (Any other BaseException raised in a
    workflow hands the execution back at once, which a dying process cannot do.)"""

    def __init__(self) -> None:
        super().__init__("the process died here (a test's stand-in for a crash)", "")


def wait_for(condition: Callable[[], bool], timeout: float = 15) -> None:
    """Poll `condition` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def run_async(rt: Runtime, main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """`main()` on a fresh event loop, inside `async with rt:`; then the store is opened
    again for the test's reads."""

    async def inside() -> Any:
        async with rt:
            return await main()

    try:
        return asyncio.run(inside())
    finally:
        rt.store.open(migrate=False)
