"""Queues: enqueue writes an ENQUEUED execution in one round trip; dispatchers start it
within the queue's limits (global and per-worker concurrency, rate, partitions), in
priority order, not before its delay; dedup keys, the caller's transaction, bad input."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

import stepstone
from stepstone import (
    ConfigurationError,
    Deduplicated,
    DuplicateRegistration,
    Runtime,
    SerializationError,
    UsageError,
    WorkflowIdConflict,
)
from stepstone.persistence import Store
from stepstone.persistence.rows import EnqueueRequest
from tests.support.runtime import FAST, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


@pytest.fixture
def runtimes(db: str) -> Iterator[Callable[..., Runtime]]:
    """Makes Runtimes on the test's database (fast timings), shut down at the end."""
    made: list[Runtime] = []

    def make(executor_id: str, **options: Any) -> Runtime:
        runtime = Runtime(db, executor_id=executor_id, **{**FAST, **options})
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.shutdown()


def _query(db: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(db) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def _runs_table(db: str) -> None:
    with psycopg.connect(db) as conn:
        conn.execute(
            "CREATE TABLE runs (id text, tag text, started timestamptz DEFAULT clock_timestamp(),"
            " ended timestamptz)"
        )


def _max_overlap(db: str, tag: str | None = None) -> int:
    """The most runs (rows of `runs`) that were in progress at one instant."""
    rows = _query(
        db,
        "SELECT max(n) FROM (SELECT (SELECT count(*) FROM runs b WHERE b.started <= a.started "
        "AND coalesce(b.ended, 'infinity') > a.started AND (%s::text IS NULL OR b.tag = %s)) n "
        "FROM runs a WHERE %s::text IS NULL OR a.tag = %s) x",
        (tag, tag, tag, tag),
    )
    return int(rows[0][0] or 0)


def _recording(rt: Runtime, db: str, seconds: float = 0.3) -> Any:
    """A workflow that records its run (start, end) in table `runs`, tagged."""

    @rt.step()
    def record(tag: str) -> None:
        with psycopg.connect(db, autocommit=True) as conn:
            me = stepstone.current().workflow_id
            conn.execute("INSERT INTO runs (id, tag) VALUES (%s, %s)", [me, tag])
            time.sleep(seconds)
            conn.execute("UPDATE runs SET ended = clock_timestamp() WHERE id = %s", [me])

    @rt.workflow(name="job")
    def job(tag: str) -> str:
        record(tag)
        return tag

    return job


def test_an_enqueued_execution_waits_for_a_worker_and_runs_once(
    runtimes: Callable[..., Runtime], db: str
) -> None:
    """enqueue returns once the execution is ENQUEUED (no owner); a process that does not
    serve the queue leaves it there; a worker that serves it starts it, and the handle
    gets its result; the audit log says enqueued, then dequeued."""
    web = runtimes("web")
    web.queue("emails")
    web.serve()  # enqueues only

    @web.workflow(name="greet")
    def greet_web(name: str) -> str:
        return f"hello {name}"

    web.launch()
    handle = web.queue("emails").enqueue(greet_web.with_options(workflow_id="g-1"), "ann")
    time.sleep(0.5)
    assert handle.status() == "ENQUEUED"
    assert _query(db, "SELECT owner, queue_name FROM stepstone.executions") == [(None, "emails")]
    worker = runtimes("worker")
    worker.queue("emails")

    @worker.workflow(name="greet")
    def greet(name: str) -> str:
        return f"hello {name}"

    worker.launch()
    assert handle.result(timeout=15) == "hello ann"
    events = [log.event for log in web.store.list_logs("g-1")]
    assert events[:2] == ["execution_enqueued", "execution_dequeued"]
    assert events[-1] == "execution_succeeded"
    assert _query(db, "SELECT owner FROM stepstone.executions") == [("worker",)]


def test_global_concurrency_is_exact_across_workers(
    runtimes: Callable[..., Runtime], db: str
) -> None:
    """Three workers of eight threads serve a queue of concurrency 2: at no instant do more
    than two of its executions run; all 12 run, each once."""
    _runs_table(db)
    handles = []
    for name in ("w1", "w2", "w3"):
        rt = runtimes(name, workers=8)
        queue = rt.queue("tight", concurrency=2)
        job = _recording(rt, db)
        rt.launch()
        handles += [queue.enqueue(job, name) for _ in range(4)]
    assert sorted(h.result(timeout=60) for h in handles) == sorted(["w1", "w2", "w3"] * 4)
    assert _max_overlap(db) == 2
    assert _query(db, "SELECT count(*), count(DISTINCT id) FROM runs") == [(12, 12)]


def test_worker_concurrency_caps_one_process(runtimes: Callable[..., Runtime], db: str) -> None:
    """worker_concurrency=1 on a worker of eight threads runs its queue's executions one at
    a time, while another queue of the same process runs beside it."""
    _runs_table(db)
    rt = runtimes("solo", workers=8)
    one = rt.queue("one-at-a-time", worker_concurrency=1)
    many = rt.queue("many")
    job = _recording(rt, db, seconds=0.2)
    rt.launch()
    handles = [one.enqueue(job, "one") for _ in range(4)]
    handles += [many.enqueue(job, "many") for _ in range(4)]
    for h in handles:
        h.result(timeout=30)
    assert _max_overlap(db, "one") == 1
    assert _max_overlap(db, "many") > 1


def test_priority_then_fifo_and_delay(runtimes: Callable[..., Runtime], db: str) -> None:
    """With concurrency 1, executions start by priority (lower first), in enqueue order
    within a priority; one enqueued with a delay starts no earlier than its delay after
    its enqueue, by the database's clock."""
    web = runtimes("web")
    queue = web.queue("ordered", concurrency=1)
    web.serve()

    @web.workflow(name="job")
    def job_web(tag: str) -> str:
        return tag

    web.launch()
    tags = [("c", 5), ("a", 1), ("d", 5), ("b", 1), ("e", 9)]
    for tag, priority in tags:
        queue.enqueue(job_web.with_options(workflow_id=tag, priority=priority), tag)
    late = job_web.with_options(workflow_id="late", priority=10, delay=dt.timedelta(seconds=1))
    queue.enqueue(late, "z")
    worker = runtimes("worker")
    worker.queue("ordered", concurrency=1)

    @worker.workflow(name="job")
    def job(tag: str) -> str:
        return tag

    worker.launch()
    for tag in ["a", "b", "c", "d", "e", "late"]:
        worker.handle(tag).result(timeout=30)
    order = [
        row[0]
        for row in _query(db, "SELECT id FROM stepstone.executions ORDER BY dispatched_at, id")
    ]
    assert order == ["a", "b", "c", "d", "e", "late"]
    ((waited,),) = _query(
        db,
        "SELECT extract(epoch FROM dispatched_at - created_at) FROM stepstone.executions "
        "WHERE id = 'late'",
    )
    assert waited >= 1.0


def test_a_dedup_key_refuses_while_unfinished_and_frees_after(
    runtimes: Callable[..., Runtime], db: str
) -> None:
    """While an execution with a dedup key is ENQUEUED, RUNNING or WAITING, enqueuing
    another with that key raises Deduplicated naming it and writes nothing; once it has
    ended the key enqueues again."""
    rt = runtimes("dedup")
    queue = rt.queue("mail")

    @rt.workflow()
    def mail(to: str) -> str:
        return stepstone.recv("go") or to

    rt.launch()
    first = queue.enqueue(mail.with_options(workflow_id="m-1", dedup_key="user-7"), "a")
    with pytest.raises(Deduplicated, match="'m-1'") as caught:
        queue.enqueue(mail.with_options(workflow_id="m-2", dedup_key="user-7"), "b")
    assert caught.value.existing == "m-1"
    wait_for(lambda: first.status() == "WAITING")
    with pytest.raises(Deduplicated):
        queue.enqueue(mail.with_options(dedup_key="user-7"), "c")
    rt.send("m-1", None, topic="go")
    assert first.result(timeout=15) == "a"
    again = queue.enqueue(mail.with_options(workflow_id="m-3", dedup_key="user-7"), "d")
    assert again.status() in ("ENQUEUED", "RUNNING", "WAITING")
    assert [r[0] for r in _query(db, "SELECT id FROM stepstone.executions ORDER BY id")] == [
        "m-1",
        "m-3",
    ]


def test_enqueue_in_the_callers_transaction_follows_its_commit(
    runtimes: Callable[..., Runtime], db: str
) -> None:
    """With conn=, the execution is enqueued when the caller commits, and not at all when
    it rolls back."""
    rt = runtimes("outbox")
    queue = rt.queue("outbox")

    @rt.workflow()
    def deliver(n: int) -> int:
        return n

    rt.launch()
    with psycopg.connect(db) as conn:
        queue.enqueue(deliver.with_options(workflow_id="rolled-back"), 1, conn=conn)
        conn.rollback()
        handle = queue.enqueue(deliver.with_options(workflow_id="committed"), 2, conn=conn)
        conn.commit()
    assert handle.result(timeout=15) == 2
    assert [r[0] for r in _query(db, "SELECT id FROM stepstone.executions")] == ["committed"]


def test_rate_limit_and_partitions_are_never_exceeded(
    runtimes: Callable[..., Runtime], db: str
) -> None:
    """A rate limit of 3 starts per second is kept in every one-second window; a partition
    concurrency of 1 runs one execution per partition key at a time, several keys at
    once."""
    _runs_table(db)
    rt = runtimes("limits", workers=8)
    rated = rt.queue("rated", rate_limit=(3, 1.0))
    parted = rt.queue("parted", partition_concurrency=1)
    job = _recording(rt, db, seconds=0.2)
    rt.launch()
    handles = [rated.enqueue(job, "rated") for _ in range(7)]
    for key in ("t1", "t2"):
        handles += [parted.enqueue(job.with_options(partition_key=key), key) for _ in range(3)]
    for h in handles:
        h.result(timeout=60)
    starts = [
        row[0]
        for row in _query(
            db,
            "SELECT dispatched_at FROM stepstone.executions WHERE queue_name = 'rated' "
            "ORDER BY dispatched_at",
        )
    ]
    for i, start in enumerate(starts):
        window = [s for s in starts[i:] if s < start + dt.timedelta(seconds=1)]
        assert len(window) <= 3, starts
    assert _max_overlap(db, "t1") == 1
    assert _max_overlap(db, "t2") == 1
    assert _max_overlap(db, "rated") >= 1


def test_a_waiting_execution_holds_no_slot_and_queues_again_when_due(
    runtimes: Callable[..., Runtime], db: str
) -> None:
    """With concurrency 1, an execution waiting for a message frees the slot (another runs
    meanwhile); when the message comes it is ENQUEUED again, then started by a dispatcher,
    and finishes; no recovery is counted."""
    rt = runtimes("slots", workers=4)
    queue = rt.queue("single", concurrency=1)
    gate = threading.Event()

    @rt.workflow()
    def patient() -> Any:
        return stepstone.recv("go")

    @rt.workflow()
    def quick() -> str:
        gate.wait(10)
        return "quick"

    rt.launch()
    waiting = queue.enqueue(patient.with_options(workflow_id="patient"))
    wait_for(lambda: waiting.status() == "WAITING")
    other = queue.enqueue(quick.with_options(workflow_id="quick"))
    wait_for(lambda: other.status() == "RUNNING")
    rt.send("patient", "msg", topic="go")
    wait_for(lambda: waiting.status() == "ENQUEUED")  # the slot is quick's
    gate.set()
    assert other.result(timeout=15) == "quick"
    assert waiting.result(timeout=15) == "msg"
    events = [log.event for log in rt.store.list_logs("patient")]
    assert events.count("execution_dequeued") == 2
    assert _query(db, "SELECT recoveries FROM stepstone.executions WHERE id = 'patient'") == [(0,)]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrency": 0}, "concurrency must be a whole number of at least 1"),
        ({"concurrency": True}, "concurrency must be"),
        ({"worker_concurrency": -1}, "worker_concurrency must be"),
        ({"partition_concurrency": 1.5}, "partition_concurrency must be"),
        ({"rate_limit": 5}, "rate_limit must be (starts, seconds)"),
        ({"rate_limit": (0, 1.0)}, "starts must be a whole number"),
        ({"rate_limit": (5, 0)}, "seconds must be above 0"),
        ({"rate_limit": (5, float("nan"))}, "seconds must be above 0"),
    ],
)
def test_bad_queue_limits_are_refused(
    runtimes: Callable[..., Runtime], options: dict[str, Any], message: str
) -> None:
    """A queue with a bad limit raises UsageError naming it."""
    rt = runtimes("bad")
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        rt.queue("q", **options)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "a queue name must be a string of 1 to 255 characters"),
        (7, "a queue name must be a string"),
        ("q" * 256, "a queue name must be a string of 1 to 255 characters"),
        ("mail\x00", "the queue name 'mail\\x00' contains a NUL character"),
        ("mail\udcff", "is not valid Unicode text"),
    ],
)
def test_bad_queue_names_are_refused(
    runtimes: Callable[..., Runtime], name: object, message: str
) -> None:
    """A queue name that is not 1 to 255 characters of storable text raises UsageError
    naming it and why."""
    rt = runtimes("names")
    with pytest.raises(UsageError, match=re.escape(message)):
        rt.queue(name)  # type: ignore[arg-type]


