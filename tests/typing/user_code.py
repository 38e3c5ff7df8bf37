"""Realistic user code: must pass `mypy --strict` with stepstone's annotations."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import TYPE_CHECKING, Any

import stepstone
from stepstone import Client, ClientHandle, Deduplicated, RetryPolicy, Runtime, WorkflowHandle

if TYPE_CHECKING:
    import psycopg

rt = Runtime("postgresql://localhost/app", schema="shop", workers=4)


@dataclasses.dataclass(frozen=True)
class Order:
    order_id: str
    amount_cents: int


@rt.step(
    retry=RetryPolicy(
        max_attempts=5, initial_interval=0.1, backoff=2.0, non_retryable=(ValueError,)
    )
)
def charge(order: Order, *, currency: str = "EUR") -> str:
    return f"charged {order.amount_cents} {currency}"


@rt.transaction()
def reserve(conn: psycopg.Connection[Any], order: Order) -> int:
    row = conn.execute(
        "UPDATE stock SET n = n - 1 WHERE sku = %s RETURNING n", [order.order_id]
    ).fetchone()
    return int(row[0]) if row else 0


@rt.transaction(name="audit")
def audit(conn: psycopg.Connection[tuple[Any, ...]], message: str) -> None:
    conn.execute("INSERT INTO audit (message) VALUES (%s)", [message])


@rt.workflow(version="2")
def checkout(order: Order) -> str:
    left: int = reserve(order)
    ctx = stepstone.current()
    ctx.state["stage"] = "reserved"
    ctx.state["left"] = left
    audit(f"reserved {ctx.workflow_id}")
    receipt: str = charge(order, currency="USD")
    return receipt


@rt.workflow()
def batch(orders: list[Order]) -> list[str]:
    return [checkout(order) for order in orders]


@rt.workflow()
def tally(total: int, batches: int) -> int:
    for _ in range(10):
        total += int(stepstone.recv("amount"))
    if batches > 1:
        stepstone.continue_as_new(total, batches - 1)  # never returns
    return total


def main() -> None:
    rt.launch()
    direct: str = checkout(Order("o-1", 1200))
    handle: WorkflowHandle[str] = rt.start(
        checkout.with_options(workflow_id="order-o-2"), Order("o-2", 500)
    )
    result: str = handle.result(timeout=30)
    many: WorkflowHandle[list[str]] = rt.start(batch, [Order("o-3", 1)])
    status: str = rt.handle("order-o-2").status()
    state: dict[str, Any] = rt.get_state("order-o-2")
    print(direct, result, many.result(), status, state, rt.health_status().healthy)
    rt.shutdown()
    with Runtime() as other:
        print(other.executor_id)


def web_request(user_email: str, conn: psycopg.Connection[tuple[Any, ...]]) -> str:
    """A web process without the workflow code: it enqueues by name and reads the result."""
    with Client("postgresql://localhost/app", schema="shop", client_id="web") as client:
        try:
            handle: ClientHandle = client.enqueue(
                "emails",
                "send_email",
                user_email,
                workflow_id=f"welcome-{user_email}",
                priority=-1,
                dedup_key=user_email,
                delay=dt.timedelta(minutes=5),
                attributes={"tenant": "acme"},
                conn=conn,
                template="welcome",
            )
        except Deduplicated as taken:
            handle = client.handle(taken.existing)
        conn.commit()
        client.send(handle.workflow_id, {"opened": True}, topic="events", idempotency_key="o-1")
        stage: Any = client.wait_state(handle.workflow_id, "stage", timeout=30.0)
        state: dict[str, Any] = client.get_state(handle.workflow_id)
        print(stage, state, handle.status())
        return str(handle.result(timeout=60))
