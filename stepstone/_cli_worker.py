"""`stepstone worker MODULE:ATTR`: run an application's Runtime as a worker process.

It imports MODULE (the current directory first on sys.path, as `python -m` does), takes the
Runtime at ATTR, applies `--queues` (Runtime.serve) and `--workers` (Runtime.set_workers),
launches it and serves until SIGTERM or Ctrl-C. The first signal shuts down gracefully
(Runtime.shutdown(grace=--grace)): no new work, running executions handed back at their
next step boundary, step bodies in flight given the grace period; the exit status is 0.
A second signal exits at once (status 128 + the signal's number): what runs is taken
over by another worker when this one's lease expires.
"""

from __future__ import annotations

import importlib
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepstone._cli_errors import BadArgument
from stepstone.errors import StepstoneError
from stepstone.runtime.runtime import DEFAULT_GRACE, Runtime

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from types import FrameType, ModuleType

__all__ = ["add_worker"]

_TARGET_HINT = "write MODULE:ATTR, such as myapp.workers:rt (a module and its Runtime)"


def add_worker(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = commands.add_parser(
        "worker",
        help="run an application's Runtime as a worker until SIGTERM or Ctrl-C",
        description="Import MODULE, take the Runtime at ATTR, launch it and serve its queues "
        "until SIGTERM or Ctrl-C; then hand running executions back at their next step "
        "boundary (a second signal exits at once). The Runtime's own settings (its database, "
        "schema, executor id) apply: --database-url and --schema are not used.",
    )
    worker.add_argument("target", metavar="MODULE:ATTR", help="e.g. myapp.workers:rt")
    worker.add_argument(
        "--queues",
        metavar="Q1,Q2",
        help="serve only these declared queues (default: every queue the Runtime declares)",
    )
    worker.add_argument(
        "--workers", type=int, metavar="N", help="worker threads (default: the Runtime's)"
    )
    worker.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help=f"how long step bodies in flight get at shutdown (default {DEFAULT_GRACE:g})",
    )
    worker.set_defaults(handler=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    """The `worker` command: serve until a signal; 0 after a graceful shutdown."""
    grace: float = args.grace
    if not math.isfinite(grace) or grace < 0:
        raise BadArgument(f"--grace {grace:g} is not a number of seconds >= 0: write, e.g., 30")
    if args.database_url is not None or args.schema != "stepstone":
        raise BadArgument(
            "stepstone worker uses the Runtime's own database and schema (its dsn and schema "
            "arguments, or STEPSTONE_DATABASE_URL): leave out --database-url and --schema"
        )
    rt = load_runtime(args.target)
    if args.queues is not None:
        names = [name.strip() for name in args.queues.split(",") if name.strip()]
        if not names:
            raise BadArgument("--queues is empty: name the queues to serve, e.g. emails,reports")
        _configure(rt.serve, *names)
    if args.workers is not None:
        _configure(rt.set_workers, args.workers)
    stop = _Signals()
    with stop.installed():
        rt.launch()
        queues = ",".join(rt.served_queues) or "none"
        _say(f"started executor_id={rt.executor_id} queues={queues} workers={rt.workers}")
        stop.wait()
        _say(f"stopping on {stop.name}: handing running executions back (grace {grace:g} s)")
        rt.shutdown(grace=grace)
    _say(f"stopped executor_id={rt.executor_id}")
    return 0


def _configure(method: Callable[..., object], *values: Any) -> None:
    """Apply an option to the Runtime; what it refuses is a bad argument (exit status 2)."""
    try:
        method(*values)
    except StepstoneError as exc:
        raise BadArgument(str(exc)) from exc


def _say(line: str) -> None:
    """One line of the worker's own log, on stderr (the Runtime's events go to logging or
    structlog)."""
    print(f"stepstone worker: {line}", file=sys.stderr, flush=True)


def load_runtime(target: str) -> Runtime:
    """The Runtime at MODULE:ATTR; BadArgument saying what is wrong otherwise."""
    module_name, colon, attr = target.partition(":")
    if not colon or not module_name or not attr:
        raise BadArgument(f"{target!r} is not MODULE:ATTR: {_TARGET_HINT}")
    module = _import(module_name)
    found: Any = module
    for part in attr.split("."):
        if not hasattr(found, part):
            raise BadArgument(
                f"module {module_name!r} has no attribute {attr!r}{_runtimes_in(module)}"
            )
        found = getattr(found, part)
    if not isinstance(found, Runtime):
        raise BadArgument(
            f"{target!r} is an object of type {type(found).__name__}, not a stepstone "
            f"Runtime{_runtimes_in(module)}"
        )
    return found


def _import(module_name: str) -> ModuleType:
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # as `python -m` does
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(f"{missing}."):
            raise BadArgument(
                f"no module named {module_name!r} (looked in {cwd} and on sys.path): run "
                "the worker from your project's directory, or set PYTHONPATH"
            ) from None
        raise BadArgument(f"importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        raise BadArgument(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc


def _runtimes_in(module: ModuleType) -> str:
    names = sorted(name for name, value in vars(module).items() if isinstance(value, Runtime))
    if not names:
        return f" (the module has no Runtime at its top level): {_TARGET_HINT}"
    return f" (Runtime objects in it: {', '.join(names)})"


class _Signals:
    """SIGTERM and SIGINT: the first one ends `wait()`; a second one exits at once."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.name = ""

    def installed(self) -> _Installed:
        return _Installed(self)

    def wait(self) -> None:
        # A timed wait, so that the main thread runs signal handlers promptly.
        while not self._event.wait(0.5):
            pass

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._event.is_set():
            _say(f"{name} again: exiting now; a lease expiry hands what runs to another worker")
            sys.stdout.flush()
            os._exit(128 + signum)
        self.name = name
        self._event.set()


class _Installed:
    """Installs the handlers for a `with` block and puts the previous ones back after."""

    _SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, signals: _Signals) -> None:
        self._signals = signals
        self._previous: list[Any] = []

    def __enter__(self) -> None:
        self._previous = [signal.signal(s, self._signals.handle) for s in self._SIGNALS]

    def __exit__(self, *exc_info: object) -> None:
        for s, previous in zip(self._SIGNALS, self._previous, strict=True):
            signal.signal(s, previous)