def test_bad_enqueues_write_nothing(runtimes: Callable[..., Runtime], db: str) -> None:
    """Arguments that do not fit the workflow, values that cannot be stored, bad options,
    an id of another workflow, a queue declared after launch or twice with other limits:
    clear errors, and nothing is written."""
    rt = runtimes("bad")
    queue = rt.queue("q")

    @rt.workflow()
    def typed(n: int, *, label: str = "") -> int:
        return n

    @rt.workflow()
    def other() -> None:
        return None

    rt.launch()
    with pytest.raises(
        UsageError, match=r"do not fit workflow .*typed.*\(n, \*, label=''\): too many positional"
    ):
        queue.enqueue(typed, 1, 2)
    with pytest.raises(UsageError, match="missing a required argument"):
        queue.enqueue(typed)
    with pytest.raises(SerializationError):
        queue.enqueue(typed, object())
    with pytest.raises(UsageError, match="priority must be an integer"):
        typed.with_options(priority="high")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="dedup_key must be a string of 1 to 255"):
        typed.with_options(dedup_key="")
    with pytest.raises(UsageError, match=r"partition_key .* NUL"):
        typed.with_options(partition_key="a\x00")
    with pytest.raises(UsageError, match="delay must be a number of seconds"):
        typed.with_options(delay=-1)
    with pytest.raises(UsageError, match="declared after launch"):
        rt.queue("late")
    with pytest.raises(DuplicateRegistration, match="declared already"):
        rt.queue("q", concurrency=3)
    assert rt.queue("q") is queue
    assert _query(db, "SELECT count(*) FROM stepstone.executions") == [(0,)]
    queue.enqueue(other.with_options(workflow_id="taken"))
    with pytest.raises(WorkflowIdConflict):
        queue.enqueue(typed.with_options(workflow_id="taken"), 1)
    with pytest.raises(ConfigurationError, match="dispatch_interval"):
        Runtime(db, dispatch_interval=0)


