"""`Client`: enqueue workflows and read their outcomes by name, from a process that has only
the database.

A Client never imports the workflow code and runs nothing: it writes ENQUEUED executions
for the workers that serve a queue, sends messages, and reads statuses, results and state.
Which version of a workflow it enqueues comes from the `workflows` table, where every
worker registers its definitions at launch.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Self

import psycopg

from stepstone import migrations
from stepstone.errors import (
    ConfigurationError,
    PersistenceError,
    SerializationError,
    UnregisteredWorkflow,
    UsageError,
)
from stepstone.persistence.ids import check_text, check_workflow_id
from stepstone.persistence.plans import adrive, drive, on_connection
from stepstone.persistence.serialization import DEFAULT_MAX_SIZE, Serializer
from stepstone.persistence.store import Store
from stepstone.runtime._options import start_options
from stepstone.runtime._outcomes import Outcomes
from stepstone.runtime.context import _CURRENT
from stepstone.runtime.handle import status_plan
from stepstone.runtime.queues import (
    check_enqueued,
    check_queue_name,
    enqueue_request,
    enqueued_id,
)
from stepstone.runtime.waits import check_state_wait

if TYPE_CHECKING:
    import datetime as dt

    from stepstone.persistence.plans import AsyncStatements, Plan, Request
    from stepstone.persistence.rows import EnqueueRequest, WorkflowRow

__all__ = ["Client", "ClientHandle"]


class Client:
    """Enqueues workflows by name and reads their outcomes, in a process without the
    workflow code: it needs only the database the workers use.

    The database is `dsn`, else STEPSTONE_DATABASE_URL, else libpq's variables, else the
    embedded server, as for Runtime; `schema` must hold stepstone's tables at this version of stepstone (a Client
    never migrates: a worker's `launch()` or `stepstone migrate` does). It connects on
    first use (or `open()`), with a pool of up to `pool_max_size` connections; `close()`
    it, or use `with Client(...) as client:`. Arguments and messages go through
    `serializer` (JSON by default, as the workers'). `client_id` names it in the audit log
    (default `client:<host>-<pid>`).

    >>> client = stepstone.Client("postgresql://localhost/app")  # doctest: +SKIP
    >>> client.enqueue("emails", "send_email", "a@b.c", workflow_id="welcome-8").result(timeout=60)  # doctest: +SKIP
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        schema: str = "stepstone",
        client_id: str | None = None,
        pool_max_size: int = 4,
        serializer: Serializer | None = None,
        max_value_size: int = DEFAULT_MAX_SIZE,
        connect_timeout: float = 10.0,
    ) -> None:
        if client_id is not None and (not isinstance(client_id, str) or not client_id):
            raise ConfigurationError(f"client_id must be a non-empty string, got {client_id!r}")
        self.store = Store(
            dsn,
            schema=schema,
            min_size=1,
            max_size=pool_max_size,
            serializer=serializer,
            max_value_size=max_value_size,
            connect_timeout=connect_timeout,
        )
        self.client_id = client_id or f"client:{socket.gethostname()}-{os.getpid()}"
        self._outcomes = Outcomes(self.store)
        self._lock = threading.Lock()
        self._state = "new"  # then "open", then "closed"
        self._async_lock: asyncio.Lock | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Connect now (otherwise the first call does) and check the schema:
        ConfigurationError if it has no stepstone tables or is behind this stepstone."""
        with self._lock:
            if self._state == "open":
                return
            if self._state == "closed":
                raise UsageError("this Client was closed: make a new one")
            self.store.open(migrate=False)
            try:
                self._check_schema()
            except BaseException:
                self.store.close()
                raise
            self._state = "open"

    def _check_schema(self) -> None:
        drive(self._schema_plan(), self.store.io)

    def _schema_plan(self) -> Plan[None]:
        """ConfigurationError unless the schema is at this stepstone's version, for either
        driver."""
        expected = migrations.latest_version()
        try:
            found = yield self.store.schema_version_statement()
        except PersistenceError as exc:
            if not isinstance(exc.__cause__, psycopg.errors.UndefinedTable):
                raise
            found = None
        if found is not None and found >= expected:
            return
        where = f"schema {self.store.schema!r} on {self.store.describe()}"
        state = "has no stepstone tables" if found is None else f"is at version {found}"
        raise ConfigurationError(
            f"{where} {state}; this stepstone needs version {expected}. A Client does not "
            "migrate: launch a worker (Runtime.launch() migrates) or run `stepstone migrate`, "
            "or point the Client at the database and schema your workers use"
        )

    def _open_store(self) -> Store:
        if self._state != "open":
            self.open()
        return self.store

    def close(self) -> None:
        """Close the connection pool; the Client cannot be used afterwards. (A Client
        whose async pool was opened is closed with `await client.close_async()`, which
        closes both.)"""
        with self._lock:
            if self._state == "open":
                self.store.close()
            self._state = "closed"

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def open_async(self) -> None:
        """`open()` for asyncio code: open psycopg's async pool, which the `*_async` calls
        use (otherwise the first of them does), and check the schema."""
        if self._state == "closed":
            raise UsageError("this Client was closed: make a new one")
        if self._async_lock is None:
            self._async_lock = asyncio.Lock()
        async with self._async_lock:
            if self.store.aio is not None:
                return
            await self.store.open_async()
            try:
                await adrive(self._schema_plan(), self._async_statements())
            except BaseException:
                await self.store.close_async()
                raise

    async def _open_aio(self) -> AsyncStatements:
        if self._state == "closed":
            raise UsageError("this Client was closed: make a new one")
        if self.store.aio is None:
            await self.open_async()
        return self._async_statements()

    def _async_statements(self) -> AsyncStatements:
        aio = self.store.aio
        if aio is None:
            raise UsageError("this Client's async pool is closed: make a new Client")
        return aio

    async def close_async(self) -> None:
        """Close the async pool (and the sync one, if a sync call opened it); the Client
        cannot be used afterwards."""
        await self.store.close_async()
        self.close()

    async def __aenter__(self) -> Self:
        await self.open_async()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close_async()

    # -- enqueue -----------------------------------------------------------------------------

    def enqueue(
        self,
        queue: str,
        workflow_name: str,
        /,
        *args: Any,
        workflow_id: str | None = None,
        version: str | None = None,
        priority: int = 0,
        dedup_key: str | None = None,
        delay: float | dt.timedelta | None = None,
        partition_key: str | None = None,
        timeout: float | dt.timedelta | None = None,
        attributes: dict[str, Any] | None = None,
        conn: psycopg.Connection[Any] | None = None,
        **kwargs: Any,
    ) -> ClientHandle:
        """Enqueue an execution of the workflow named `workflow_name` on `queue`, with
        these arguments, and return its handle; durable once this returns (with `conn`, a
        psycopg connection in a transaction of yours: once you commit, and not at all if
        you roll back). One round trip.

        The version enqueued is `version` if given, else the one a worker registered most
        recently (each worker registers its definitions at launch, so during a rolling
        deploy that is the newest deploy's); workers claim only the versions they run.
        Arguments must be values the serializer encodes (JSON types by default, and the
        datetime, UUID, Decimal, bytes... it round-trips); the workers decode them by the
        workflow's annotations. The options are those of `Workflow.with_options`, checked
        the same way. The keywords named here are the Client's own, not the workflow's.

        Nothing is written, and the error says why, when: no worker ever registered the
        workflow (or that version) in this schema (UnregisteredWorkflow), the queue is not
        declared (UsageError), an argument cannot be serialized (SerializationError), an
        option is invalid (UsageError), an unfinished execution of the queue has
        `dedup_key` (Deduplicated), or `workflow_id` belongs to another workflow
        (WorkflowIdConflict). An id that exists for this workflow returns its handle.
        """
        request = self._request(
            queue,
            workflow_name,
            args,
            kwargs,
            workflow_id=workflow_id,
            version=version,
            priority=priority,
            dedup_key=dedup_key,
            delay=delay,
            partition_key=partition_key,
            timeout=timeout,
            attributes=attributes,
        )
        store = self._open_store()
        drive(self._enqueue_plan(request, conn), store.io)
        return ClientHandle(self, request.id)

    async def enqueue_async(
        self,
        queue: str,
        workflow_name: str,
        /,
        *args: Any,
        workflow_id: str | None = None,
        version: str | None = None,
        priority: int = 0,
        dedup_key: str | None = None,
        delay: float | dt.timedelta | None = None,
        partition_key: str | None = None,
        timeout: float | dt.timedelta | None = None,
        attributes: dict[str, Any] | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
        **kwargs: Any,
    ) -> ClientHandle:
        """`enqueue()` for asyncio code: the same checks and errors, one round trip on the
        async pool (with `conn`, a psycopg AsyncConnection in a transaction of yours:
        enqueued once you commit, and not at all if you roll back)."""
        request = self._request(
            queue,
            workflow_name,
            args,
            kwargs,
            workflow_id=workflow_id,
            version=version,
            priority=priority,
            dedup_key=dedup_key,
            delay=delay,
            partition_key=partition_key,
            timeout=timeout,
            attributes=attributes,
        )
        aio = await self._open_aio()
        await adrive(self._enqueue_plan(request, conn), aio)
        return ClientHandle(self, request.id)

    def _request(
        self,
        queue: str,
        workflow_name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        workflow_id: str | None,
        version: str | None,
        priority: int,
        dedup_key: str | None,
        delay: float | dt.timedelta | None,
        partition_key: str | None,
        timeout: float | dt.timedelta | None,
        attributes: dict[str, Any] | None,
    ) -> EnqueueRequest:
        """What an enqueue writes, once its arguments and options are checked."""
        check_queue_name(queue)
        check_text("workflow name", workflow_name)
        check_text("workflow version", version)
        options = start_options(
            workflow_id=workflow_id,
            attributes=attributes,
            timeout=timeout,
            priority=priority,
            dedup_key=dedup_key,
            delay=delay,
            partition_key=partition_key,
        )
        chosen_id = enqueued_id(options.workflow_id, workflow_name, queue)
        inputs = _encode_inputs(self.store, workflow_name, queue, args, kwargs)
        return enqueue_request(
            options, chosen_id, workflow_name, version, inputs, queue, self.client_id
        )

    def _enqueue_plan(self, request: EnqueueRequest, conn: object) -> Plan[None]:
        """The enqueue's one statement (on the caller's `conn` if given), for either
        driver; UnregisteredWorkflow (after one more read, to name the latest version) if
        no worker registered the workflow."""
        store = self.store
        statement = store.enqueue_statement(request, registered=True)
        result = yield on_connection(conn, statement)
        if result.outcome == "no_workflow":
            name, version = request.workflow_name, request.workflow_version
            latest = None
            if version is not None:
                latest = yield store.load_workflow_statement(name)
            raise _unregistered(store, name, version, latest)
        check_enqueued(result, request)

    # -- executions --------------------------------------------------------------------------

    def handle(self, workflow_id: str) -> ClientHandle:
        """A handle to any execution by id (whether it exists is known when it is used)."""
        return ClientHandle(self, check_workflow_id(workflow_id))

    def send(
        self,
        workflow_id: str,
        message: Any,
        *,
        topic: str = "",
        idempotency_key: str | None = None,
        conn: psycopg.Connection[Any] | None = None,
    ) -> None:
        """Send `message` to execution `workflow_id` on `topic`, for its `stepstone.recv`,
        as `Runtime.send` does (the same idempotency key stores one message; with `conn`,
        sent when you commit). WorkflowNotFound for an unknown id; UsageError, naming its
        status, for an execution that has ended."""
        execution = _CURRENT.get()
        if execution is not None and not execution.in_step and idempotency_key is None:
            raise UsageError(
                f"Client.send to {workflow_id!r} in a workflow body would send again on "
                "replay: use the runtime's rt.send(), which records it, or pass an "
                "idempotency_key"
            )
        store = self._open_store()
        payload = store.encode_message(workflow_id, topic, message, idempotency_key)
        store.send(
            workflow_id,
            topic,
            payload,
            idempotency_key=idempotency_key,
            sender=self.client_id,
            conn=conn,
        )

    async def send_async(
        self,
        workflow_id: str,
        message: Any,
        *,
        topic: str = "",
        idempotency_key: str | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> None:
        """`send()` for asyncio code: the same checks and errors, one statement on the
        async pool (with `conn`, a psycopg AsyncConnection in a transaction of yours: sent
        when you commit)."""
        execution = _CURRENT.get()
        if execution is not None and not execution.in_step and idempotency_key is None:
            raise UsageError(
                f"Client.send_async to {workflow_id!r} in a workflow would send again on "
                "replay: use the runtime's rt.send_async(), which records it, or pass an "
                "idempotency_key"
            )
        payload = self.store.encode_message(workflow_id, topic, message, idempotency_key)
        aio = await self._open_aio()
        statement = self.store.send_statement(
            workflow_id, topic, payload, idempotency_key=idempotency_key, sender=self.client_id
        )
        await adrive(_one(on_connection(conn, statement)), aio)

    def get_state(self, workflow_id: str) -> dict[str, Any]:
        """The latest committed state of an execution (empty if it has none);
        WorkflowNotFound if there is no such execution."""
        check_workflow_id(workflow_id)
        return self._open_store().require_state(workflow_id)

    def wait_state(
        self, workflow_id: str, key: str, timeout: float | dt.timedelta | None = None
    ) -> Any:
        """The value of state key `key` of execution `workflow_id` once it is committed (at
        once if it is). StateTimeout if it did not come within `timeout` (seconds or a
        timedelta; None: no limit), StateNotSet if the execution ended without it,
        WorkflowNotFound if there is none."""
        target, key, limit = check_state_wait(workflow_id, key, timeout)
        self._open_store()
        return self._outcomes.wait_state(target, key, limit)

    async def get_state_async(self, workflow_id: str) -> dict[str, Any]:
        """`get_state()` for asyncio code, on the async pool."""
        check_workflow_id(workflow_id)
        aio = await self._open_aio()
        return await adrive(self.store.require_state_plan(workflow_id), aio)

    async def wait_state_async(
        self, workflow_id: str, key: str, timeout: float | dt.timedelta | None = None
    ) -> Any:
        """`wait_state()` for asyncio code: polled on the async pool, without blocking the
        event loop; the same errors."""
        target, key, limit = check_state_wait(workflow_id, key, timeout)
        aio = await self._open_aio()
        return await adrive(self._outcomes.wait_state_plan(target, key, limit), aio)

    def __repr__(self) -> str:
        return f"<stepstone Client {self.client_id!r} on {self.store.describe()}>"


class ClientHandle:
    """An execution, by id, seen from a Client: its status and, once it ends, its result."""

    def __init__(self, client: Client, workflow_id: str) -> None:
        self._client = client
        self.workflow_id = workflow_id

    def status(self) -> str:
        """The stored status: ENQUEUED, RUNNING, WAITING, SUCCEEDED, FAILED or CANCELLED."""
        store = self._client._open_store()
        return drive(status_plan(store, self.workflow_id), store.io)

    async def status_async(self) -> str:
        """`status()` for asyncio code, on the async pool."""
        aio = await self._client._open_aio()
        return await adrive(status_plan(self._client.store, self.workflow_id), aio)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the execution to end and return its result (decoded without the
        workflow's annotations: JSON types, and what the serializer tags). Raises
        WorkflowFailed (the recorded error is its cause), WorkflowCancelled,
        WorkflowTimedOut, or ResultTimeout after `timeout` seconds; the execution goes on
        in every case."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._client._open_store()
        return self._client._outcomes.wait(self.workflow_id, deadline)

    async def result_async(self, timeout: float | None = None) -> Any:
        """`result()` for asyncio code: polled on the async pool, without blocking the
        event loop; the same outcomes and errors."""
        deadline = None if timeout is None else time.monotonic() + timeout
        aio = await self._client._open_aio()
        return await adrive(self._client._outcomes.wait_plan(self.workflow_id, deadline), aio)

    def get_state(self) -> dict[str, Any]:
        """The execution's latest committed state."""
        return self._client.get_state(self.workflow_id)

    async def get_state_async(self) -> dict[str, Any]:
        """`get_state()` for asyncio code, on the async pool."""
        return await self._client.get_state_async(self.workflow_id)

    def __repr__(self) -> str:
        return f"<ClientHandle {self.workflow_id!r}>"


