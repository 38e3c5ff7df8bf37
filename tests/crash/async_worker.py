"""A worker process running an async workflow, for crash tests.

    python -m tests.crash.async_worker DSN EXECUTOR_ID MODE NOTES_DIR [KILL_AT]

MODE `run`: launch_async(), then run the async workflow `pair` as execution "pair-7",
killing itself with SIGKILL inside its second step if KILL_AT is "inside_second_step";
print the result.
MODE `serve` (a `launch()` runtime) and `aserve` (a `launch_async()` one): launch, which
recovers what there is to recover, wait for the outcome of "pair-7" and print it.
Each step notes its name and the name of the thread it runs in; finished spans are
written to NOTES_DIR/spans as they end. Leases are short (1 s) so that tests run quickly.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from stepstone import Runtime

dsn, executor_id, mode, notes_dir = sys.argv[1:5]
kill_at = sys.argv[5] if len(sys.argv) > 5 else ""
notes = Path(notes_dir)
spans_file = (notes / "spans").open("a")
provider = TracerProvider()
provider.add_span_processor(
    SimpleSpanProcessor(
        ConsoleSpanExporter(out=spans_file, formatter=lambda s: s.to_json(indent=None) + "\n")
    )
)
rt = Runtime(
    dsn,
    executor_id=executor_id,
    workers=2,
    lease_seconds=1.0,
    heartbeat_interval=0.2,
    sweep_interval=0.2,
    tracer_provider=provider,
)


def note(what: str) -> None:
    with (notes / "notes").open("a") as f:
        f.write(f"{what} {threading.current_thread().name}\n")
        f.flush()
        os.fsync(f.fileno())


@rt.step()
async def first(name: str) -> str:
    note("first")
    await asyncio.sleep(0)
    return f"first of {name}"


@rt.step()
async def second(name: str) -> str:
    note("second")
    if kill_at == "inside_second_step":
        os.kill(os.getpid(), signal.SIGKILL)
    await asyncio.sleep(0)
    return f"second of {name}"


@rt.workflow()
async def pair(name: str) -> str:
    return f"{await first(name)}, {await second(name)}"


async def main() -> None:
    async with rt:
        if mode == "run":
            print(await pair.with_options(workflow_id="pair-7")("pair-7"))
        else:
            print(await rt.handle("pair-7").result_async(timeout=60))


if mode == "serve":
    with rt:
        print(rt.handle("pair-7").result(timeout=60))
else:
    asyncio.run(main())
provider.shutdown()