def test_enqueue_inside_a_workflow_needs_an_id_and_is_idempotent(
    runtimes: Callable[..., Runtime],
) -> None:
    """In a workflow body, enqueue without a workflow id is refused (a replay would enqueue
    again); with one, enqueuing again returns the same execution."""
    rt = runtimes("nested")
    queue = rt.queue("inner")

    @rt.workflow()
    def child(n: int) -> int:
        return n + 1

    @rt.workflow()
    def parent() -> list[Any]:
        seen: list[Any] = []
        try:
            queue.enqueue(child, 1)
        except UsageError as exc:
            seen.append("refused" if "explicit workflow id" in str(exc) else str(exc))
        first = queue.enqueue(child.with_options(workflow_id="child-x"), 1)
        second = queue.enqueue(child.with_options(workflow_id="child-x"), 1)
        seen.append(first.workflow_id == second.workflow_id)
        seen.append(first.result())
        return seen

    rt.launch()
    assert parent.with_options(workflow_id="p")() == ["refused", True, 2]


def test_resuming_a_queued_execution_queues_it_again(
    runtimes: Callable[..., Runtime], db: str
) -> None:
    """An operator's resume of a FAILED queued execution puts it back ENQUEUED (never
    RUNNING outside a dispatcher) and it runs again within the queue; while another
    unfinished execution holds its dedup key, the resume is refused naming it and changes
    nothing."""
    rt = runtimes("ops")
    queue = rt.queue("retry", concurrency=1)
    attempts: list[int] = []

    @rt.workflow()
    def flaky(n: int) -> int:
        attempts.append(n)
        if len(attempts) == 1:
            raise RuntimeError("first try fails")
        return n

    @rt.workflow()
    def holder() -> Any:
        return stepstone.recv("go")

    rt.launch()
    failed = queue.enqueue(flaky.with_options(workflow_id="f-1", dedup_key="k"), 7)
    wait_for(lambda: failed.status() == "FAILED")
    held = queue.enqueue(holder.with_options(workflow_id="h-1", dedup_key="k"))
    wait_for(lambda: held.status() == "WAITING")
    with pytest.raises(UsageError, match="dedup key is held by 'h-1'"):
        rt.resume("f-1")
    assert failed.status() == "FAILED"
    rt.send("h-1", None, topic="go")
    held.result(timeout=15)
    rt.resume("f-1")
    assert failed.result(timeout=15) == 7
    events = [log.event for log in rt.store.list_logs("f-1")]
    assert events.count("execution_dequeued") == 2
    assert "execution_resumed" in events


