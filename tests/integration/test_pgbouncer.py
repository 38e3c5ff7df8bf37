"""stepstone through PgBouncer 1.18 in transaction pooling mode, with a direct session DSN
for what needs a session of its own (the executor lock, LISTEN, the migrations' lock)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

import stepstone
from stepstone import Runtime
from stepstone.cli import main
from stepstone.errors import ConfigurationError, DatabaseUnreachable
from stepstone.persistence.listing import ExecutionFilter
from stepstone.persistence.store import Store
from tests.support.pgbouncer import MISSING, PgBouncer, binary, pgbouncer
from tests.support.runtime import wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator

    from stepstone.runtime.definitions import Workflow
    from stepstone.runtime.queues import Queue


@pytest.fixture(scope="module")
def bouncer() -> Iterator[PgBouncer]:
    """A PgBouncer (transaction pooling) for this module's tests."""
    executable = binary()
    if executable is None:
        pytest.fail(MISSING)
    with pgbouncer(executable) as running:
        yield running


def _through(bouncer: PgBouncer, db: str, **params: str) -> str:
    return bouncer.dsn(str(psycopg.conninfo.conninfo_to_dict(db)["dbname"]), **params)


def _runtime(bouncer: PgBouncer, db: str, executor_id: str, **options: Any) -> Runtime:
    settings: dict[str, Any] = {
        "workers": 4,
        "pool_max_size": 4,
        "notify": False,
        "sweep_interval": 0.2,
        "dispatch_interval": 0.2,
        "connect_timeout": 5,
        **options,
    }
    return Runtime(_through(bouncer, db), session_dsn=db, executor_id=executor_id, **settings)


def test_workflows_with_steps_and_transaction_steps_run_through_pgbouncer(
    bouncer: PgBouncer, db: str
) -> None:
    """Twenty workflows (a step, a transaction step) run through PgBouncer, in parallel, far
    past psycopg's prepare threshold: each result once, each transaction step's row once."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE done (id text PRIMARY KEY)")
    rt = _runtime(bouncer, db, "bounced")

    @rt.step()
    def double(n: int) -> int:
        return n * 2

    @rt.transaction()
    def record(conn: psycopg.Connection[Any], key: str) -> None:
        conn.execute("INSERT INTO done (id) VALUES (%s)", [key])

    @rt.workflow()
    def job(n: int) -> int:
        record(f"job-{n}")
        return double(n) + double(n)

    rt.launch()
    try:
        handles = [rt.start(job.with_options(workflow_id=f"job-{n}"), n) for n in range(20)]
        assert [h.result(timeout=60) for h in handles] == [4 * n for n in range(20)]
        assert job.with_options(workflow_id="job-3")(3) == 12  # recorded: nothing runs again
    finally:
        rt.shutdown()
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM done").fetchone() == (20,)


def test_a_transaction_step_through_pgbouncer_sets_its_timeout_for_itself_only(
    bouncer: PgBouncer, db: str
) -> None:
    """Through PgBouncer, a transaction step runs with the configured idle-in-transaction
    timeout (SET LOCAL), and neither it nor a SET of the step's own outlives the step."""
    rt = _runtime(bouncer, db, "bounced", idle_in_transaction_timeout=7, pool_max_size=1)
    seen: list[str] = []

    @rt.transaction()
    def look(conn: psycopg.Connection[Any]) -> None:
        conn.execute("SET statement_timeout = '4321ms'")
        for setting in ("idle_in_transaction_session_timeout", "statement_timeout"):
            row = conn.execute(f"SHOW {setting}").fetchone()
            assert row is not None
            seen.append(str(row[0]))

    @rt.workflow()
    def job() -> None:
        look()

    rt.launch()
    try:
        job()
        assert seen == ["7s", "4321ms"]
        with rt.store.connection() as conn:
            after = conn.execute(
                "SELECT current_setting('idle_in_transaction_session_timeout'),"
                " current_setting('statement_timeout')"
            ).fetchone()
        assert after == ("0", "0")
    finally:
        rt.shutdown()


def _squares(rt: Runtime) -> tuple[Queue, Workflow[[int], int]]:
    @rt.step(name="square")
    def square(n: int) -> int:
        return n * n

    @rt.workflow(name="job")
    def job(n: int) -> int:
        return square(n)

    return rt.queue("work", concurrency=3), job


