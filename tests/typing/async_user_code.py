"""Realistic async user code: must pass `mypy --strict` with stepstone's annotations."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

import stepstone
from stepstone import RetryPolicy, Runtime

if TYPE_CHECKING:
    import psycopg

rt = Runtime("postgresql://localhost/app", schema="shop")


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
