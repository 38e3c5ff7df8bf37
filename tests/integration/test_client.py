"""Client: enqueue workflows by name and read their outcomes from a process without the
workflow code; the version comes from what workers registered; bad input writes nothing;
dedup, the caller's transaction, messages and state work as through a Runtime."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

import stepstone
from stepstone import (
    Client,
    ConfigurationError,
    Deduplicated,
    InvalidWorkflowId,
    Runtime,
    SerializationError,
    UnregisteredWorkflow,
    UsageError,
    WorkflowFailed,
    WorkflowIdConflict,
    WorkflowNotFound,
)
from stepstone.persistence import Store
from tests.support.runtime import FAST, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ROOT = Path(__file__).resolve().parents[2]

# A client process: it imports stepstone and nothing of the tests (where the workflow code
# is), enqueues by name, waits for the result and reports which test modules it loaded.
CLIENT_SCRIPT = """
import json, sys
import stepstone
with stepstone.Client(sys.argv[1], client_id="web-1") as client:
    handle = client.enqueue("emails", "send_email", "a@b.c", workflow_id="welcome-8")
    result = handle.result(timeout=60)
    status = client.handle("welcome-8").status()
print(json.dumps({
    "result": result,
    "status": status,
    "test_modules": sorted(m for m in sys.modules if m == "tests" or m.startswith("tests.")),
}))
"""


@pytest.fixture
def worker(db: str) -> Iterator[Runtime]:
    """A worker Runtime on the test's database serving queue "emails" (the test defines its
    workflows, then launches it)."""
    runtime = Runtime(db, executor_id="worker", **FAST)  # type: ignore[arg-type]
    runtime.queue("emails")
    yield runtime
    runtime.shutdown()


@pytest.fixture
def registered(db: str) -> Iterator[Store]:
    """What a launched worker leaves in the database, without a worker: queue "emails"
    declared and workflow "send_email" version "1" registered (so nothing runs)."""
    with Store(db) as store:
        store.declare_queue("emails", concurrency=None, rate_limit=None, partition_concurrency=None)
        store.save_workflow("send_email", "1", "fp-1")
        yield store


@pytest.fixture
def client(db: str) -> Iterator[Client]:
    """A Client on the test's database, closed at the end."""
    made = Client(db, client_id="client-under-test")
    yield made
    made.close()


def _query(db: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchall() if cursor.description else []


def _written(db: str) -> list[tuple[Any, ...]]:
    return _query(
        db,
        "SELECT (SELECT count(*) FROM stepstone.executions), (SELECT count(*) FROM stepstone.logs)",
    )


def test_a_process_without_the_workflow_code_enqueues_and_gets_the_result(
    worker: Runtime, db: str, tmp_path: Path
) -> None:
    """A Client in another process, which never imports the module defining the workflow,
    enqueues it by name; a worker runs it and the client gets its result; the audit log
    names the client."""

    @worker.workflow(name="send_email")
    def send_email(address: str) -> str:
        return f"sent to {address}"

    worker.launch()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, db],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == {"result": "sent to a@b.c", "status": "SUCCEEDED", "test_modules": []}
    logs = _query(db, "SELECT event, actor FROM stepstone.logs WHERE execution_id = 'welcome-8'")
    assert logs[0] == ("execution_enqueued", "web-1")


def test_the_version_enqueued_is_the_one_registered_last_unless_pinned(
    registered: Store, client: Client, db: str
) -> None:
    """Without version=, the Client enqueues the version a worker registered most recently
    (not the largest); version= pins a registered one; an unregistered version is refused,
    naming it and the latest, with nothing written."""
    registered.save_workflow("send_email", "2", "fp-2")
    _query(
        db,
        "UPDATE stepstone.workflows SET last_seen = now() - interval '1 hour' WHERE version = '2'",
    )
    client.enqueue("emails", "send_email", "x", workflow_id="latest")
    client.enqueue("emails", "send_email", "x", workflow_id="pinned", version="2")
    with pytest.raises(UnregisteredWorkflow, match=r"version '3' of workflow 'send_email'.*'1'"):
        client.enqueue("emails", "send_email", "x", workflow_id="unknown", version="3")
    rows = _query(db, "SELECT id, workflow_version FROM stepstone.executions ORDER BY id")
    assert rows == [("latest", "1"), ("pinned", "2")]