def test_a_queue_filled_through_pgbouncer_is_drained_by_another_runtime_through_it(
    bouncer: PgBouncer, db: str
) -> None:
    """A Runtime that only enqueues and another that serves the queue, both through
    PgBouncer: every enqueued execution runs once, in the serving one, and succeeds."""
    producer, consumer = _runtime(bouncer, db, "producer"), _runtime(bouncer, db, "consumer")
    queue, job = _squares(producer)
    _squares(consumer)
    producer.serve()
    producer.launch()
    try:
        handles = [queue.enqueue(job, n) for n in range(12)]
        consumer.launch()
        try:
            assert [h.result(timeout=60) for h in handles] == [n * n for n in range(12)]
        finally:
            consumer.shutdown()
    finally:
        producer.shutdown()
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT owner, count(*) FROM stepstone.executions GROUP BY owner"
        ).fetchall()
    assert rows == [("consumer", 12)]


_WORKER = textwrap.dedent(
    """
    import sys, time
    from stepstone import Runtime

    rt = Runtime(sys.argv[1], session_dsn=sys.argv[2], executor_id="doomed", notify=False,
                 lease_seconds=600, heartbeat_interval=5, sweep_interval=5)

    @rt.step()
    def slow() -> str:
        print("in step", flush=True)
        time.sleep(600)
        return "never"

    @rt.workflow(name="job")
    def job() -> str:
        return slow()

    rt.launch()
    job.with_options(workflow_id="job-1")()
    """
)


def test_a_killed_worker_is_recovered_through_pgbouncer_by_its_free_lock(
    bouncer: PgBouncer, db: str
) -> None:
    """A worker through PgBouncer SIGKILLed mid-step, with a lease of 600 s, is known dead by
    its executor lock (held on its direct session, gone with the process): a second runtime
    through PgBouncer takes its execution over at its next sweep and finishes it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WORKER, _through(bouncer, db), db],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "in step", (
            proc.stderr.read() if proc.stderr else ""
        )
        rescuer = _runtime(bouncer, db, "rescuer", lease_seconds=600, heartbeat_interval=5)

        @rescuer.step()
        def slow() -> str:
            return "rescued"

        @rescuer.workflow(name="job")
        def job() -> str:
            return slow()

        rescuer.launch()
        try:
            time.sleep(1.0)  # several sweeps while the worker lives: they leave it alone
            with psycopg.connect(db) as conn:
                owner = conn.execute(
                    "SELECT owner FROM stepstone.executions WHERE id = 'job-1'"
                ).fetchone()
            assert owner == ("doomed",)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            assert rescuer.handle("job-1").result(timeout=60) == "rescued"
            with psycopg.connect(db) as conn:
                row = conn.execute(
                    "SELECT owner, recoveries FROM stepstone.executions WHERE id = 'job-1'"
                ).fetchone()
            assert row == ("rescuer", 1)
        finally:
            rescuer.shutdown()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_the_executor_lock_and_listen_are_held_on_the_direct_session(
    bouncer: PgBouncer, db: str
) -> None:
    """With a session DSN, the executor's advisory lock and the LISTEN connection are the
    direct session's (told apart by its application_name), never a pooled server's."""
    direct = psycopg.conninfo.make_conninfo(db, application_name="stepstone-direct")
    rt = Runtime(
        _through(bouncer, db, application_name="stepstone-pooled"),
        session_dsn=direct,
        executor_id="listening",
        notify=True,
    )

    @rt.workflow()
    def job() -> None:
        return None

    rt.launch()
    try:
        query = (
            "SELECT a.application_name, l.locktype IS NOT NULL, a.query LIKE 'LISTEN%%'"
            "  FROM pg_stat_activity a"
            "  LEFT JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'advisory' AND l.granted"
            " WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()"
            "   AND (l.pid IS NOT NULL OR a.query LIKE 'LISTEN%%')"
        )

        def held() -> list[tuple[Any, ...]]:
            with psycopg.connect(db) as conn:
                return sorted(conn.execute(query).fetchall())

        wait_for(lambda: len(held()) == 2)
        assert held() == [("stepstone-direct", False, True), ("stepstone-direct", True, False)]
    finally:
        rt.shutdown()


def test_a_store_through_pgbouncer_cancels_resumes_and_lists(bouncer: PgBouncer, db: str) -> None:
    """Through PgBouncer, a Store lists executions, cancels a waiting one and resumes it, and
    the CLI does the same (and migrates, on the direct session)."""
    rt = _runtime(bouncer, db, "sleeper")

    @rt.workflow(name="nap")
    def nap() -> None:
        stepstone.sleep(3600)

    rt.launch()
    try:
        rt.start(nap.with_options(workflow_id="nap-1"))
        rt.start(nap.with_options(workflow_id="nap-2"))
        wait_for(lambda: rt.handle("nap-2").status() == "WAITING")
        wait_for(lambda: rt.handle("nap-1").status() == "WAITING")
    finally:
        rt.shutdown()
    store = Store(_through(bouncer, db), session_conninfo=db, max_size=2)
    store.open(migrate=False)
    try:
        for _ in range(8):  # past psycopg's prepare threshold on each pooled connection
            page = store.list_executions(ExecutionFilter(statuses=("WAITING",)), limit=10)
            assert sorted(row.id for row in page.items) == ["nap-1", "nap-2"]
        assert store.cancel_execution("nap-1", "operator") == "WAITING"
        assert store.resume_execution("nap-1", "operator") == "CANCELLED"
    finally:
        store.close()
    args = ["--database-url", _through(bouncer, db), "--session-database-url", db]
    assert main([*args, "migrate"]) == 0
    assert main([*args, "cancel", "nap-2"]) == 0
    assert main([*args, "executions", "list", "--json"]) == 0
    with psycopg.connect(db) as conn:
        statuses = conn.execute(
            "SELECT id, status FROM stepstone.executions ORDER BY id"
        ).fetchall()
    assert statuses == [("nap-1", "RUNNING"), ("nap-2", "CANCELLED")]


def test_without_a_session_dsn_a_store_through_pgbouncer_fails_at_open(
    bouncer: PgBouncer, db: str
) -> None:
    """Without a session DSN, a Store through PgBouncer 1.18 fails at open(), before it
    migrates or locks anything: PgBouncer refuses the session settings' startup parameter."""
    store = Store(_through(bouncer, db), connect_timeout=5)
    with pytest.raises(DatabaseUnreachable, match="unsupported startup parameter: options"):
        store.open()


