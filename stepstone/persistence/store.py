"""`Store`: the only code that talks to the database.

Every hot-path write is one statement (a call to a SQL function created by the
migrations), sent on an autocommit connection from a psycopg-pool `ConnectionPool`, so a
plain step, a start and a completion each cost one round trip and one commit. A
transaction step runs the user's SQL on one connection inside BEGIN ... COMMIT, and sends
its step record together with the COMMIT in a single pipelined round trip.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Self, TypeVar

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from stepstone import migrations
from stepstone.errors import (
    ConfigurationError,
    DatabaseUnreachable,
    SerializationError,
    UsageError,
    WorkflowNotFound,
)
from stepstone.persistence import _conninfo
from stepstone.persistence._driver_errors import FENCE_SQLSTATE, Fence, outage
from stepstone.persistence._queries import Queries
from stepstone.persistence._sessions import begin_statement, pooled_settings, session_settings
from stepstone.persistence._statements import AsyncStatements, Statements
from stepstone.persistence._store_queues import QueueStore, split_registered
from stepstone.persistence._store_waits import WaitStore
from stepstone.persistence._transaction_step import CallWith, TransactionSteps
from stepstone.persistence._typed import convert
from stepstone.persistence.executors import ExecutorSession
from stepstone.persistence.ids import check_schema_name
from stepstone.persistence.operations import Operations
from stepstone.persistence.plans import (
    Plan,
    Request,
    Statement,
    drive,
)
from stepstone.persistence.rows import (
    Checkpoint,
    ExecutionRow,
    ExecutorRow,
    HealthStatus,
    LogRow,
    ResumeRecord,
    StartRequest,
    StartResult,
    StepCommit,
    StepRow,
    SweepResult,
    WokenRecord,
    WorkflowRegistration,
    WorkflowRow,
)
from stepstone.persistence.serialization import (
    DEFAULT_MAX_SIZE,
    Described,
    JsonSerializer,
    Serializer,
    check_size,
    describe_type,
    described,
)
from stepstone.telemetry import EventLog

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence

    from stepstone.persistence.listing import ExecutionFilter, ExecutionPage
    from stepstone.persistence.rows import SlowStep, WorkflowStats


__all__ = ["FENCE_SQLSTATE", "Store"]

T = TypeVar("T")
Connection = psycopg.Connection[tuple[Any, ...]]


log = EventLog("stepstone.persistence")


class Store(QueueStore, WaitStore):
    """Durable storage for definitions, executions, steps, state, checkpoints and logs.

    >>> store = Store("postgresql://localhost/app")   # doctest: +SKIP
    >>> store.open()                                   # migrates, then opens the pool

    When `conninfo` goes through a transaction pooler (PgBouncer with `pool_mode =
    transaction`), `session_conninfo` (else STEPSTONE_SESSION_DATABASE_URL) is a direct
    connection string to the same database, for what needs a session of its own: the
    executor's lock on its id, LISTEN, and the migrations' lock. Given one, the pool makes
    no prepared statements and sends no session settings (see `_sessions`).
    """

    def __init__(
        self,
        conninfo: str | None = None,
        *,
        schema: str = "stepstone",
        min_size: int = 1,
        max_size: int = 10,
        serializer: Serializer | None = None,
        max_value_size: int = DEFAULT_MAX_SIZE,
        connect_timeout: float = 10.0,
        idle_in_transaction_timeout: float = 300.0,
        session_conninfo: str | None = None,
    ) -> None:
        check_schema_name(schema)
        if not (
            isinstance(min_size, int)
            and isinstance(max_size, int)
            and 0 <= min_size <= max_size
            and max_size >= 1
        ):
            raise ConfigurationError(
                f"pool sizes must satisfy 0 <= min_size <= max_size and max_size >= 1, "
                f"got min_size={min_size!r} max_size={max_size!r}"
            )
        if not isinstance(max_value_size, int) or max_value_size < 1:
            raise ConfigurationError(
                f"max_value_size must be a positive int, got {max_value_size!r}"
            )
        self.schema = schema
        self.serializer: Serializer = serializer if serializer is not None else JsonSerializer()
        self._loads_plain: Callable[[str], Any] = getattr(
            self.serializer, "loads_plain", self.serializer.loads
        )
        self.max_value_size = max_value_size
        if (
            isinstance(idle_in_transaction_timeout, bool)
            or not isinstance(idle_in_transaction_timeout, int | float)
            or not idle_in_transaction_timeout >= 1
        ):
            raise ConfigurationError(
                "idle_in_transaction_timeout must be a number of seconds >= 1, got "
                f"{idle_in_transaction_timeout!r}"
            )
        # Last, once every setting is known to be good: this may start the embedded server.
        self.session_conninfo = _conninfo.resolve_session(session_conninfo)
        resolved = _conninfo.resolve(conninfo)
        self.conninfo = resolved.conninfo
        # The embedded server this store holds (attached), released by close() and taken
        # again by open(): the last store of the process to close stops it if no other
        # process uses it.
        self._embedded = resolved.server
        self._holds_server = resolved.server is not None
        log.info(
            "database_selected",
            source=resolved.source,
            schema=schema,
            **_conninfo.parts(self.conninfo),
        )
        self._connect_timeout = connect_timeout
        self._idle_timeout = float(idle_in_transaction_timeout)
        self._begin = begin_statement(self._idle_timeout if self.pooled else None)
        self.queries = Queries(schema)
        self._pool_sizes = (min_size, max_size)
        self._opened = False
        # The pool lives with the statement runner (each open() makes a new one).
        self._sql = Statements(self._new_pool(), self.queries, self.describe, lambda: self._opened)
        self.operations = Operations(self._sql, schema)
        self._aio: AsyncStatements | None = None
        self._transaction_steps = TransactionSteps(
            self._begin,
            self.queries["commit_transaction_step"],
            self._commit_params,
            self.describe,
            self._sql.fail,
        )

    @property
    def pooled(self) -> bool:
        """Whether `conninfo` goes through a transaction pooler (a session DSN is set)."""
        return self.session_conninfo is not None

    def _settings(self) -> dict[str, Any]:
        if self.pooled:
            return pooled_settings(self.conninfo)
        return session_settings(self.conninfo, self._idle_timeout)

    def _new_pool(self) -> ConnectionPool[Connection]:
        # A closed pool cannot be opened again: each open() gets a new one.
        min_size, max_size = self._pool_sizes
        return ConnectionPool(
            self.conninfo,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True, **self._settings()},
            open=False,
            name=f"stepstone-{self.schema}",
            timeout=self._connect_timeout,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def describe(self) -> str:
        """Where this store connects to (host, port, database, user; never the password)."""
        return _conninfo.describe(self.conninfo)

    def describe_session(self) -> str:
        """Where this store's own sessions connect to (the session DSN, else the DSN)."""
        return _conninfo.describe(self.session_conninfo or self.conninfo)

    def connect(self) -> Connection:
        """A new autocommit connection outside the pool, made as the pool makes its own;
        DatabaseUnreachable if none can be made."""
        return self._connect(self.conninfo, self.describe(), _conninfo.ENV_VAR, self._settings())

    def connect_session(self) -> Connection:
        """A new autocommit connection with a session of its own, for session-level locks
        and LISTEN: to the session DSN when one is set (directly to PostgreSQL), else to
        the DSN. DatabaseUnreachable if none can be made."""
        if self.session_conninfo is None:
            return self._connect(self.conninfo, self.describe(), _conninfo.ENV_VAR, {})
        return self._connect(
            self.session_conninfo, self.describe_session(), _conninfo.SESSION_ENV_VAR, {}
        )

    def _connect(
        self, conninfo: str, where: str, env_var: str, settings: dict[str, Any]
    ) -> Connection:
        try:
            return psycopg.connect(
                conninfo,
                autocommit=True,
                connect_timeout=max(1, int(self._connect_timeout)),
                **settings,
            )
        except psycopg.OperationalError as exc:
            reason = str(exc).strip()  # libpq's messages hold no password (see _conninfo)
            raise DatabaseUnreachable(
                f"cannot connect to PostgreSQL at {where}: {reason}. Check that the "
                f"server runs and the database exists, or set the DSN (or {env_var})"
            ) from exc

    def migrate(self) -> list[int]:
        """Apply pending migrations to this store's schema; return the versions applied.
        Runs on a session of its own (the migrators' lock is session-level)."""
        with self.connect_session() as conn:
            return migrations.migrate(conn, self.schema)

    def schema_versions(self) -> tuple[int | None, int]:
        """(the latest migration applied to this store's schema, None if it has no stepstone
        tables; the version this stepstone's migrations bring it to)."""
        expected = migrations.latest_version()
        try:
            with self._connection_for_health() as conn:
                row = conn.execute(self.queries["schema_version"]).fetchone()
        except psycopg.errors.UndefinedTable:
            return None, expected
        except psycopg.Error as exc:
            raise outage(exc, "reading the schema version", self.describe) from exc
        return (int(row[0]) if row and row[0] is not None else None), expected

    def open(self, *, migrate: bool = True) -> None:
        """Check the database is reachable (and, with a session DSN, that both reach the
        same database), migrate it (unless told not to), open the pool."""
        if self._opened:
            return
        if self._embedded is not None and not self._holds_server:
            self._embedded.attach()  # started again if the last store to close stopped it
            self._holds_server = True
        with self.connect() as conn:
            if self.pooled:
                self._check_same_database(conn)
        if migrate:
            self.migrate()
        pool = self._new_pool()
        try:
            pool.open(wait=True, timeout=self._connect_timeout)
        except psycopg.Error as exc:
            pool.close()
            raise DatabaseUnreachable(
                f"cannot open a connection pool to PostgreSQL at {self.describe()}: {exc}"
            ) from exc
        self._sql.pool = pool
        self._opened = True

    def _check_same_database(self, pooled: Connection) -> None:
        """ConfigurationError unless the session DSN reaches the database the DSN does: the
        executor locks a sweep tests are per database and per server."""
        query = self.queries["identify_database"]
        through_pool = pooled.execute(query).fetchone()
        with self.connect_session() as conn:
            direct = conn.execute(query).fetchone()
        if through_pool != direct:
            raise ConfigurationError(
                f"the session DSN ({self.describe_session()}) and the DSN ({self.describe()}) "
                "do not reach the same database: point the session DSN (or "
                f"{_conninfo.SESSION_ENV_VAR}) directly at the PostgreSQL server and database "
                "that the DSN reaches through the pooler"
            )

    @property
    def opened(self) -> bool:
        """Whether the pool is open (from open() until close())."""
        return self._opened

    def close(self) -> None:
        """Close the pool, and release the embedded server if this store runs on it (the
        last user to leave stops it); open() may be called again."""
        if self._opened:
            self._sql.pool.close()
            self._opened = False
        if self._embedded is not None and self._holds_server:
            self._holds_server = False
            self._embedded.release()

    async def open_async(self) -> None:
        """Open psycopg's async pool, for async workflows (after open(), which migrates and
        opens the sync pool). Connections are made as the sync pool makes its own."""
        if self._aio is None:
            self._aio = await self.open_statements_async()

    async def open_statements_async(self) -> AsyncStatements:
        """A new async pool opened on the running event loop, as its statement runner
        (`plans.adrive` runs plans with it). Each event loop that runs async executions
        has its own (the application's, opened by open_async; the runtime's loop thread);
        the caller closes it with `close_statements_async`."""
        min_size, max_size = self._pool_sizes
        pool: AsyncConnectionPool[psycopg.AsyncConnection[tuple[Any, ...]]] = AsyncConnectionPool(
            self.conninfo,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True, **self._settings()},
            open=False,
            name=f"stepstone-{self.schema}-async",
            timeout=self._connect_timeout,
        )
        try:
            await pool.open(wait=True, timeout=self._connect_timeout)
        except psycopg.Error as exc:
            await pool.close()
            raise DatabaseUnreachable(
                f"cannot open an async connection pool to PostgreSQL at {self.describe()}: {exc}"
            ) from exc
        aio = AsyncStatements(pool, self._sql)
        aio.opened = True
        return aio

    async def close_async(self) -> None:
        """Close the async pool; open_async() may be called again."""
        aio, self._aio = self._aio, None
        if aio is not None:
            await self.close_statements_async(aio)

    @staticmethod
    async def close_statements_async(aio: AsyncStatements) -> None:
        """Close a pool `open_statements_async` opened (on the loop it was opened on)."""
        aio.opened = False
        await aio.pool.close()

    @property
    def io(self) -> Statements:
        """The statement runner of the sync pool (for the sync driver, `plans.drive`)."""
        return self._sql

    @property
    def aio(self) -> AsyncStatements | None:
        """The statement runner of the async pool (for `plans.adrive`); None until
        open_async()."""
        return self._aio

    def pool_stats(self) -> dict[str, int]:
        """The connection pool's statistics (psycopg-pool's get_stats()); empty when closed."""
        return dict(self._sql.pool.get_stats()) if self._opened else {}

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A pooled autocommit connection, for queries of your own next to the store's."""
        if not self._opened:
            raise UsageError("the store is not open: call open() (Runtime.launch() does) first")
        with self._sql.pool.connection() as conn:
            yield conn

    # -- values ------------------------------------------------------------------------------

    def encode(self, value: object, what: Described) -> str:
        """Serialize `value`; SerializationError names `what` (a text, or a callable that
        returns it, called only then) and the type or size at fault."""
        try:
            text = self.serializer.dumps(value)
        except (TypeError, ValueError, RecursionError) as exc:
            raise SerializationError(
                f"{described(what)} cannot be serialized ({describe_type(value)}): {exc}. Pass values the "
                "serializer supports (JSON types, datetime, date, UUID, Decimal, bytes, tuples, "
                "sets, enums, paths, dataclasses, named tuples, pydantic models, msgspec structs) "
                "or configure another serializer"
            ) from exc
        check_size(text, self.max_value_size, what)
        return text

    def decode(self, text: str) -> Any:
        """The value a serialized payload holds."""
        return self.serializer.loads(text)

    def decode_plain(self, text: str) -> Any:
        """The value a serialized payload holds, without rebuilding users' types from paths
        stored in it (the JSON serializer's `loads_plain`; a serializer without one: `loads`)."""
        return self._loads_plain(text)

    def decode_as(self, text: str, annotation: Any, what: Described) -> Any:
        """The value a serialized payload holds, as the type `annotation` describes (see
        `_typed`); SerializationError names `what` if it cannot be."""
        try:
            return convert(self.decode_plain(text), annotation)
        except ValueError as exc:
            raise SerializationError(f"{described(what)} cannot be decoded: {exc}") from exc

    # -- definitions and executors -----------------------------------------------------------

    def save_workflow(self, name: str, version: str, fingerprint: str) -> WorkflowRow:
        """Register a workflow definition (or refresh its fingerprint and last-seen time)."""
        row = self._sql.one(
            "save_workflow", {"name": name, "version": version, "fingerprint": fingerprint}
        )
        assert row is not None  # noqa: S101 - INSERT ... RETURNING always returns the row
        return WorkflowRow(*row)

    def register_workflow(self, name: str, version: str, fingerprint: str) -> WorkflowRegistration:
        """`save_workflow`, in the same round trip telling what the registration met: the
        fingerprint registered before, and the unfinished executions of this version that
        started with another fingerprint (their code changed under them)."""
        row = self._sql.one(
            "register_workflow", {"name": name, "version": version, "fingerprint": fingerprint}
        )
        assert row is not None  # noqa: S101 - INSERT ... RETURNING always returns the row
        return WorkflowRegistration(
            workflow=WorkflowRow(*row[:5]),
            previous_fingerprint=row[5],
            changed_executions=int(row[6]),
            changed_fingerprints=list(row[7]),
            oldest_changed_ids=list(row[8]),
        )

    def load_workflow(self, name: str, version: str | None = None) -> WorkflowRow | None:
        """A registered definition: the given version, or the most recently seen one."""
        found: WorkflowRow | None = self.load_workflow_statement(name, version).run(self._sql)
        return found

    # -- the hot path ------------------------------------------------------------------------

    def start_execution(self, request: StartRequest) -> StartResult:
        """Create a RUNNING execution owned by `request.owner` at epoch 1, in one round trip.

        Idempotent by id: if the id exists, nothing is written and the existing execution
        is returned with `created=False`.
        """
        result: StartResult = self.start_statement(request).run(self._sql)
        return result

    def start_statement(self, request: StartRequest) -> Statement:
        """`start_execution` as a request (its result: a StartResult)."""
        return Statement(
            self.queries["start_execution"],
            {
                "id": request.id,
                "name": request.workflow_name,
                "version": request.workflow_version,
                "inputs": request.inputs,
                "owner": request.owner,
                "parent": request.parent_id,
                "trace": Jsonb(request.trace_context) if request.trace_context else None,
                "attributes": Jsonb(request.attributes) if request.attributes else None,
                "timeout": request.timeout,
            },
            "one",
            "start execution",
            convert=_start_result,
        )

    def commit_step(self, commit: StepCommit) -> None:
        """Record a completed step in one statement and one transaction (fenced). Sent
        directly rather than as `commit_statement(commit).run(...)`: the sync hot path."""
        query, params, action, fence = self._commit_args(commit)
        self._sql.run(query, params, fetch=None, action=action, fence=fence)

    def commit_step_async(self, commit: StepCommit, aio: AsyncStatements) -> Awaitable[None]:
        """`commit_step` on an async pool (`aio`), sent directly: the async hot path (the
        awaitable of the statement itself, without a coroutine of its own around it)."""
        query, params, action, fence = self._commit_args(commit)
        done: Awaitable[None] = aio.run(query, params, fetch=None, action=action, fence=fence)
        return done

    def commit_statement(self, commit: StepCommit) -> Statement:
        """`commit_step` as a request."""
        query, params, action, fence = self._commit_args(commit)
        return Statement(query, params, None, action, fence)

    def _commit_args(self, commit: StepCommit) -> tuple[bytes, dict[str, Any], Described, Fence]:
        return (
            self.queries["commit_step"],
            self._commit_params(commit),
            lambda: f"committing step {commit.seq} of {commit.execution_id!r}",
            (commit.execution_id, commit.owner, commit.epoch),
        )

    def run_transaction_step(
        self, body: Callable[[Connection], T], record: Callable[[T], StepCommit]
    ) -> T:
        """Run `body` on a connection inside a transaction, then commit its SQL together with
        the step record that `record(result)` builds: the record and the COMMIT travel in one
        pipelined round trip, and a fenced-out record rolls everything back.

        Errors raised by `body`, and errors the body's SQL causes at the COMMIT (a deferred
        constraint, a serialization failure, a read-only transaction), propagate unchanged
        after the rollback: they are the step's own. A lost connection or an exhausted pool
        is a PersistenceError; a fenced-out record is OwnershipLost or ExecutionCancelled.
        """
        ok, value = drive(self.transaction_step_plan(CallWith(body), record), self._sql)
        if not ok:
            raise value
        result: T = value
        return result

    def transaction_step_plan(
        self, body: Callable[[Any], Request], record: Callable[[Any], StepCommit]
    ) -> Plan[tuple[bool, Any]]:
        """`run_transaction_step` written once for both drivers (see `_transaction_step`)."""
        return self._transaction_steps.plan(body, record)

    def finish_execution(
        self,
        execution_id: str,
        owner: str,
        epoch: int,
        *,
        status: str,
        output: str | None,
        error: dict[str, Any] | None,
        seq: int,
        state: dict[str, str] | None = None,
        deleted: list[str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record the outcome (fenced), with the last state changes, in one round trip."""
        self.finish_statement(
            execution_id,
            owner,
            epoch,
            status=status,
            output=output,
            error=error,
            seq=seq,
            state=state,
            deleted=deleted,
            details=details,
        ).run(self._sql)

    def finish_statement(
        self,
        execution_id: str,
        owner: str,
        epoch: int,
        *,
        status: str,
        output: str | None,
        error: dict[str, Any] | None,
        seq: int,
        state: dict[str, str] | None = None,
        deleted: list[str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> Statement:
        """`finish_execution` as a request."""
        params = {
            "id": execution_id,
            "owner": owner,
            "epoch": epoch,
            "status": status,
            "output": output,
            "error": Jsonb(error) if error is not None else None,
            "seq": seq,
            "state": Jsonb(state) if state else None,
            "deleted": deleted or None,
            "details": Jsonb(details) if details else None,
        }
        return Statement(
            self.queries["finish_execution"],
            params,
            None,
            lambda: f"finishing {execution_id!r}",
            (execution_id, owner, epoch),
        )

    def continue_as_new(
        self, execution_id: str, owner: str, epoch: int, seq: int, inputs: str, run: int
    ) -> ResumeRecord:
        """End the current run of execution `execution_id` (owned by `owner` at `epoch`), which
        called continue-as-new at position `seq`, and start run number `run` with `inputs`
        (serialized), in one statement (fenced): the old run's steps, state and checkpoints
        are deleted, the messages it received are kept as received, and the execution stays
        RUNNING, owned by `owner` at the next epoch, with no recovery counted. Returns what
        runs the new run (no steps, no state). OwnershipLost or ExecutionCancelled if fenced
        out; then nothing changed."""
        record: ResumeRecord = self.continue_as_new_statement(
            execution_id, owner, epoch, seq, inputs, run
        ).run(self._sql)
        return record

    def continue_as_new_statement(
        self, execution_id: str, owner: str, epoch: int, seq: int, inputs: str, run: int
    ) -> Statement:
        """`continue_as_new` as a request (its result: the ResumeRecord of the new run)."""
        params = {
            "id": execution_id,
            "owner": owner,
            "epoch": epoch,
            "seq": seq,
            "inputs": inputs,
            "run": run,
        }
        return Statement(
            self.queries["continue_as_new"],
            params,
            "one",
            lambda: f"continuing {execution_id!r} as new (run {run})",
            (execution_id, owner, epoch),
            convert=ResumeRecord.from_row,
        )

    # -- recovery ----------------------------------------------------------------------------

    def executor_session(
        self,
        executor_id: str,
        *,
        hostname: str,
        pid: int,
        lease_seconds: float,
        workflows: list[tuple[str, str]],
    ) -> ExecutorSession:
        """This process's executor registration (see ExecutorSession); not yet opened."""
        return ExecutorSession(
            self,
            executor_id,
            hostname=hostname,
            pid=pid,
            lease_seconds=lease_seconds,
            workflows=workflows,
        )

    def claim_own(
        self, execution_id: str, owner: str, reason: str = "called_again"
    ) -> ResumeRecord | None:
        """Take over a RUNNING execution that `owner` already owns, with a new epoch, and load
        its inputs, recorded steps and committed state, in one statement. None if there is
        no such execution."""
        found: ResumeRecord | None = self.claim_own_statement(execution_id, owner, reason).run(
            self._sql
        )
        return found

    def claim_own_statement(
        self, execution_id: str, owner: str, reason: str = "called_again"
    ) -> Statement:
        """`claim_own` as a request."""
        return Statement(
            self.queries["claim_own"],
            {"id": execution_id, "owner": owner, "reason": reason},
            "one",
            "claim own",
            convert=_resume_record,
        )

    def claim_all_own(
        self, owner: str, registered: Sequence[tuple[str, str]], active: Collection[str]
    ) -> list[ResumeRecord]:
        """Take over, in one statement, every RUNNING execution `owner` owns whose definition
        is in `registered` and whose id is not in `active`."""
        names, versions = split_registered(registered)
        params = {
            "owner": owner,
            "names": names,
            "versions": versions,
            "active": list(active),
            "reason": "restart",
        }
        return [ResumeRecord.from_row(row) for row in self._sql.all("claim_all_own", params)]

    def release_unregistered(
        self, owner: str, registered: Sequence[tuple[str, str]]
    ) -> list[tuple[str, str, str]]:
        """Give up `owner`'s RUNNING executions whose definition is not in `registered`, so an
        executor that has it claims them; return (id, workflow name, version) of each."""
        names, versions = split_registered(registered)
        rows = self._sql.all(
            "release_unregistered_own", {"owner": owner, "names": names, "versions": versions}
        )
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    def sweep(self, owner: str, registered: Sequence[tuple[str, str]], limit: int) -> SweepResult:
        """In one statement: wake up to `limit` due WAITING executions and claim running
        executions whose owner's lease expired (or that have no owner), of the definitions
        in `registered`; report expired ones whose definition is not, and when the next
        waiting one is due."""
        names, versions = split_registered(registered)
        rows = self._sql.all(
            "sweep", {"owner": owner, "names": names, "versions": versions, "limit": limit}
        )
        claimed = [ResumeRecord.from_row(row[1:10]) for row in rows if row[0] == "claimed"]
        woken = [WokenRecord.from_row(row[1:10] + row[11:13]) for row in rows if row[0] == "woken"]
        unclaimable = [
            (str(row[1]), str(row[2]), str(row[3])) for row in rows if row[0] == "unclaimable"
        ]
        next_wake_in = next((row[10] for row in rows if row[0] == "next"), None)
        return SweepResult(claimed, unclaimable, woken, next_wake_in)

    def release_execution(
        self, execution_id: str, owner: str, epoch: int, reason: str, *, interrupted: bool = True
    ) -> bool:
        """Hand a RUNNING execution that `owner` owns at `epoch` back at once: no owner, the
        next epoch, an audit entry with `reason`, and a notification so that any executor
        that runs its workflow claims it at once. `interrupted` (something stopped it while
        it ran) counts one more recovery, so that a loop of hand-backs ends at
        max_recoveries; a hand-back at a graceful shutdown passes False and counts none.
        False, changing nothing, if it is not `owner`'s at `epoch`."""
        released: bool = self.release_statement(
            execution_id, owner, epoch, reason, interrupted=interrupted
        ).run(self._sql)
        return released

    def release_statement(
        self, execution_id: str, owner: str, epoch: int, reason: str, *, interrupted: bool = True
    ) -> Statement:
        """`release_execution` as a request."""
        params = {
            "id": execution_id,
            "owner": owner,
            "epoch": epoch,
            "reason": reason,
            "interrupted": interrupted,
        }
        return Statement(self.queries["release"], params, "one", "release", convert=_first_true)

    def refuse_execution(self, execution_id: str, owner: str, epoch: int, reason: str) -> bool:
        """Hand back a RUNNING execution that `owner` owns at `epoch` but cannot run (its
        inputs cannot be decoded there): no owner, the next epoch, `owner` among those that
        refused it (its sweeps pass it over until `forget_refusals`), an audit entry with
        `reason`, and a notification for other executors. No recovery is counted. False,
        changing nothing, if it is not `owner`'s at `epoch`."""
        params = {"id": execution_id, "owner": owner, "epoch": epoch, "reason": reason}
        row = self._sql.one("refuse", params)
        return bool(row and row[0])

    def forget_refusals(self, owner: str) -> None:
        """Let `owner` claim again the executions it refused (it restarted: its code may
        run them now)."""
        self._sql.exec("forget_refusals", {"owner": owner})

    def running_owned_by(self, owner: str) -> list[str]:
        """Ids of the RUNNING executions `owner` owns."""
        return [str(row[0]) for row in self._sql.all("running_owned_by", {"owner": owner})]

    # -- state and checkpoints ---------------------------------------------------------------

    def update_state(
        self,
        execution_id: str,
        owner: str,
        epoch: int,
        seq: int,
        changes: Mapping[str, Any],
        deleted: list[str] | None = None,
    ) -> None:
        """Write state changes (fenced) and snapshot the state as the checkpoint at `seq`."""
        state = self._encode_state(execution_id, changes)
        params = {
            "id": execution_id,
            "owner": owner,
            "epoch": epoch,
            "seq": seq,
            "state": Jsonb(state) if state else None,
            "deleted": deleted or None,
        }
        self._sql.exec("update_state", params, fence=(execution_id, owner, epoch))

    def save_checkpoint(
        self, execution_id: str, owner: str, epoch: int, seq: int, state: Mapping[str, Any]
    ) -> None:
        """Store `state` as the checkpoint at position `seq` (fenced)."""
        encoded = self._encode_state(execution_id, state)
        params = {
            "id": execution_id,
            "owner": owner,
            "epoch": epoch,
            "seq": seq,
            "state": Jsonb(encoded),
        }
        self._sql.exec("save_checkpoint", params, fence=(execution_id, owner, epoch))

    def recover_from_checkpoint(
        self, execution_id: str, seq: int | None = None
    ) -> Checkpoint | None:
        """The latest checkpoint at or before position `seq` (the latest of all if None)."""
        row = self._sql.one(
            "recover_from_checkpoint",
            {"id": execution_id, "seq": seq if seq is not None else 2**31 - 1},
        )
        return Checkpoint(execution_id, row[0], row[1]) if row else None

    def get_state(self, execution_id: str) -> dict[str, Any]:
        """The latest committed state of an execution (empty if it has none or does not exist)."""
        state: dict[str, Any] = self.state_statement(execution_id).run(self._sql)
        return state

    def require_state(self, execution_id: str) -> dict[str, Any]:
        """As `get_state`, but WorkflowNotFound for an id no execution has (the status is
        read only when the state is empty)."""
        return drive(self.require_state_plan(execution_id), self._sql)

    def require_state_plan(self, execution_id: str) -> Plan[dict[str, Any]]:
        """`require_state` for either driver."""
        state: dict[str, Any] = yield self.state_statement(execution_id)
        if not state and (yield self.status_statement(execution_id)) is None:
            raise WorkflowNotFound(f"no execution has workflow id {execution_id!r}")
        return state

    def state_statement(self, execution_id: str) -> Statement:
        """`get_state` as a request (its result: the decoded state)."""
        return Statement(
            self.queries["get_state"],
            {"id": execution_id},
            "all",
            "get state",
            convert=lambda rows: {key: self.decode(value) for key, value in rows},
        )

    def state_value_statement(self, execution_id: str, key: str) -> Statement:
        """(status, the serialized value of state key `key` or None if it is not set) of an
        execution, or None if there is no such execution: the state waits' poll."""
        return Statement(
            self.queries["state_value"],
            {"id": execution_id, "key": key},
            "one",
            "state value",
            convert=_state_value,
        )

    def load_workflow_statement(self, name: str, version: str | None = None) -> Statement:
        """`load_workflow` as a request."""
        return Statement(
            self.queries["load_workflow"],
            {"name": name, "version": version},
            "one",
            "load workflow",
            convert=lambda row: WorkflowRow(*row) if row else None,
        )

    def schema_version_statement(self) -> Statement:
        """The latest migration applied to this store's schema as a request (its result:
        None if the schema has no stepstone tables)."""
        return Statement(
            self.queries["schema_version"],
            {},
            "one",
            "reading the schema version",
            convert=lambda row: int(row[0]) if row and row[0] is not None else None,
        )

    # -- reads -------------------------------------------------------------------------------

    def get_execution(self, execution_id: str) -> ExecutionRow | None:
        """One execution by id."""
        row = self._sql.one("get_execution", {"id": execution_id})
        return ExecutionRow(*row) if row else None

    def get_status(self, execution_id: str) -> tuple[str, str | None, dict[str, Any] | None] | None:
        """(status, output, error) of one execution, the cheapest poll."""
        found: tuple[str, str | None, dict[str, Any] | None] | None = self.status_statement(
            execution_id
        ).run(self._sql)
        return found

    def status_statement(self, execution_id: str) -> Statement:
        """`get_status` as a request."""
        return Statement(
            self.queries["get_status"], {"id": execution_id}, "one", "get status", convert=_status
        )

    def list_steps(self, execution_id: str) -> list[StepRow]:
        """The completed steps of an execution, in order."""
        return [StepRow(*row) for row in self._sql.all("list_steps", {"id": execution_id})]

    def list_logs(self, execution_id: str) -> list[LogRow]:
        """The audit log of an execution, oldest first."""
        return [LogRow(*row) for row in self._sql.all("list_logs", {"id": execution_id})]

    # -- inspecting and operating (see operations.py) ---------------------------------------

    def list_checkpoints(self, execution_id: str) -> list[Checkpoint]:
        """Every checkpoint of an execution, by position (state values are serialized text)."""
        return self.operations.list_checkpoints(execution_id)

    def list_executions(
        self,
        flt: ExecutionFilter | None = None,
        *,
        sort: str = "created",
        direction: str = "desc",
        limit: int = 50,
        cursor: str | None = None,
    ) -> ExecutionPage:
        """One page of executions matching `flt`, sorted by created, updated, duration (ended
        executions only) or name, newest or largest first with "desc"; `cursor` continues
        from the page that returned it. InvalidQuery for anything that cannot be used."""
        return self.operations.list_executions(
            flt, sort=sort, direction=direction, limit=limit, cursor=cursor
        )

    def workflow_stats(
        self, since: dt.datetime, until: dt.datetime | None = None, workflow_name: str | None = None
    ) -> list[WorkflowStats]:
        """Per workflow, the executions created in [since, until): counts by outcome,
        p50/p95/p99 duration and retries."""
        return self.operations.workflow_stats(since, until, workflow_name)

    def slowest_steps(
        self,
        since: dt.datetime,
        until: dt.datetime | None = None,
        *,
        limit: int = 10,
        workflow_name: str | None = None,
    ) -> list[SlowStep]:
        """The slowest steps of the executions created in [since, until)."""
        return self.operations.slowest_steps(since, until, limit=limit, workflow_name=workflow_name)

    def cancel_execution(self, execution_id: str, actor: str) -> str:
        """Cancel a RUNNING, WAITING or ENQUEUED execution and its unfinished descendants
        (each stops at its next step boundary); return the status it had. Refused, changing
        nothing, otherwise."""
        return self.operations.cancel_execution(execution_id, actor)

    def resume_execution(self, execution_id: str, actor: str, owner: str | None = None) -> str:
        """Make a FAILED or CANCELLED execution RUNNING again from its last recorded step
        (trailing failed steps run again), with a fresh recovery budget, owned by `owner`
        (None: claimed by the next sweep of an executor that runs its workflow); the
        descendants its cancellation cancelled (a child it waited for) run again too, with
        no owner. Returns the status it had."""
        return self.operations.resume_execution(execution_id, actor, owner)

    def fork_execution(
        self,
        execution_id: str,
        from_step: int,
        actor: str,
        *,
        new_id: str | None = None,
        owner: str | None = None,
    ) -> str:
        """Start a new execution of the same workflow and inputs that keeps the recorded
        steps before position `from_step` and the state checkpointed there, and runs from
        it. Returns the new execution's id (default: `<id>-fork-<random>`)."""
        return self.operations.fork_execution(
            execution_id, from_step, actor, new_id=new_id, owner=owner
        )

    def purge(
        self,
        older_than: dt.timedelta,
        actor: str,
        *,
        batch_size: int = 1000,
        max_batches: int | None = None,
    ) -> int:
        """Delete executions that ended more than `older_than` ago, with their steps, state,
        checkpoints and log, `batch_size` executions per transaction (at most `max_batches`
        transactions), and executors dead for that long that own no running execution;
        return how many executions."""
        return self.operations.purge(
            older_than, actor, batch_size=batch_size, max_batches=max_batches
        )

    def list_executors(self) -> list[ExecutorRow]:
        """Every registered executor: host, process, heartbeat age, lease, running count."""
        return self.operations.list_executors()

    def health_status(self) -> HealthStatus:
        """Reachability, round-trip latency, schema version and pool statistics."""
        expected = migrations.latest_version()
        stats = self.pool_stats()
        try:
            with self._connection_for_health() as conn:
                started = time.perf_counter()
                conn.execute(b"SELECT 1").fetchone()
                latency = (time.perf_counter() - started) * 1000
                try:
                    row = conn.execute(self.queries["schema_version"]).fetchone()
                    version = row[0] if row else None
                except psycopg.errors.UndefinedTable:
                    version = None
                counts: tuple[Any, ...] | None = None
                if version == expected:
                    counts = conn.execute(self.queries["health_counts"]).fetchone()
        except (psycopg.Error, DatabaseUnreachable) as exc:
            error = str(exc).strip()
            return HealthStatus(
                reachable=False,
                latency_ms=None,
                schema_version=None,
                expected_schema_version=expected,
                pool=stats,
                error=error,
            )
        running, enqueued, expired, unclaimable, oldest, changed = counts or (None,) * 6
        return HealthStatus(
            reachable=True,
            latency_ms=round(latency, 3),
            schema_version=version,
            expected_schema_version=expected,
            pool=stats,
            running=running,
            enqueued=enqueued,
            expired_lease=expired,
            unclaimable=unclaimable,
            oldest_running_seconds=float(oldest) if oldest is not None else None,
            code_changed=changed,
        )

    # -- helpers -----------------------------------------------------------------------------

    @contextmanager
    def _connection_for_health(self) -> Iterator[Connection]:
        if self._opened:
            with self._sql.pool.connection() as conn:
                yield conn
        else:
            with self.connect() as conn:
                yield conn

    def _encode_state(self, execution_id: str, state: Mapping[str, Any]) -> dict[str, str]:
        return {
            key: self.encode(value, f"state key {key!r} of {execution_id!r}")
            for key, value in state.items()
        }

    def _commit_params(self, c: StepCommit) -> dict[str, Any]:
        return {
            "id": c.execution_id,
            "owner": c.owner,
            "epoch": c.epoch,
            "seq": c.seq,
            "name": c.name,
            "kind": c.kind,
            "output": c.output,
            "error": Jsonb(c.error) if c.error is not None else None,
            "attempts": c.attempts,
            "started_at": c.started_at,
            "finished_at": c.finished_at,
            "state": Jsonb(c.state) if c.state else None,
            "deleted": c.deleted or None,
            "logs": Jsonb(c.logs) if c.logs else None,
        }


def _start_result(row: Any) -> StartResult:
    assert row is not None  # noqa: S101 - the function returns one row in both branches
    return StartResult(*row)


def _resume_record(row: Any) -> ResumeRecord | None:
    return ResumeRecord.from_row(row) if row else None


def _first_true(row: Any) -> bool:
    return bool(row and row[0])


def _state_value(row: Any) -> tuple[str, str | None] | None:
    return (str(row[0]), row[1]) if row else None


def _status(row: Any) -> tuple[str, str | None, dict[str, Any] | None] | None:
    return (row[0], row[1], row[2]) if row else None