BAD_CALLS: list[tuple[str, Callable[[Client], object], type[Exception], str]] = [
    (
        "unknown queue",
        lambda c: c.enqueue("nope", "send_email", "x"),
        UsageError,
        "no queue named 'nope'",
    ),
    (
        "unknown workflow",
        lambda c: c.enqueue("emails", "send_mail", "x"),
        UnregisteredWorkflow,
        "no worker has registered a workflow named 'send_mail'.*launch a worker",
    ),
    (
        "non-JSON argument",
        lambda c: c.enqueue("emails", "send_email", "x", object()),
        SerializationError,
        "argument 2 of workflow 'send_email'.*object",
    ),
    (
        "non-JSON keyword argument",
        lambda c: c.enqueue("emails", "send_email", "x", when={1, object()}),
        SerializationError,
        "keyword argument 'when'",
    ),
    (
        "bad priority",
        lambda c: c.enqueue(
            "emails",
            "send_email",
            "x",
            priority="high",  # type: ignore[arg-type]
        ),
        UsageError,
        "priority must be an integer",
    ),
    (
        "bad timeout",
        lambda c: c.enqueue("emails", "send_email", "x", timeout=-1),
        UsageError,
        "timeout must be",
    ),
    (
        "bad delay",
        lambda c: c.enqueue("emails", "send_email", "x", delay=math.inf),
        UsageError,
        "delay must be",
    ),
    (
        "bad attributes",
        lambda c: c.enqueue("emails", "send_email", "x", attributes={"n": math.nan}),
        UsageError,
        r"attributes\[\"n\"\] is nan",
    ),
    (
        "bad dedup key",
        lambda c: c.enqueue("emails", "send_email", "x", dedup_key=""),
        UsageError,
        "dedup_key must be",
    ),
    (
        "bad workflow id",
        lambda c: c.enqueue("emails", "send_email", "x", workflow_id=""),
        InvalidWorkflowId,
        "must not be empty",
    ),
    (
        "bad queue name",
        lambda c: c.enqueue("", "send_email", "x"),
        UsageError,
        "a queue name must be",
    ),
    (
        "bad workflow name",
        lambda c: c.enqueue("emails", "send\x00email", "x"),
        UsageError,
        "NUL character",
    ),
]


@pytest.mark.usefixtures("registered")
@pytest.mark.parametrize(
    ("call", "error", "message"),
    [case[1:] for case in BAD_CALLS],
    ids=[case[0] for case in BAD_CALLS],
)
def test_bad_enqueues_say_why_and_write_nothing(
    client: Client,
    db: str,
    call: Callable[[Client], object],
    error: type[Exception],
    message: str,
) -> None:
    """An unknown queue or workflow name, an argument the serializer cannot encode or an
    invalid option raises a clear error naming it, and writes no execution and no log."""
    with pytest.raises(error, match=message):
        call(client)
    assert _written(db) == [(0, 0)]


@pytest.mark.usefixtures("registered")
def test_options_are_stored_and_an_existing_id_is_that_execution(
    registered: Store, client: Client, db: str
) -> None:
    """The options reach the execution's row; the same id for the same workflow returns
    that execution and writes nothing; for another workflow it is WorkflowIdConflict."""
    registered.save_workflow("other", "1", "fp-o")
    handle = client.enqueue(
        "emails",
        "send_email",
        "x",
        workflow_id="w-1",
        priority=-5,
        partition_key="tenant-1",
        attributes={"tenant": "acme"},
        delay=60,
        cc="y",
    )
    assert handle.workflow_id == "w-1"
    assert handle.status() == "ENQUEUED"
    again = client.enqueue("emails", "send_email", "z", workflow_id="w-1")
    assert again.workflow_id == "w-1"
    with pytest.raises(WorkflowIdConflict, match="'w-1'"):
        client.enqueue("emails", "other", workflow_id="w-1")
    rows = _query(
        db,
        "SELECT queue_name, priority, partition_key, attributes, not_before > now(), inputs "
        "FROM stepstone.executions",
    )
    assert len(rows) == 1
    queue, priority, partition, attributes, delayed, inputs = rows[0]
    assert (queue, priority, partition, attributes, delayed) == (
        "emails",
        -5,
        "tenant-1",
        {"tenant": "acme"},
        True,
    )
    assert registered.decode(inputs) == {"args": ["x"], "kwargs": {"cc": "y"}}


@pytest.mark.usefixtures("registered")
def test_a_dedup_key_taken_raises_deduplicated(client: Client, db: str) -> None:
    """While an execution of the queue has the dedup key, enqueuing another with it raises
    Deduplicated naming the existing one, and writes nothing."""
    client.enqueue("emails", "send_email", "a", workflow_id="d-1", dedup_key="user-7")
    with pytest.raises(Deduplicated, match="'d-1'") as caught:
        client.enqueue("emails", "send_email", "b", workflow_id="d-2", dedup_key="user-7")
    assert caught.value.existing == "d-1"
    assert _query(db, "SELECT id FROM stepstone.executions") == [("d-1",)]