def test_automatic_prepared_statements_break_through_pgbouncer_and_the_pool_makes_none(
    db: str,
) -> None:
    """Through a PgBouncer with one server connection, two clients that prepare statements
    clash ("_pg3_0" already exists); a Store given a session DSN prepares none."""
    executable = binary()
    if executable is None:
        pytest.fail(MISSING)
    with pgbouncer(executable, pool_size=1) as narrow:
        through = _through(narrow, db)
        first = psycopg.connect(through, autocommit=True, prepare_threshold=0)
        second = psycopg.connect(through, autocommit=True, prepare_threshold=0)
        try:
            first.execute("SELECT 1")
            with pytest.raises(psycopg.errors.DuplicatePreparedStatement):
                second.execute("SELECT 1")
        finally:
            first.close()
            second.close()
        store = Store(through, session_conninfo=db, min_size=2, max_size=2)
        store.open(migrate=False)
        try:
            with store.connection() as conn:
                assert conn.prepare_threshold is None
            for _ in range(20):
                assert store.get_execution("nothing") is None
        finally:
            store.close()


def test_a_session_dsn_to_another_database_is_refused_at_open(
    bouncer: PgBouncer, db: str, empty_db: str
) -> None:
    """A session DSN that reaches another database than the DSN is a ConfigurationError at
    open(), naming both databases."""
    store = Store(_through(bouncer, db), session_conninfo=empty_db)
    with pytest.raises(ConfigurationError) as info:
        store.open(migrate=False)
    message = str(info.value)
    for dsn in (db, empty_db):
        assert f"dbname={psycopg.conninfo.conninfo_to_dict(dsn)['dbname']}" in message


@pytest.mark.parametrize("value", ["", "  ", 5])
def test_a_session_dsn_that_is_no_connection_string_is_refused(value: object) -> None:
    """An empty or non-text session DSN is a ConfigurationError when the Runtime is made."""
    with pytest.raises(ConfigurationError, match="session DSN must be a connection string"):
        Runtime("postgresql://127.0.0.1/x", session_dsn=value)  # type: ignore[arg-type]


def test_the_session_dsn_comes_from_the_environment_when_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """STEPSTONE_SESSION_DATABASE_URL is the session DSN when none is given; empty, none."""
    monkeypatch.setenv("STEPSTONE_SESSION_DATABASE_URL", "postgresql://db:5432/app")
    assert Store("postgresql://bouncer:6432/app").session_conninfo == "postgresql://db:5432/app"
    monkeypatch.setenv("STEPSTONE_SESSION_DATABASE_URL", "")
    assert not Store("postgresql://bouncer:6432/app").pooled
