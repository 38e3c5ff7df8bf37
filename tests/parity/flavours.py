"""One test body over both flavours of stepstone code: sync (`def` workflows and steps,
`rt.launch()`, direct calls) and async (`async def` workflows and steps, `launch_async`,
`await`).

A test describes its steps with plain functions and its workflows (and the bodies of its
transaction steps) as generators that `yield` what they would call or await:

    @f.step("price")
    def price(sku: str) -> float:
        return 9.5

    @f.workflow("order")
    def order(sku: str) -> Any:
        amount = yield price(sku)        # a Call: `price(sku)`, or `await price(sku)`
        yield f.sleep(0)                 # `stepstone.sleep(0)`, or `await sleep_async(0)`
        return amount

The flavour turns each into the real thing: a `def` or an `async def` function decorated
with `rt.step()`, `rt.transaction()` or `rt.workflow()`, whose body drives the generator,
calling (sync) or awaiting (async) each yielded request in the workflow's own thread or
task, and throwing its exception back in where it was yielded (so `try`/`except` in a
body works as in plain code). `f.call(wf, *args, workflow_id=...)` runs a workflow from
the test: a direct call, or an `await` on an event loop kept for the test (in a thread of
its own, so that one launched runtime serves several calls of a test, as in the sync
flavour). The assertions that follow read the database and are the same for both.

Adding a request (a wait, an enqueue, ...) is a dataclass and one branch in each of
`_perform` and `_aperform`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg

import stepstone

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from stepstone import Queue, RetryPolicy, Runtime, TransactionStep, Workflow

FLAVOURS = ("sync", "async")

TIMEOUT = 60.0
"""Seconds a call may take before the test fails (no call here should come near it)."""


# -- what bodies yield ---------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """A call of a step, a transaction step or a workflow (a child) from a workflow body."""

    target: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sql:
    """A statement run on the transaction step's connection; yields its rows ([] for a
    statement returning none)."""

    query: str
    params: tuple[Any, ...] | list[Any] = ()


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Recv:
    topic: str = ""
    timeout: float | None = None


@dataclass(frozen=True)
class WaitState:
    workflow_id: str
    key: str
    timeout: float | None = None


@dataclass(frozen=True)
class Enqueue:
    queue: Queue
    workflow: Workflow[Any, Any]
    args: tuple[Any, ...]


class Described:
    """A step or workflow as a workflow body sees it: calling it makes the Call to yield."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def __call__(self, *args: Any, **kwargs: Any) -> Call:
        return Call(self.target, args, kwargs)


# -- driving a body ------------------------------------------------------------------------


def _drive(body: Any, perform: Callable[[Any], Any]) -> Any:
    """Run a body: a plain value is its result; a generator gets each yielded request
    performed, its result sent back in (or its exception thrown in)."""
    if not inspect.isgenerator(body):
        return body
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = body.throw(error) if error is not None else body.send(value)
        except StopIteration as stop:
            return stop.value
        try:
            value, error = perform(request), None
        except BaseException as exc:  # thrown into the body, as plain code would see it
            value, error = None, exc


async def _adrive(body: Any, perform: Callable[[Any], Awaitable[Any]]) -> Any:
    """`_drive` with each request awaited."""
    if not inspect.isgenerator(body):
        return body
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = body.throw(error) if error is not None else body.send(value)
        except StopIteration as stop:
            return stop.value
        try:
            value, error = await perform(request), None
        except BaseException as exc:  # thrown into the body
            value, error = None, exc


def _perform(request: Any, conn: psycopg.Connection[Any] | None = None) -> Any:
    if isinstance(request, Call):
        return request.target(*request.args, **request.kwargs)
    if isinstance(request, Sql):
        assert conn is not None, "Sql is yielded by transaction step bodies only"
        cursor = conn.execute(request.query, request.params)
        return cursor.fetchall() if cursor.description else []
    if isinstance(request, Sleep):
        return stepstone.sleep(request.seconds)
    if isinstance(request, Recv):
        return stepstone.recv(request.topic, timeout=request.timeout)
    if isinstance(request, WaitState):
        return stepstone.wait_state(request.workflow_id, request.key, timeout=request.timeout)
    if isinstance(request, Enqueue):
        return request.queue.enqueue(request.workflow, *request.args).workflow_id
    raise TypeError(f"a body yielded {request!r}: yield a Call, Sql or a wait")


