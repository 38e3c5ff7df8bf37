"""A worker process for crash tests.

    python -m tests.crash.worker DSN EXECUTOR_ID MODE NOTES_DIR [KILL_AT]

MODE `order`: run the `order` workflow for id "order-7", killing itself with SIGKILL at
KILL_AT (see POINTS in test_killed_worker.py), or pausing 3 s there if KILL_AT is
"pause:<point>", then print the result (the outcome of whichever run finished it).
MODE `serve`: launch (which recovers what there is to recover) and wait until every
execution in the database has ended, then print "served".
MODE `traced`: `order` if KILL_AT is given, else `serve`, writing finished spans to
NOTES_DIR/spans as they end.
MODE `load`: start executions load-0 .. load-39 of the `multi` workflow (idempotent by id)
and wait for all of them, then print "loaded" (KILL_AT "slow": with five times longer steps).
MODE `kid`: start execution "kid" of the `kid` workflow (its step waits until the file
NOTES_DIR/go exists), then serve like `serve`.
MODE `family`: run execution "family" of the `family` workflow, whose step is followed by
a call of the child "kid" (running in another process: the parent suspends), and print
its result.
MODE `nap`: run execution "nap-7" of the `nap` workflow (a step, a 2 s sleep, a step) and
print its result.
MODE `inbox`: run execution "inbox-7" of the `inbox` workflow (a receive on "go", then a
step noting the message; KILL_AT "after_recv" kills the process right after the receive
returned) and print its result.
MODE `relay`: run execution "relay-7" of the `relay` workflow (a step per run, continuing
as new from run 1 to run 3; KILL_AT "before_continue" kills the process in run 2 just before
its continue-as-new, "during_continue" notes "relay continues" and waits for the file
NOTES_DIR/go first, "after_continue" kills it at the start of run 3) and print its result.
Leases are short (1 s) so that tests run quickly.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import stepstone
from stepstone import Runtime

if TYPE_CHECKING:
    import psycopg

dsn, executor_id, mode, notes_dir = sys.argv[1:5]
kill_at = sys.argv[5] if len(sys.argv) > 5 else ""
notes = Path(notes_dir)
telemetry: dict[str, Any] = {}
if mode == "traced":  # `order`, with every finished span written to NOTES_DIR/spans at once
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    spans_file = (notes / "spans").open("a")
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(
            ConsoleSpanExporter(out=spans_file, formatter=lambda s: s.to_json(indent=None) + "\n")
        )
    )
    telemetry["tracer_provider"] = provider
    mode = "order" if kill_at else "serve"
rt = Runtime(
    dsn,
    executor_id=executor_id,
    workers=8,
    lease_seconds=1.0,
    heartbeat_interval=0.2,
    sweep_interval=0.2,
    **telemetry,
)


def die_at(point: str) -> None:
    if point == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    if f"pause:{point}" == kill_at:  # the test freezes the process here (SIGSTOP)
        note(f"paused {point}")
        time.sleep(3)


def note(what: str) -> None:
    with (notes / "notes").open("a") as f:
        f.write(what + "\n")
        f.flush()
        os.fsync(f.fileno())


@rt.transaction()
def reserve(conn: psycopg.Connection[Any], order_id: str) -> int:
    conn.execute("INSERT INTO effects (execution_id, step) VALUES (%s, 'reserve')", [order_id])
    die_at("inside_transaction_after_sql")
    return 1


@rt.step()
def charge(order_id: str) -> str:
    note(f"charge {order_id}")
    die_at("inside_plain_step")
    gate = notes / "go"
    if kill_at == "during_completion":
        while not gate.exists():  # the test takes a lock that will block the completion
            time.sleep(0.01)
    return f"charged {order_id}"


@rt.workflow()
def order(order_id: str) -> str:
    die_at("before_first_commit")
    reserve(order_id)
    die_at("between_steps")
    receipt = charge(order_id)
    die_at("after_step_commit")
    return f"{receipt}, done"


@rt.transaction()
def record(conn: psycopg.Connection[Any], execution_id: str, step: str) -> None:
    conn.execute("INSERT INTO effects (execution_id, step) VALUES (%s, %s)", [execution_id, step])


@rt.step()
def work(execution_id: str, step: str, pause: float) -> str:
    note(f"{step} {execution_id}")
    time.sleep(pause)
    return step


@rt.workflow()
def multi(n: int) -> int:
    pauses = random.Random(n)
    execution_id = f"load-{n}"
    for i in range(3):
        record(execution_id, f"t{i}")
        work(execution_id, f"p{i}", pauses.uniform(0.0, 0.05) * (5 if kill_at == "slow" else 1))
    return n


@rt.step()
def toy(name: str) -> str:
    note(f"toy {name}")
    while not (notes / "go").exists():
        time.sleep(0.01)
    return f"toy for {name}"


@rt.workflow()
def kid() -> str:
    return toy("kid")


@rt.step()
def before(name: str) -> str:
    note(f"before {name}")
    return name


@rt.workflow()
def family() -> str:
    name = before("family")
    note("parent waits for kid")
    return f"{name} got {kid.with_options(workflow_id='kid')()}"


@rt.step()
def mark(what: str) -> str:
    note(what)
    return what


@rt.workflow()
def nap() -> str:
    mark("before nap-7")
    stepstone.sleep(2)
    return mark("after nap-7")


@rt.workflow()
def inbox() -> str:
    message = stepstone.recv("go", timeout=60)
    die_at("after_recv")
    return mark(f"got {message}")


@rt.workflow()
def relay(n: int) -> str:
    if n == 3:
        die_at("after_continue")
    mark(f"relay run {n}")
    if n < 3:
        if n == 2:
            die_at("before_continue")
            if kill_at == "during_continue":  # the test blocks the statement, then kills
                note("relay continues")
                while not (notes / "go").exists():
                    time.sleep(0.01)
        stepstone.continue_as_new(n + 1)
    return mark(f"relay done after {n} runs")


def all_ended() -> bool:
    with rt.store.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM stepstone.executions WHERE status NOT IN ('SUCCEEDED', 'FAILED')"
        ).fetchone()
    return row is not None and row[0] == 0


rt.launch()
if mode == "order":
    # Fenced out (another executor took it over), the call waits for that run's outcome.
    print(order.with_options(workflow_id="order-7")("order-7"))
elif mode == "nap":
    print(nap.with_options(workflow_id="nap-7")())
elif mode == "inbox":
    print(inbox.with_options(workflow_id="inbox-7")())
elif mode == "relay":
    print(relay.with_options(workflow_id="relay-7")(1))
elif mode == "family":
    print(family.with_options(workflow_id="family")())
elif mode in ("serve", "kid"):
    if mode == "kid":
        rt.start(kid.with_options(workflow_id="kid"))
    while not all_ended():
        time.sleep(0.05)
    print("served")
elif mode == "load":
    handles = [rt.start(multi.with_options(workflow_id=f"load-{n}"), n) for n in range(40)]
    for handle in handles:
        handle.result(timeout=120)
    print("loaded")
rt.shutdown()
if telemetry:
    telemetry["tracer_provider"].shutdown()