@pytest.mark.usefixtures("registered")
def test_enqueue_in_the_callers_transaction_follows_its_commit(client: Client, db: str) -> None:
    """With conn=, a rolled-back enqueue leaves nothing; a committed one is there."""
    with psycopg.connect(db) as conn:
        client.enqueue("emails", "send_email", "a", workflow_id="rolled-back", conn=conn)
        conn.rollback()
        client.enqueue("emails", "send_email", "b", workflow_id="committed", conn=conn)
        conn.commit()
    assert _query(db, "SELECT id FROM stepstone.executions") == [("committed",)]


def test_send_wakes_a_waiting_workflow_and_state_is_readable(
    worker: Runtime, client: Client
) -> None:
    """A workflow enqueued by a Client waits for a message; the Client reads its state
    (get_state, wait_state), sends the message, and gets the result it made of it."""

    @worker.workflow(name="inbox")
    def inbox() -> str:
        stepstone.current().state["stage"] = "waiting"
        return f"got {stepstone.recv('go')}"

    worker.launch()
    handle = client.enqueue("emails", "inbox", workflow_id="inbox-1")
    assert client.wait_state("inbox-1", "stage", timeout=15) == "waiting"
    wait_for(lambda: handle.status() == "WAITING")
    assert client.get_state("inbox-1") == {"stage": "waiting"}
    client.send("inbox-1", "hello", topic="go")
    assert handle.result(timeout=15) == "got hello"


def test_a_failure_reaches_the_client_as_workflow_failed(worker: Runtime, client: Client) -> None:
    """A workflow that raises ends FAILED; the Client's result() raises WorkflowFailed with
    the recorded error type and message."""

    @worker.workflow(name="broken")
    def broken(n: int) -> int:
        raise ValueError(f"bad {n}")

    worker.launch()
    with pytest.raises(WorkflowFailed, match="bad 3"):
        client.enqueue("emails", "broken", 3).result(timeout=15)


@pytest.mark.usefixtures("registered")
def test_unknown_ids_are_workflow_not_found(client: Client) -> None:
    """status() and send() for an id no execution has raise WorkflowNotFound naming it."""
    with pytest.raises(WorkflowNotFound, match="'ghost'"):
        client.handle("ghost").status()
    with pytest.raises(WorkflowNotFound, match="'ghost'"):
        client.send("ghost", "hi")


def test_a_client_never_migrates_and_says_what_to_do(empty_db: str) -> None:
    """On a database without stepstone's tables a Client raises ConfigurationError saying
    how to create them, and creates nothing; a closed Client refuses to be used."""
    client = Client(empty_db)
    with pytest.raises(ConfigurationError, match=r"has no stepstone tables.*stepstone migrate"):
        client.enqueue("emails", "send_email", "x")
    assert _query(empty_db, "SELECT count(*) FROM pg_namespace WHERE nspname = 'stepstone'") == [
        (0,)
    ]
    client.close()
    with pytest.raises(UsageError, match="closed"):
        client.handle("any").status()


def test_in_a_workflow_body_the_client_refuses_what_a_replay_would_repeat(
    worker: Runtime, client: Client, db: str
) -> None:
    """In a workflow body, a Client enqueue without a workflow id and a send without an
    idempotency key raise UsageError (a replay would do them again); nothing is written."""
    client.open()

    @worker.workflow(name="careless")
    def careless() -> list[str]:
        problems = []
        for attempt in (
            lambda: client.enqueue("emails", "careless"),
            lambda: client.send("careless-1", "hi"),
        ):
            try:
                attempt()
            except UsageError as exc:
                problems.append(str(exc))
        return problems

    worker.launch()
    problems = careless.with_options(workflow_id="careless-1")()
    assert len(problems) == 2
    assert "explicit workflow id" in problems[0]
    assert "idempotency_key" in problems[1]
    assert _query(db, "SELECT id FROM stepstone.executions") == [("careless-1",)]
    assert _query(db, "SELECT count(*) FROM stepstone.messages") == [(0,)]


def test_the_state_of_an_unknown_id_is_a_clear_error(db: str) -> None:
    """Client.get_state of an id no execution has raises WorkflowNotFound, as the Runtime's
    does; an execution with no state reads as {}."""
    rt = Runtime(db, executor_id="state-reader")

    @rt.workflow()
    def stateless() -> int:
        return 1

    rt.launch()
    try:
        stateless.with_options(workflow_id="plain")()
        with stepstone.Client(db) as client:
            assert client.get_state("plain") == {}
            with pytest.raises(WorkflowNotFound, match="'nobody'"):
                client.get_state("nobody")
    finally:
        rt.shutdown()