async def _aperform(request: Any, conn: psycopg.AsyncConnection[Any] | None = None) -> Any:
    if isinstance(request, Call):
        return await request.target(*request.args, **request.kwargs)
    if isinstance(request, Sql):
        assert conn is not None, "Sql is yielded by transaction step bodies only"
        cursor = await conn.execute(request.query, request.params)
        return await cursor.fetchall() if cursor.description else []
    # The async waits and enqueue are looked up when used, so that a runtime without them
    # fails the one test that needs them (AttributeError), not the whole module.
    if isinstance(request, Sleep):
        return await stepstone.sleep_async(request.seconds)  # type: ignore[attr-defined]
    if isinstance(request, Recv):
        return await stepstone.recv_async(request.topic, timeout=request.timeout)  # type: ignore[attr-defined]
    if isinstance(request, WaitState):
        return await stepstone.wait_state_async(  # type: ignore[attr-defined]
            request.workflow_id, request.key, timeout=request.timeout
        )
    if isinstance(request, Enqueue):
        handle = await request.queue.enqueue_async(request.workflow, *request.args)  # type: ignore[attr-defined]
        return handle.workflow_id
    raise TypeError(f"a body yielded {request!r}: yield a Call, Sql or a wait")


def _like(
    body: Callable[..., Any], impl: Callable[..., Any], *, connection: bool = False
) -> Callable[..., Any]:
    """`body` declaring what `impl` declares: its parameters and their annotations (by
    which stepstone checks arguments and rebuilds stored values), its name and its source
    (the workflow's fingerprint), so that both flavours declare the same. A transaction
    step's body takes the connection first."""
    functools.update_wrapper(body, impl)
    if connection:
        signature = inspect.signature(impl)
        conn = inspect.Parameter("conn", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        body.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[conn, *signature.parameters.values()]
        )
    return body


# -- the flavours --------------------------------------------------------------------------