def _one(request: Request) -> Plan[Any]:
    """A plan of one request: its result."""
    result = yield request
    return result


def _encode_inputs(
    store: Store, name: str, queue: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> str:
    """The serialized inputs; a SerializationError names the argument at fault."""
    try:
        return store.encode(
            {"args": list(args), "kwargs": kwargs},
            lambda: f"the inputs of workflow {name!r} enqueued on {queue!r}",
        )
    except SerializationError:
        named = [(f"argument {i + 1}", value) for i, value in enumerate(args)]
        named += [(f"keyword argument {key!r}", value) for key, value in kwargs.items()]
        for label, value in named:
            store.encode(value, f"{label} of workflow {name!r} enqueued on {queue!r}")
        raise  # no single argument is at fault (their sum is over the size limit)


def _unregistered(
    store: Store, name: str, version: str | None, latest: WorkflowRow | None
) -> Exception:
    """The error for a workflow (or version) no worker registered in the store's schema."""
    where = f"schema {store.schema!r} on {store.describe()}"
    if version is None:
        return UnregisteredWorkflow(
            f"no worker has registered a workflow named {name!r} in {where}, so none would "
            "run it: check the name (the name given to @rt.workflow(), else the function's "
            "name), and launch a worker that has it"
        )
    known = f"; the latest registered is {latest.version!r}" if latest else ""
    return UnregisteredWorkflow(
        f"no worker has registered version {version!r} of workflow {name!r} in {where}, so "
        f"none would run it{known}: launch a worker with that version, or leave version "
        "out to enqueue the latest"
    )