def test_a_queued_execution_handed_back_goes_back_to_its_queue(
    runtimes: Callable[..., Runtime], db: str
) -> None:
    """A queued execution whose step raises a BaseException is handed back ENQUEUED (not
    RUNNING with no owner, which any executor's sweep could take past the queue's limits),
    counted as one recovery, and a dispatcher starts it again; its recorded steps stay."""
    rt = runtimes("handback")
    queue = rt.queue("again", concurrency=1)
    calls: list[str] = []

    @rt.step()
    def first() -> str:
        calls.append("first")
        return "one"

    @rt.step()
    def fragile() -> str:
        calls.append("fragile")
        if calls.count("fragile") == 1:
            raise SystemExit(3)
        return "two"

    @rt.workflow()
    def flow() -> list[str]:
        return [first(), fragile()]

    rt.launch()
    handle = queue.enqueue(flow.with_options(workflow_id="hb"))
    assert handle.result(timeout=15) == ["one", "two"]
    assert calls == ["first", "fragile", "fragile"]
    released = [log for log in rt.store.list_logs("hb") if log.event == "execution_released"]
    assert [log.details.get("requeued") for log in released] == ["again"]
    events = [log.event for log in rt.store.list_logs("hb")]
    assert events.count("execution_dequeued") == 2
    assert "execution_resumed" not in events
    assert _query(db, "SELECT recoveries FROM stepstone.executions WHERE id = 'hb'") == [(1,)]


