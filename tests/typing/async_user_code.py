"""Realistic async user code: must pass `mypy --strict` with stepstone's annotations."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

import stepstone
from stepstone import Client, ClientHandle, Deduplicated, RetryPolicy, Runtime, WorkflowHandle

if TYPE_CHECKING:
    import psycopg

rt = Runtime("postgresql://localhost/app", schema="shop")
orders = rt.queue("orders", concurrency=10)


@dataclasses.dataclass(frozen=True)
class Order:
    order_id: str
    amount_cents: int


@rt.step(retry=RetryPolicy(max_attempts=3))
async def charge(order: Order, *, currency: str = "EUR") -> str:
    await asyncio.sleep(0)
    return f"charged {order.amount_cents} {currency}"


@rt.step()
async def notify(order_id: str) -> None:
    await asyncio.to_thread(print, f"notified {order_id}")


@rt.transaction()
async def reserve(conn: psycopg.AsyncConnection[Any], order: Order) -> int:
    cursor = await conn.execute(
        "UPDATE stock SET n = n - 1 WHERE sku = %s RETURNING n", [order.order_id]
    )
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


@rt.workflow(version="2")
async def checkout(order: Order) -> str:
    left: int = await reserve(order)
    stepstone.current().state["left"] = left
    receipt, _ = await asyncio.gather(charge(order, currency="USD"), notify(order.order_id))
    return receipt


async def main() -> list[str]:
    async with rt:
        first: str = await checkout(Order("o-1", 100))
        second: str = await checkout.with_options(workflow_id="o-2")(Order("o-2", 200))
    await rt.launch_async()
    await rt.shutdown_async(grace=5)
    return [first, second]


async def started() -> str:
    handle = await rt.start_async(checkout.with_options(workflow_id="o-3"), Order("o-3", 300))
    receipt: str = await handle.result_async(timeout=30)
    return receipt


def started_from_sync_code() -> str:
    handle = rt.start(checkout.with_options(workflow_id="o-4"), Order("o-4", 400))
    receipt: str = handle.result(timeout=30)
    return receipt


@rt.workflow()
async def refund(order: Order) -> str:
    return f"refunded {order.order_id}"


@rt.workflow()
async def patient(order: Order, rounds: int = 0) -> str:
    await stepstone.sleep_async(60)
    approval: Any = await stepstone.recv_async("approval", timeout=5)
    stage: Any = await stepstone.wait_state_async("o-1", "left", timeout=5)
    await rt.send_async("o-1", {"approved": approval, "stage": stage}, topic="t")
    refunded: str = await refund(order)
    if rounds < 3:
        await stepstone.continue_as_new_async(order, rounds + 1)
    return refunded


@rt.workflow()
def send_email(address: str, *, template: str = "welcome") -> bool:
    return bool(address and template)


async def enqueued(conn: psycopg.AsyncConnection[Any]) -> tuple[str, bool]:
    """A web handler on the runtime's async pool: enqueue (also in its own transaction),
    read the status and state, await the results."""
    handle: WorkflowHandle[str] = await orders.enqueue_async(
        checkout.with_options(workflow_id="o-4", priority=-1, dedup_key="o-4"), Order("o-4", 400)
    )
    email: WorkflowHandle[bool] = await orders.enqueue_async(
        send_email, "a@b.c", template="receipt", conn=conn
    )
    await conn.commit()
    status: str = await handle.status_async()
    state: dict[str, Any] = await handle.get_state_async()
    left: Any = await rt.wait_state_async("o-4", "left", timeout=30.0)
    everything: dict[str, Any] = await rt.get_state_async("o-4")
    print(status, state, left, everything)
    return await handle.result_async(timeout=60), await email.result_async()


async def web_request(user_email: str) -> Any:
    """A web process without the workflow code, on asyncio."""
    async with Client("postgresql://localhost/app", schema="shop", client_id="web") as client:
        try:
            handle: ClientHandle = await client.enqueue_async(
                "emails", "send_email", user_email, dedup_key=user_email, template="welcome"
            )
        except Deduplicated as taken:
            handle = client.handle(taken.existing)
        await client.send_async(handle.workflow_id, {"opened": True}, topic="events")
        stage: Any = await client.wait_state_async(handle.workflow_id, "stage", timeout=30.0)
        state: dict[str, Any] = await client.get_state_async(handle.workflow_id)
        print(stage, state, await handle.status_async(), await handle.get_state_async())
        return await handle.result_async(timeout=60)