class Flavour:
    """Builds steps and workflows of one flavour on `rt`, and runs them."""

    name: str

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    # Requests a body yields (the same for both flavours).

    @staticmethod
    def sleep(seconds: float) -> Sleep:
        return Sleep(seconds)

    @staticmethod
    def recv(topic: str = "", timeout: float | None = None) -> Recv:
        return Recv(topic, timeout)

    @staticmethod
    def wait_state(workflow_id: str, key: str, timeout: float | None = None) -> WaitState:
        return WaitState(workflow_id, key, timeout)

    @staticmethod
    def enqueue(queue: Queue, workflow: Workflow[Any, Any], *args: Any) -> Enqueue:
        return Enqueue(queue, workflow, args)

    @staticmethod
    def sql(query: str, *params: Any) -> Sql:
        return Sql(query, params)

    # Builders.

    def step(
        self, name: str, *, retry: RetryPolicy | None = None
    ) -> Callable[[Callable[..., Any]], Described]:
        """A step named `name` whose body calls the decorated plain function."""

        def build(impl: Callable[..., Any]) -> Described:
            body = _like(self._step_body(impl), impl)
            return Described(self.rt.step(name=name, retry=retry)(body))

        return build

    def transaction(
        self, name: str, *, retry: RetryPolicy | None = None
    ) -> Callable[[Callable[..., Any]], Described]:
        """A transaction step named `name` whose body drives the decorated generator
        function (called without the connection), running each Sql it yields on the
        step's connection."""

        def build(impl: Callable[..., Any]) -> Described:
            body = _like(self._transaction_body(impl), impl, connection=True)
            built: TransactionStep[..., Any] = self.rt.transaction(name=name, retry=retry)(body)
            return Described(built)

        return build

    def workflow(self, name: str) -> Callable[[Callable[..., Any]], Workflow[..., Any]]:
        """A workflow named `name` whose body drives the decorated generator function."""

        def build(impl: Callable[..., Any]) -> Workflow[..., Any]:
            return self.rt.workflow(name=name)(_like(self._workflow_body(impl), impl))

        return build

    @staticmethod
    def child(workflow: Workflow[..., Any]) -> Described:
        """A workflow as another workflow's body calls it (a child execution)."""
        return Described(workflow)

    # What differs.

    def _step_body(self, impl: Callable[..., Any]) -> Callable[..., Any]:
        raise NotImplementedError

    def _transaction_body(self, impl: Callable[..., Any]) -> Callable[..., Any]:
        raise NotImplementedError

    def _workflow_body(self, impl: Callable[..., Any]) -> Callable[..., Any]:
        raise NotImplementedError

    def call(
        self, workflow: Workflow[..., Any], *args: Any, workflow_id: str, **options: Any
    ) -> Any:
        """Run `workflow(*args)` as execution `workflow_id` from the test, to its end;
        `options` go to `with_options` (e.g. `timeout`)."""
        raise NotImplementedError

    def start(
        self, workflow: Workflow[..., Any], *args: Any, workflow_id: str, **options: Any
    ) -> Any:
        """Start `workflow(*args)` as execution `workflow_id`; its handle."""
        raise NotImplementedError

    def submit(
        self, queue: Queue, workflow: Workflow[..., Any], *args: Any, workflow_id: str
    ) -> Any:
        """Enqueue `workflow(*args)` as execution `workflow_id` on `queue` from the test;
        its handle."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SyncFlavour(Flavour):
    """`def` workflows and steps, called directly after `rt.launch()`."""

    name = "sync"

    def _step_body(self, impl: Callable[..., Any]) -> Callable[..., Any]:
        def body(*args: Any, **kwargs: Any) -> Any:
            return impl(*args, **kwargs)

        return body

    def _transaction_body(self, impl: Callable[..., Any]) -> Callable[..., Any]:
        def body(conn: psycopg.Connection[Any], *args: Any, **kwargs: Any) -> Any:
            return _drive(impl(*args, **kwargs), lambda request: _perform(request, conn))

        return body

    def _workflow_body(self, impl: Callable[..., Any]) -> Callable[..., Any]:
        def body(*args: Any, **kwargs: Any) -> Any:
            return _drive(impl(*args, **kwargs), _perform)

        return body

    def call(
        self, workflow: Workflow[..., Any], *args: Any, workflow_id: str, **options: Any
    ) -> Any:
        self.rt.launch()
        return workflow.with_options(workflow_id=workflow_id, **options)(*args)

    def start(
        self, workflow: Workflow[..., Any], *args: Any, workflow_id: str, **options: Any
    ) -> Any:
        self.rt.launch()
        return self.rt.start(workflow.with_options(workflow_id=workflow_id, **options), *args)

    def submit(
        self, queue: Queue, workflow: Workflow[..., Any], *args: Any, workflow_id: str
    ) -> Any:
        self.rt.launch()
        return queue.enqueue(workflow.with_options(workflow_id=workflow_id), *args)

    def close(self) -> None:
        self.rt.shutdown()


class AsyncFlavour(Flavour):
    """`async def` workflows and steps, awaited on an event loop where the runtime was
    launched with `launch_async()`."""

    name = "async"

    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _step_body(self, impl: Callable[..., Any]) -> Callable[..., Any]:
        async def body(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0)  # a real suspension point, as async bodies have
            return impl(*args, **kwargs)

        return body

    def _transaction_body(self, impl: Callable[..., Any]) -> Callable[..., Any]:
        async def body(conn: psycopg.AsyncConnection[Any], *args: Any, **kwargs: Any) -> Any:
            return await _adrive(impl(*args, **kwargs), lambda request: _aperform(request, conn))

        return body

    def _workflow_body(self, impl: Callable[..., Any]) -> Callable[..., Any]:
        async def body(*args: Any, **kwargs: Any) -> Any:
            return await _adrive(impl(*args, **kwargs), _aperform)

        return body

    def run(self, main: Callable[[], Awaitable[Any]]) -> Any:
        """Await `main()` on this flavour's loop, the runtime launched there, from the
        test's thread."""

        async def launched() -> Any:
            await self.rt.launch_async()
            return await main()

        return asyncio.run_coroutine_threadsafe(launched(), self._running()).result(TIMEOUT)

    def call(
        self, workflow: Workflow[..., Any], *args: Any, workflow_id: str, **options: Any
    ) -> Any:
        bound = workflow.with_options(workflow_id=workflow_id, **options)
        return self.run(lambda: bound(*args))

    def start(
        self, workflow: Workflow[..., Any], *args: Any, workflow_id: str, **options: Any
    ) -> Any:
        bound = workflow.with_options(workflow_id=workflow_id, **options)
        return self.run(lambda: self.rt.start_async(bound, *args))

    def submit(
        self, queue: Queue, workflow: Workflow[..., Any], *args: Any, workflow_id: str
    ) -> Any:
        bound = workflow.with_options(workflow_id=workflow_id)
        return self.run(lambda: queue.enqueue_async(bound, *args))  # type: ignore[attr-defined]

    def _running(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=loop.run_forever, name="parity-loop")
            self._thread.start()
            self._loop = loop
        return self._loop

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            self.rt.shutdown()
            return
        try:
            asyncio.run_coroutine_threadsafe(self.rt.shutdown_async(), loop).result(TIMEOUT)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(TIMEOUT)
            loop.close()
            self._loop = self._thread = None
            self.rt.store.open(migrate=False)  # for the rt fixture's own shutdown


def flavour_of(name: str, rt: Runtime) -> Flavour:
    return SyncFlavour(rt) if name == "sync" else AsyncFlavour(rt)


def bump_epoch(dsn: str, workflow_id: str) -> None:
    """What a concurrent claim by another executor does to the execution row."""
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute(
            "UPDATE stepstone.executions SET owner = 'thief', epoch = epoch + 1 WHERE id = %s",
            [workflow_id],
        )


__all__ = [
    "FLAVOURS",
    "AsyncFlavour",
    "Call",
    "Described",
    "Flavour",
    "Sql",
    "SyncFlavour",
    "bump_epoch",
    "flavour_of",
]