def test_a_dispatch_that_waited_for_the_queue_lock_is_dated_after_the_run_it_replaced(
    db: str,
) -> None:
    """A dispatcher that waits for the queue's row lock while a run ends records its start
    after that end (clock time at the claim, not its transaction's start), so the stored
    intervals of a queue never overlap beyond its concurrency."""
    store = Store(db)
    store.open()
    try:
        store.declare_queue("one", concurrency=1, rate_limit=None, partition_concurrency=None)
        for n in (1, 2):
            request = EnqueueRequest(f"q-{n}", "job", "1", '{"args":[],"kwargs":{}}', "one", "t")
            assert store.enqueue(request).outcome == "enqueued"
        first = store.dispatch("w1", {"one": 1}, 1, [("job", "1")]).claimed
        assert [record.id for _, record in first] == ["q-1"]
        epoch = first[0][1].epoch
        later: list[Any] = []
        with psycopg.connect(db) as holder:
            holder.execute("SELECT 1 FROM stepstone.queues WHERE name = 'one' FOR UPDATE")
            waiting = threading.Thread(
                target=lambda: later.append(
                    store.dispatch("w2", {"one": 1}, 1, [("job", "1")]).claimed
                )
            )
            waiting.start()
            wait_for(lambda: _blocked_on(db, holder.info.backend_pid))
            store.finish_execution(
                "q-1", "w1", epoch, status="SUCCEEDED", output="1", error=None, seq=0
            )
        waiting.join(timeout=30)
        assert [record.id for _, record in later[0]] == ["q-2"]
        rows = dict(
            _query(
                db,
                "SELECT id, CASE id WHEN 'q-1' THEN finished_at ELSE dispatched_at END "
                "FROM stepstone.executions",
            )
        )
        assert rows["q-2"] >= rows["q-1"]
    finally:
        store.close()


def _blocked_on(db: str, pid: int) -> bool:
    rows = _query(
        db, "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY (pg_blocking_pids(pid))", (pid,)
    )
    return bool(rows[0][0])
