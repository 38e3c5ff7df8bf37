"""A durable checkout: a transaction step, a retried step and durable state.

With nothing configured it runs on the embedded PostgreSQL (its data in ./.stepstone/); or
point it at any PostgreSQL. It creates a small `stock` table next to stepstone's schema.

    python examples/quickstart.py
    STEPSTONE_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python examples/quickstart.py
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import stepstone
from stepstone import RetryPolicy, Runtime

if TYPE_CHECKING:
    import psycopg

rt = Runtime()  # STEPSTONE_DATABASE_URL, else PGHOST/PGDATABASE/PGSERVICE, else ./.stepstone/


@rt.transaction()
def reserve(conn: psycopg.Connection[Any], sku: str) -> int:
    """Take one item from stock; commits together with the step's record, exactly once."""
    row = conn.execute("UPDATE stock SET n = n - 1 WHERE sku = %s RETURNING n", [sku]).fetchone()
    if row is None:
        raise LookupError(f"unknown sku {sku!r}")
    return int(row[0])


_calls: dict[str, int] = {}


@rt.step(retry=RetryPolicy(max_attempts=5, initial_interval=0.05, backoff=2.0))
def charge(order_id: str, cents: int) -> str:
    """A call to a flaky payment service: retried, and never repeated once recorded."""
    _calls[order_id] = _calls.get(order_id, 0) + 1
    if _calls[order_id] == 1:  # simulated flakiness: each order's first attempt times out
        raise ConnectionError("payment service timed out")
    return f"receipt-{order_id}-{cents}"


@rt.workflow()
def checkout(order_id: str, sku: str, cents: int) -> str:
    left = reserve(sku)
    stepstone.current().state["stage"] = "reserved"
    stepstone.current().state["stock_left"] = left
    receipt = charge(order_id, cents)
    stepstone.current().state["stage"] = "paid"
    return receipt


def main() -> None:
    rt.launch()
    try:
        with rt.store.connection() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS stock (sku text PRIMARY KEY, n int NOT NULL)")
            conn.execute("INSERT INTO stock VALUES ('sku-1', 1000000) ON CONFLICT (sku) DO NOTHING")

        order_id = f"order-{uuid.uuid4().hex[:8]}"
        pinned = checkout.with_options(workflow_id=order_id)

        print(f"running {order_id} in this thread ...")
        print("  result:", pinned(order_id, "sku-1", 1250))
        print("  state: ", rt.get_state(order_id))

        print("calling it again with the same id returns the recorded result, running nothing:")
        print("  result:", pinned(order_id, "sku-1", 1250))

        handle = rt.start(checkout, f"{order_id}-bg", "sku-1", 990)
        print(f"started {handle.workflow_id} in the worker pool ...")
        print("  result:", handle.result(timeout=30), "status:", handle.status())

        for step in rt.store.list_steps(order_id):
            print(
                f"  step {step.seq} {step.name:8} {step.kind:12} attempts={step.attempts} output={step.output}"
            )
    finally:
        rt.shutdown()


if __name__ == "__main__":
    main()
