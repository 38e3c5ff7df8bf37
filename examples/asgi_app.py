"""An ASGI app (Starlette) whose endpoint runs a durable async workflow per order.

The runtime lives as long as the app: its lifespan launches it (`async with rt:`) and shuts
it down when the server stops. `POST /orders/{order_id}` starts the order's workflow with
the order id as its workflow id and waits for its result, so a retried request (the same
id) returns the recorded result and runs nothing again. `GET /orders/{order_id}` reads it.
Starlette and uvicorn are needed for this example only:

    pip install starlette uvicorn          # in a checkout: pip install -e '.[asgi-example]'
    uvicorn --app-dir examples asgi_app:app
    STEPSTONE_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres uvicorn --app-dir examples asgi_app:app

    curl -X POST localhost:8000/orders/o-1 -d '{"sku": "sku-1", "cents": 1250}'
    curl localhost:8000/orders/o-1

With nothing configured it runs on the embedded PostgreSQL (its data in ./.stepstone/). It
creates a small `orders` table next to stepstone's schema.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import structlog
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from stepstone import ResultTimeout, RetryPolicy, Runtime, WorkflowFailed, WorkflowNotFound

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import psycopg
    from starlette.requests import Request

rt = Runtime()  # STEPSTONE_DATABASE_URL, else PGHOST/PGDATABASE/PGSERVICE, else ./.stepstone/
log = structlog.get_logger()


@rt.transaction()
async def record_order(
    conn: psycopg.AsyncConnection[Any], order_id: str, sku: str, cents: int
) -> None:
    """The app's own row: it commits together with the step's record, exactly once."""
    await conn.execute(
        "INSERT INTO orders (id, sku, cents) VALUES (%s, %s, %s)", [order_id, sku, cents]
    )


@rt.step(retry=RetryPolicy(max_attempts=5, initial_interval=0.1))
async def charge(order_id: str, cents: int) -> str:
    """A call to a payment service: retried if it fails, never repeated once recorded."""
    log.info("payment_requested", order_id=order_id, cents=cents)
    await asyncio.sleep(0.01)
    return f"receipt-{order_id}-{cents}"


@rt.step()
async def book_courier(order_id: str, sku: str) -> str:
    """A call to a courier's API."""
    await asyncio.sleep(0.01)
    return f"courier-{sku}-{order_id}"


@rt.workflow()
async def place_order(order_id: str, sku: str, cents: int) -> dict[str, str]:
    await record_order(order_id, sku, cents)
    receipt, courier = await asyncio.gather(charge(order_id, cents), book_courier(order_id, sku))
    return {"order_id": order_id, "receipt": receipt, "courier": courier}


async def post_order(request: Request) -> JSONResponse:
    order_id = request.path_params["order_id"]
    body = await request.json()
    pinned = place_order.with_options(workflow_id=f"order-{order_id}")
    handle = await rt.start_async(pinned, order_id, str(body["sku"]), int(body["cents"]))
    try:
        return JSONResponse(await handle.result_async(timeout=10))
    except ResultTimeout:  # it goes on running: GET tells when it is done
        return JSONResponse({"order_id": order_id, "status": "RUNNING"}, status_code=202)
    except WorkflowFailed as exc:
        return JSONResponse({"order_id": order_id, "error": str(exc.__cause__)}, status_code=500)


def get_order(request: Request) -> JSONResponse:
    # A plain def: Starlette runs it in its thread pool, where the handle's sync reads belong.
    order_id = request.path_params["order_id"]
    handle = rt.handle(f"order-{order_id}")
    try:
        status = handle.status()
    except WorkflowNotFound:
        return JSONResponse({"order_id": order_id, "error": "no such order"}, status_code=404)
    result = handle.result() if status == "SUCCEEDED" else None
    return JSONResponse({"order_id": order_id, "status": status, "result": result})


@contextlib.asynccontextmanager
async def lifespan(_app: Starlette) -> AsyncIterator[None]:
    async with rt:
        with rt.store.connection() as conn:  # once, before the first request
            conn.execute(
                "CREATE TABLE IF NOT EXISTS orders (id text PRIMARY KEY, sku text NOT NULL, cents int NOT NULL)"
            )
        yield  # the server serves requests; on SIGTERM, running workflows finish first


app = Starlette(
    routes=[
        Route("/orders/{order_id}", post_order, methods=["POST"]),
        Route("/orders/{order_id}", get_order, methods=["GET"]),
    ],
    lifespan=lifespan,
)
