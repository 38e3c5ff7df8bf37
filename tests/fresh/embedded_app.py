"""A workflow run from a fresh virtual environment with nothing configured (the embedded
PostgreSQL in ./.stepstone): `start` runs it until its second step, which blocks (the test
kills the process there); `resume` launches a runtime with the same executor id, which
resumes and finishes it. Each step body appends its name to ./ran, so the test sees what
ran twice."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from stepstone import Runtime

logging.basicConfig(level=logging.INFO, stream=sys.stderr)

rt = Runtime(executor_id="fresh-app")
RAN = Path("ran")


@rt.step()
def reserve(order: str) -> str:
    with RAN.open("a") as f:
        f.write("reserve\n")
    return f"reserved {order}"


@rt.step()
def charge(order: str) -> str:
    with RAN.open("a") as f:
        f.write("charge\n")
    if Path("block").exists():
        time.sleep(600)  # killed here
    return f"charged {order}"


@rt.workflow()
def checkout(order: str) -> str:
    return f"{reserve(order)}, {charge(order)}"


def main(mode: str) -> None:
    rt.launch()
    try:
        if mode == "start":
            checkout.with_options(workflow_id="order-1")("order-1")
        else:
            print("result:", rt.handle("order-1").result(timeout=60))
    finally:
        rt.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
