"""Calls that are wrong: mypy --strict must flag each line carrying an E comment."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stepstone import Client, Runtime

if TYPE_CHECKING:
    import psycopg

rt = Runtime()


@rt.step()
def double(n: int) -> int:
    return n * 2


@rt.transaction()
def write(conn: psycopg.Connection[Any], note: str) -> None:
    conn.execute("INSERT INTO notes VALUES (%s)", [note])


@rt.workflow()
def flow(n: int) -> str:
    double("two")  # E: wrong argument type to a step
    write(conn=None, note="x")  # E: the connection is injected, not passed
    write(1)  # E: wrong argument type to a transaction step
    return str(double(n))


flow("1")  # E: wrong argument type to a workflow
rt.start(flow, "1")  # E: rt.start checks the workflow's arguments
flag: int = rt.start(flow, 1).result()  # E: result() has the workflow's return type
rt.start(flow)  # E: missing argument

client = Client()
client.enqueue("emails", "send_email", "x", priority="high")  # E: priority is an int
client.enqueue("emails")  # E: the workflow name is required
client.send("id-1", "hi", "topic")  # E: topic is keyword-only


def takes_text(text: str) -> None: ...


def takes_number(n: int) -> None: ...


@rt.step()
async def adouble(n: int) -> int:
    return n * 2


@rt.transaction()
async def awrite(conn: psycopg.AsyncConnection[Any], note: str) -> None:
    await conn.execute("INSERT INTO notes VALUES (%s)", [note])


@rt.workflow()
async def aflow(n: int) -> str:
    await awrite(1)  # E: wrong argument type to an async transaction step
    takes_text(await adouble(n))  # E: an awaited step has its function's result type
    return str(await adouble(n))


async def caller() -> None:
    await aflow("1")  # E: wrong argument type to an async workflow
    takes_number(await aflow(1))  # E: an awaited workflow has its function's result type


async def starter() -> None:
    handle = await rt.start_async(aflow, 1)
    takes_number(await handle.result_async())  # E: result_async() has the awaited result type
    await rt.start_async(aflow, "1")  # E: start_async checks the workflow's arguments


async def enqueuer(conn: psycopg.Connection[Any]) -> None:
    queue = rt.queue("q")
    handle = await queue.enqueue_async(aflow, 1)
    takes_number(await handle.result_async())  # E: an enqueued async workflow's result type
    await queue.enqueue_async(flow, 1, conn=conn)  # E: enqueue_async takes an AsyncConnection
    await client.enqueue_async("emails", "send_email", "x", priority="high")  # E: priority
    await client.send_async("id-1", "hi", "topic")  # E: topic is keyword-only
    takes_number(await client.handle("id-1").status_async())  # E: a status is a str
