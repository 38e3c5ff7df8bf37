"""A worker process for the parity crash tests, built with the flavours of flavours.py.

    python -m tests.parity.worker FLAVOUR DSN EXECUTOR_ID MODE NOTES_DIR

MODE `run`: run execution "killed-7" of the `killed` workflow (steps one, two, three, each
noting its name in NOTES_DIR/effects when its body runs); the first body of step two to
run kills its own process with SIGKILL (after noting "two"), then print the result.
MODE `run-tx`: run execution "ledger-7" of the `ledger` workflow (a transaction step
inserting a row into table `ledger`; its first body to run kills its own process with
SIGKILL after the INSERT, before the commit), then print the result.
MODE `serve`: launch (which recovers what there is to recover) and wait until every
execution in the database has ended, then print "served".
Leases are short (1 s) so that tests run quickly.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from stepstone import Runtime
from tests.parity.flavours import AsyncFlavour, flavour_of

flavour_name, dsn, executor_id, mode, notes_dir = sys.argv[1:6]
notes = Path(notes_dir)
rt = Runtime(
    dsn,
    executor_id=executor_id,
    workers=4,
    lease_seconds=1.0,
    heartbeat_interval=0.2,
    sweep_interval=0.2,
)
f = flavour_of(flavour_name, rt)


def note(effect: str) -> None:
    with (notes / "effects").open("a") as out:
        out.write(effect + "\n")
        out.flush()
        os.fsync(out.fileno())


@f.step("one")
def one() -> str:
    note("one")
    return "one"


@f.step("two")
def two() -> str:
    note("two")
    first = notes / "killed-once"
    if not first.exists():
        first.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return "two"


@f.step("three")
def three() -> str:
    note("three")
    return "three"


@f.workflow("killed")
def killed() -> Any:
    done = [(yield one()), (yield two()), (yield three())]
    return done


@f.transaction("book")
def book(entry: str) -> Any:
    yield f.sql("INSERT INTO ledger (entry) VALUES (%s)", entry)
    note("book")
    first = notes / "booked-once"
    if not first.exists():
        first.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    ((count,),) = yield f.sql("SELECT count(*) FROM ledger")
    return count


@f.workflow("ledger")
def ledger() -> Any:
    return (yield book("entry-1"))


def all_ended() -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM stepstone.executions "
            "WHERE status NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED')"
        ).fetchone()
    return row is not None and row[0] == 0


if mode == "run":
    print(f.call(killed, workflow_id="killed-7"))
elif mode == "run-tx":
    print(f.call(ledger, workflow_id="ledger-7"))
elif mode == "serve":
    if isinstance(f, AsyncFlavour):
        f.run(rt.launch_async)  # the loop keeps running for resumed executions
    else:
        rt.launch()
    deadline = time.monotonic() + 30
    while not all_ended() and time.monotonic() < deadline:
        time.sleep(0.05)
    print("served" if all_ended() else "not served")
f.close()
