"""Property-based tests of listing, filtering, pagination and operator actions, run against
a real PostgreSQL holding a dataset of a few hundred executions inserted with plain SQL.

Every expectation is computed in Python from the inserted rows; PostgreSQL is asked only
how its collation orders the stored texts (for the name sort order).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.types.json import Jsonb

from stepstone import (
    ExecutionFilter,
    ExecutionPage,
    InvalidQuery,
    InvalidWorkflowId,
    Store,
    UsageError,
    WorkflowNotFound,
)
from stepstone.persistence.listing import MAX_LIMIT, MAX_TEXT, STATUSES, ExecutionSummary
from tests.support import databases

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

# -- the dataset --------------------------------------------------------------------------

SEED = 20_240_611
N_ROWS = 300
UTC = dt.UTC
BASE = dt.datetime(2023, 1, 1, tzinfo=UTC)
ENDED = ("SUCCEEDED", "FAILED", "CANCELLED")
SORTS = ("created", "updated", "duration", "name")
DIRECTIONS = ("asc", "desc")
TEXT_FIELDS = ("workflow_name", "workflow_id_prefix", "executor", "parent_id")
TIME_FIELDS = ("created_after", "created_before", "updated_after", "updated_before")

SQL_FRAGMENTS = (
    "'; DROP TABLE x; --",
    "Robert'); DROP TABLE executions;--",
    "' OR '1'='1",
    "' OR 1=1 --",
    "%(workflow_name)s",
    "%(id)s",
    "%s",
    "$1",
    "{schema}",
    "E'\\\\x00'",
    "\\",
    "%",
    "_",
    "%%",
    "*",
    "a%",
    "a_",
    "1; SELECT pg_sleep(10)",
)
NAMES = (
    "checkout",
    "Checkout",
    "checkout ",
    "check_out",
    "check%out",
    "checkXout",
    "o'brien",
    'say "hi"',
    "back\\slash",
    "back\\\\slash",
    "'; DROP TABLE x; --",
    "%(workflow_name)s",
    "%",
    "_",
    "\\",
    "",
    " ",
    "\u540d\u524d",
    "emoji \U0001f680",
    "\U0001f680",
    "caf\u00e9",
    "cafe\u0301",
    "tab\tname",
    "new\nline",
    "x" * 200,
    "n" * MAX_TEXT,
)
ID_STEMS = (
    "a",
    "a_b",
    "a%b",
    "aXb",
    "a\\b",
    "ab",
    "A",
    "o'k",
    "order-",
    "order_",
    "order%",
    "ORDER-",
    "' OR '1'='1",
    "'; DROP TABLE x; --",
    "%(id)s",
    "\u00fcn\u00ef",
    "\U0001f680",
    "\u540d\u524d-",
    "tab\t",
    "$1",
    "%",
    "_",
    "\\",
    '"q"',
    "y" * 250,
)
OWNERS = (
    "exec-a",
    "exec-b",
    "Exec-A",
    "exec_a",
    "exec%a",
    "o'wner",
    "\U0001f680-worker",
    "'; DROP TABLE x; --",
    "",
    "\\",
)
ATTR_KEYS = ("team", "Team", "prio", "flag", "n", "k'ey", "%", "", "\U0001f680", "a.b", "_")
ATTR_VALUES: tuple[Any, ...] = (
    "red",
    "Red",
    "",
    "'; DROP TABLE x; --",
    "100%",
    "a_b",
    "\\",
    "\u540d\u524d",
    "1",
    "true",
    "null",
    0,
    1,
    -1,
    2**40,
    True,
    False,
    None,
)
DURATIONS = (
    dt.timedelta(0),
    dt.timedelta(microseconds=1),
    dt.timedelta(seconds=1),
    dt.timedelta(seconds=1, microseconds=500_000),
    dt.timedelta(hours=1),
    dt.timedelta(days=1),
    dt.timedelta(hours=25),
)


@dataclass(frozen=True)
class Row:
    """One inserted execution, as the Python model sees it."""

    id: str
    workflow_name: str
    status: str
    owner: str | None
    parent_id: str | None
    attributes: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None
    steps: int

    @property
    def duration(self) -> dt.timedelta | None:
        return None if self.finished_at is None else self.finished_at - self.created_at


def _make_rows() -> tuple[Row, ...]:
    rng = random.Random(SEED)
    ids: list[str] = []
    for stem in ID_STEMS:
        ids.append(stem)
    while len(ids) < N_ROWS:
        n = rng.randrange(1000)
        suffix = rng.choice(["", f"{n}", f"_{n}", f"%{n}", f"-{n}", f"'{n}", f"\\{n}"])
        wid = (rng.choice(ID_STEMS) + suffix)[:255]
        if wid not in ids:
            ids.append(wid)
    rng.shuffle(ids)
    created_pool: list[dt.datetime] = []
    rows: list[Row] = []
    for wid in ids:
        if created_pool and rng.random() < 0.3:
            created = rng.choice(created_pool)  # ties on the sort key, broken by the id
        else:
            created = BASE + dt.timedelta(
                seconds=rng.randrange(30 * 86_400), microseconds=rng.randrange(1_000_000)
            )
            created_pool.append(created)
        status = rng.choice(STATUSES)
        finished = created + rng.choice(DURATIONS) if status in ENDED else None
        updated = created + rng.choice([dt.timedelta(0), dt.timedelta(seconds=rng.randrange(1, 9))])
        if finished is not None and finished > updated:
            updated = finished
        n_attrs = rng.randrange(4)
        attributes = {rng.choice(ATTR_KEYS): rng.choice(ATTR_VALUES) for _ in range(n_attrs)}
        parent: str | None = None
        if rows and rng.random() < 0.3:
            parent = rng.choice(rows).id
        elif rng.random() < 0.1:
            parent = rng.choice(SQL_FRAGMENTS)
        rows.append(
            Row(
                id=wid,
                workflow_name=rng.choice(NAMES),
                status=status,
                owner=rng.choice((None, *OWNERS)),
                parent_id=parent,
                attributes=attributes,
                created_at=created,
                updated_at=updated,
                finished_at=finished,
                steps=rng.choice([0, 0, 1, 2, 3]),
            )
        )
    return tuple(rows)


ROWS = _make_rows()
IDS = tuple(r.id for r in ROWS)
ID_SET = frozenset(IDS)
BY_ID = {r.id: r for r in ROWS}
TABLES = ("executions", "steps", "states", "checkpoints", "logs", "workflows", "executors")


def _insert(conn: psycopg.Connection[Any], rows: Sequence[Row]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO stepstone.executions (id, workflow_name, workflow_version, status, "
            "inputs, output, error, owner, epoch, parent_id, attributes, created_at, updated_at, "
            "started_at, finished_at) VALUES (%s, %s, '1', %s, '{}', %s, %s, %s, 1, %s, %s, %s, "
            "%s, %s, %s)",
            [
                (
                    r.id,
                    r.workflow_name,
                    r.status,
                    "42" if r.status == "SUCCEEDED" else None,
                    Jsonb({"type": "ValueError", "message": "boom"})
                    if r.status == "FAILED"
                    else None,
                    r.owner,
                    r.parent_id,
                    Jsonb(r.attributes),
                    r.created_at,
                    r.updated_at,
                    r.created_at,
                    r.finished_at,
                )
                for r in rows
            ],
        )
        cur.executemany(
            "INSERT INTO stepstone.steps (execution_id, seq, name, kind, output, attempts, "
            "started_at, finished_at) VALUES (%s, %s, %s, 'step', '1', 1, %s, %s)",
            [
                (r.id, n, f"step{n}", r.created_at, r.created_at)
                for r in rows
                for n in range(r.steps)
            ],
        )
        cur.executemany(
            "INSERT INTO stepstone.checkpoints (execution_id, seq, state) VALUES (%s, %s, %s)",
            [(r.id, r.steps, Jsonb({"k": '"v"'})) for r in rows if r.steps],
        )
        cur.executemany(
            "INSERT INTO stepstone.logs (execution_id, event, actor, details) "
            "VALUES (%s, 'execution_started', 'seed', '{}')",
            [(r.id,) for r in rows],
        )


def _checksum(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """Row count and an md5 of the sorted text of every row, per stepstone table."""
    result = []
    for table in TABLES:
        query = sql.SQL(
            "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') "
            "FROM {} t"
        ).format(sql.Identifier("stepstone", table))
        row = conn.execute(query).fetchone()
        assert row is not None
        result.append((table, *row))
    return result


class Dataset:
    """A database holding ROWS, a store on it, and PostgreSQL's order of the stored texts."""

    def __init__(self, store: Store, conn: psycopg.Connection[Any]) -> None:
        self.store = store
        self.conn = conn
        self.baseline = _checksum(conn)
        self.name_rank = _ranks(conn, [r.workflow_name for r in ROWS])
        self.id_rank = _ranks(conn, IDS)

    def assert_unchanged(self) -> None:
        assert _checksum(self.conn) == self.baseline

    def __repr__(self) -> str:
        return f"<Dataset of {len(ROWS)} executions>"


def _ranks(conn: psycopg.Connection[Any], values: Sequence[str]) -> dict[str, int]:
    rows = conn.execute(
        "SELECT x FROM unnest(%s::text[]) AS u(x) GROUP BY x ORDER BY x", (list(values),)
    ).fetchall()
    return {value: n for n, (value,) in enumerate(rows)}


@pytest.fixture(scope="module")
def dataset_dsn(template_db: str) -> Iterator[str]:
    name = databases.create_database(template=template_db)
    try:
        yield databases.dsn_for(name)
    finally:
        databases.drop_database(name)


def _open_dataset(dsn: str) -> Iterator[Dataset]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            _insert(conn, ROWS)
        with Store(dsn, max_size=2) as store:
            yield Dataset(store, conn)


@pytest.fixture(scope="module")
def ds(dataset_dsn: str) -> Iterator[Dataset]:
    """The listing dataset: read only (every test checks it is left unchanged)."""
    yield from _open_dataset(dataset_dsn)


@pytest.fixture(scope="module")
def ops(template_db: str) -> Iterator[Dataset]:
    """A second copy of the dataset for operator actions that must change nothing."""
    name = databases.create_database(template=template_db)
    try:
        yield from _open_dataset(databases.dsn_for(name))
    finally:
        databases.drop_database(name)


# -- the Python model ---------------------------------------------------------------------


def _instant(moment: dt.datetime) -> dt.timedelta:
    """A moment as an offset from 0001-01-01 UTC (exact, never overflows, ignores fold rules
    that Python applies when comparing two datetimes of one tzinfo)."""
    offset = moment.utcoffset()
    assert offset is not None
    return moment.replace(tzinfo=None) - dt.datetime(1, 1, 1) - offset


def _json_equal(stored: Any, wanted: Any) -> bool:
    if isinstance(stored, bool) or isinstance(wanted, bool):
        return isinstance(stored, bool) and isinstance(wanted, bool) and stored == wanted
    if stored is None or wanted is None:
        return stored is None and wanted is None
    return type(stored) is type(wanted) and stored == wanted


def _matches(row: Row, flt: ExecutionFilter) -> bool:
    checks = [
        not flt.statuses or row.status in flt.statuses,
        flt.workflow_name is None or row.workflow_name == flt.workflow_name,
        flt.workflow_id_prefix is None or row.id.startswith(flt.workflow_id_prefix),
        flt.executor is None or row.owner == flt.executor,
        flt.parent_id is None or row.parent_id == flt.parent_id,
        flt.created_after is None or _instant(flt.created_after) <= _instant(row.created_at),
        flt.created_before is None or _instant(row.created_at) < _instant(flt.created_before),
        flt.updated_after is None or _instant(flt.updated_after) <= _instant(row.updated_at),
        flt.updated_before is None or _instant(row.updated_at) < _instant(flt.updated_before),
        flt.attributes is None
        or all(
            key in row.attributes and _json_equal(row.attributes[key], value)
            for key, value in flt.attributes.items()
        ),
    ]
    return all(checks)


def _expected_ids(flt: ExecutionFilter) -> set[str]:
    return {r.id for r in ROWS if _matches(r, flt)}


def _expected_order(ds: Dataset, flt: ExecutionFilter, sort: str, direction: str) -> list[str]:
    keys: dict[str, Callable[[Row], tuple[Any, ...]]] = {
        "created": lambda r: (r.created_at, ds.id_rank[r.id]),
        "updated": lambda r: (r.updated_at, ds.id_rank[r.id]),
        "duration": lambda r: (r.duration, ds.id_rank[r.id]),
        "name": lambda r: (ds.name_rank[r.workflow_name], r.created_at, ds.id_rank[r.id]),
    }
    rows = [
        r for r in ROWS if _matches(r, flt) and (sort != "duration" or r.finished_at is not None)
    ]
    rows.sort(key=keys[sort], reverse=direction == "desc")
    return [r.id for r in rows]


def _filter(*names_and_values: Any) -> ExecutionFilter:
    """An ExecutionFilter from alternating field names and values."""
    fields: dict[str, Any] = dict(zip(names_and_values[::2], names_and_values[1::2], strict=True))
    return ExecutionFilter(**fields)


def _one_page_ids(store: Store, flt: ExecutionFilter) -> list[str]:
    page = store.list_executions(flt, limit=MAX_LIMIT)
    assert page.next_cursor is None
    return [item.id for item in page.items]


def _walk(
    store: Store, flt: ExecutionFilter, sort: str, direction: str, limit: int
) -> list[ExecutionSummary]:
    """Every page of a listing, following next_cursor until it is None."""
    seen: list[ExecutionSummary] = []
    cursor: str | None = None
    cursors: set[str] = set()
    for _ in range(len(ROWS) + 2):
        page = store.list_executions(
            flt, sort=sort, direction=direction, limit=limit, cursor=cursor
        )
        assert len(page.items) <= limit
        seen.extend(page.items)
        if page.next_cursor is None:
            return seen
        assert len(page.items) == limit, "only the last page may be short"
        assert page.next_cursor not in cursors, "a cursor came back twice"
        cursors.add(page.next_cursor)
        cursor = page.next_cursor
    pytest.fail(f"the walk did not end after {len(ROWS) + 2} pages")


# -- strategies ---------------------------------------------------------------------------

SAFE_CHARS = st.characters(exclude_characters="\x00", exclude_categories=["Cs"])
SURROGATES = st.characters(codec=None, categories=["Cs"])
long_text = st.tuples(st.text(min_size=1, max_size=4), st.integers(MAX_TEXT - 3, MAX_TEXT + 3)).map(
    lambda t: (t[0] * t[1])[: t[1]]
)


def _mutated(pool: Sequence[str]) -> st.SearchStrategy[str]:
    """Existing values with a character replaced or inserted: wildcards, quotes, escapes."""

    def mutate(args: tuple[str, int, str, bool]) -> str:
        value, at, char, replace = args
        at = min(at, len(value))
        return value[:at] + char + value[at + 1 if replace else at :]

    return st.tuples(
        st.sampled_from(pool),
        st.integers(0, 20),
        st.sampled_from(["%", "_", "\\", "'", "%%", "\\%", "\\_", "*", "?"]),
        st.booleans(),
    ).map(mutate)


def _prefix_of(values: Sequence[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(values).flatmap(lambda v: st.integers(0, len(v)).map(lambda n: v[:n]))


def _texts(existing: Sequence[str]) -> st.SearchStrategy[str]:
    pool = sorted(set(existing))
    return st.one_of(
        st.text(),
        st.sampled_from(pool),
        st.sampled_from(SQL_FRAGMENTS),
        _mutated(pool),
        long_text,
    )


TEXT_VALUES: dict[str, st.SearchStrategy[str]] = {
    "workflow_name": _texts(NAMES),
    "workflow_id_prefix": st.one_of(
        _texts(IDS),
        _prefix_of(IDS),
        _mutated(IDS).flatmap(lambda v: st.integers(0, len(v)).map(lambda n: v[:n])),
    ),
    "executor": _texts(OWNERS),
    "parent_id": _texts([r.parent_id for r in ROWS if r.parent_id is not None]),
}

json_scalars = st.one_of(
    st.sampled_from(ATTR_VALUES),
    st.text(SAFE_CHARS, max_size=6),
    st.integers(),
    st.booleans(),
    st.none(),
)


def _sub_attributes(row: Row) -> st.SearchStrategy[dict[str, Any]]:
    keys = sorted(row.attributes)
    if not keys:
        return st.just({})
    return st.lists(st.sampled_from(keys), unique=True).map(
        lambda ks: {k: row.attributes[k] for k in ks}
    )


attributes_queries = st.one_of(
    st.dictionaries(
        st.one_of(st.sampled_from(ATTR_KEYS), st.text(SAFE_CHARS, max_size=4)),
        json_scalars,
        max_size=3,
    ),
    st.sampled_from(ROWS).flatmap(_sub_attributes),
    st.tuples(
        st.sampled_from(ROWS).flatmap(_sub_attributes), st.sampled_from(ATTR_KEYS), json_scalars
    ).map(lambda t: {**t[0], t[1]: t[2]}),
)


def _fixed_offsets() -> st.SearchStrategy[dt.tzinfo]:
    bound = dt.timedelta(hours=24) - dt.timedelta(microseconds=1)
    return st.timedeltas(min_value=-bound, max_value=bound).map(dt.timezone)


zones = st.one_of(st.just(UTC), _fixed_offsets(), st.timezones())
STORED_MOMENTS = sorted({m for r in ROWS for m in (r.created_at, r.updated_at)})
aware_moments = st.one_of(
    # exactly a stored moment, seen from any zone: the boundaries of the ranges
    st.tuples(st.sampled_from(STORED_MOMENTS), zones).map(lambda t: t[0].astimezone(t[1])),
    st.datetimes(dt.datetime(2022, 12, 25), dt.datetime(2023, 2, 10), timezones=zones),
    st.datetimes(timezones=zones),
)


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """None three times out of four."""
    return st.one_of(st.none(), st.none(), st.none(), strategy)


def _valid_range(draw: st.DrawFn) -> tuple[dt.datetime | None, dt.datetime | None]:
    bounds = draw(_maybe(st.tuples(aware_moments, aware_moments)))
    if bounds is None:
        return None, None
    # fixed offsets, so that Python compares the bounds as instants whatever their zone
    after, before = (
        m.replace(tzinfo=dt.timezone(m.utcoffset() or dt.timedelta(0)))
        for m in sorted(bounds, key=_instant)
    )
    return after, None if _instant(after) == _instant(before) else before


@st.composite
def _filters(draw: st.DrawFn) -> ExecutionFilter:
    """Valid filters, built from stored values so that results are not always empty."""
    created_after, created_before = _valid_range(draw)
    updated_after, updated_before = _valid_range(draw)
    return ExecutionFilter(
        statuses=draw(_maybe(st.lists(st.sampled_from(STATUSES), max_size=3, unique=True))) or (),
        workflow_name=draw(_maybe(st.sampled_from(NAMES))),
        workflow_id_prefix=draw(_maybe(_prefix_of(IDS))),
        executor=draw(_maybe(st.sampled_from(OWNERS))),
        parent_id=draw(_maybe(st.sampled_from(IDS))),
        created_after=created_after,
        created_before=created_before,
        updated_after=updated_after,
        updated_before=updated_before,
        attributes=draw(_maybe(st.sampled_from(ROWS).flatmap(_sub_attributes))),
    )


SETTINGS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FEW = settings(SETTINGS, max_examples=25)
MANY = settings(SETTINGS, max_examples=150)


# -- text filters -------------------------------------------------------------------------


@SETTINGS
@given(
    field_value=st.sampled_from(TEXT_FIELDS).flatmap(
        lambda f: st.tuples(st.just(f), TEXT_VALUES[f])
    )
)
def test_text_filters_match_literally_or_raise_invalid_query(
    ds: Dataset, field_value: tuple[str, str]
) -> None:
    """Any text filter raises InvalidQuery exactly when it has a NUL or is over MAX_TEXT,
    else returns exactly the rows Python matches literally, and changes nothing."""
    name, value = field_value
    flt = _filter(name, value)
    if "\x00" in value or len(value) > MAX_TEXT:
        with pytest.raises(InvalidQuery):
            ds.store.list_executions(flt)
    else:
        ids = _one_page_ids(ds.store, flt)
        assert len(ids) == len(set(ids))
        assert set(ids) == _expected_ids(flt)
    ds.assert_unchanged()


@FEW
@given(
    name=st.sampled_from((*TEXT_FIELDS, "attribute key", "attribute value")),
    value=st.tuples(
        st.text(SAFE_CHARS, max_size=5), SURROGATES, st.text(SAFE_CHARS, max_size=5)
    ).map("".join),
)
def test_unencodable_text_filters_raise_invalid_query_or_match_nothing(
    ds: Dataset, name: str, value: str
) -> None:
    """A filter text with a lone surrogate (no stored value can hold one) raises
    InvalidQuery or matches nothing, never another exception, and changes nothing."""
    if name == "attribute key":
        flt = ExecutionFilter(attributes={value: "red"})
    elif name == "attribute value":
        flt = ExecutionFilter(attributes={"team": value})
    else:
        flt = _filter(name, value)
    try:
        page = ds.store.list_executions(flt)
    except InvalidQuery:
        pass
    else:
        assert page.items == []
    ds.assert_unchanged()


# -- statuses -----------------------------------------------------------------------------


@SETTINGS
@given(
    statuses=st.lists(
        st.one_of(
            st.sampled_from(STATUSES),
            st.sampled_from(["running", "Running", "RUNNING ", " RUNNING", "RUNNING\x00", "", "'"]),
            st.text(max_size=12),
        ),
        max_size=6,
    ),
    as_tuple=st.booleans(),
)
def test_statuses_filter_exactly_and_unknown_ones_are_named(
    ds: Dataset, statuses: list[str], as_tuple: bool
) -> None:
    """Known statuses filter exactly; any unknown one raises InvalidQuery naming it."""
    flt = ExecutionFilter(statuses=tuple(statuses) if as_tuple else statuses)
    unknown = [s for s in statuses if s not in STATUSES]
    if unknown:
        with pytest.raises(InvalidQuery) as caught:
            ds.store.list_executions(flt)
        assert any(repr(s) in str(caught.value) for s in unknown)
    else:
        ids = _one_page_ids(ds.store, flt)
        assert set(ids) == {r.id for r in ROWS if not statuses or r.status in statuses}
        assert len(ids) == len(set(ids))
    ds.assert_unchanged()


# -- attributes ---------------------------------------------------------------------------


@SETTINGS
@given(attributes=attributes_queries)
def test_attributes_containment_matches_python(ds: Dataset, attributes: dict[str, Any]) -> None:
    """Flat attribute filters of str/int/bool/None match exactly the rows that contain every
    key with an equal JSON value (1, true and "1" are different)."""
    flt = ExecutionFilter(attributes=attributes)
    assert set(_one_page_ids(ds.store, flt)) == _expected_ids(flt)
    ds.assert_unchanged()


@FEW
@given(
    attributes=st.one_of(
        st.tuples(st.text(SAFE_CHARS, max_size=3), st.text(SAFE_CHARS, max_size=3)).map(
            lambda t: {"team": t[0] + "\x00" + t[1]}
        ),
        st.tuples(st.text(SAFE_CHARS, max_size=3), json_scalars).map(
            lambda t: {t[0] + "\x00": t[1]}
        ),
        st.sampled_from([float("nan"), float("inf"), float("-inf")]).map(lambda v: {"n": v}),
    )
)
def test_attributes_with_nul_or_non_finite_numbers_raise_invalid_query(
    ds: Dataset, attributes: dict[str, Any]
) -> None:
    """Attributes holding a NUL character or NaN/Infinity (not JSON) raise InvalidQuery."""
    with pytest.raises(InvalidQuery):
        ds.store.list_executions(ExecutionFilter(attributes=attributes))
    ds.assert_unchanged()


# -- time ranges --------------------------------------------------------------------------


@SETTINGS
@given(
    created_after=st.one_of(st.none(), aware_moments),
    created_before=st.one_of(st.none(), aware_moments),
    updated_after=st.one_of(st.none(), aware_moments),
    updated_before=st.one_of(st.none(), aware_moments),
)
def test_time_ranges_match_python_or_raise_invalid_query(
    ds: Dataset,
    created_after: dt.datetime | None,
    created_before: dt.datetime | None,
    updated_after: dt.datetime | None,
    updated_before: dt.datetime | None,
) -> None:
    """Aware bounds select after <= t < before exactly; a range whose after is not before
    its before (as instants) raises InvalidQuery."""
    flt = ExecutionFilter(
        created_after=created_after,
        created_before=created_before,
        updated_after=updated_after,
        updated_before=updated_before,
    )
    empty = any(
        a is not None and b is not None and _instant(a) >= _instant(b)
        for a, b in ((created_after, created_before), (updated_after, updated_before))
    )
    if empty:
        with pytest.raises(InvalidQuery):
            ds.store.list_executions(flt)
    else:
        assert set(_one_page_ids(ds.store, flt)) == _expected_ids(flt)
    ds.assert_unchanged()


# Wall times of the hour that a change back from summer time repeats: fold=0 is the first
# (summer) pass, fold=1 the second.
REPEATED_HOURS = (
    ("America/New_York", dt.datetime(2023, 11, 5, 1)),
    ("Europe/Berlin", dt.datetime(2023, 10, 29, 2)),
    ("Australia/Lord_Howe", dt.datetime(2023, 4, 2, 1, 30)),  # a 30-minute change
)


@st.composite
def _repeated_hour_moment_pairs(draw: st.DrawFn) -> tuple[dt.datetime, dt.datetime]:
    """Two moments, in one zone, inside the hour it repeats when summer time ends."""
    key, start = draw(st.sampled_from(REPEATED_HOURS))
    zone = ZoneInfo(key)
    minutes = 30 if key == "Australia/Lord_Howe" else 60

    def moment() -> dt.datetime:
        wall = start + dt.timedelta(minutes=draw(st.integers(0, minutes - 1)))
        return wall.replace(tzinfo=zone, fold=draw(st.integers(0, 1)))

    return moment(), moment()


@SETTINGS
@given(bounds=_repeated_hour_moment_pairs(), kind=st.sampled_from(["created", "updated"]))
def test_range_emptiness_is_judged_on_instants(
    ds: Dataset, bounds: tuple[dt.datetime, dt.datetime], kind: str
) -> None:
    """A range is refused as empty exactly when its after bound is not before its before
    bound as instants, also for the wall times a change back from summer time repeats."""
    after, before = bounds
    flt = _filter(f"{kind}_after", after, f"{kind}_before", before)
    if _instant(after) >= _instant(before):
        with pytest.raises(InvalidQuery):
            ds.store.list_executions(flt)
    else:
        assert set(_one_page_ids(ds.store, flt)) == _expected_ids(flt)
    ds.assert_unchanged()


class _NoOffset(dt.tzinfo):
    """A tzinfo that knows no offset: datetimes carrying it are naive."""

    def utcoffset(self, _: dt.datetime | None) -> dt.timedelta | None:
        return None

    def dst(self, _: dt.datetime | None) -> dt.timedelta | None:
        return None

    def tzname(self, _: dt.datetime | None) -> str | None:
        return None


@FEW
@given(
    name=st.sampled_from(TIME_FIELDS),
    naive=st.one_of(st.datetimes(), st.datetimes().map(lambda d: d.replace(tzinfo=_NoOffset()))),
)
def test_naive_datetimes_raise_invalid_query(ds: Dataset, name: str, naive: dt.datetime) -> None:
    """A naive datetime in any time bound raises InvalidQuery."""
    with pytest.raises(InvalidQuery):
        ds.store.list_executions(_filter(name, naive))
    ds.assert_unchanged()


# -- pagination ---------------------------------------------------------------------------


@MANY
@given(
    flt=_filters(),
    sort=st.sampled_from(SORTS),
    direction=st.sampled_from(DIRECTIONS),
    limit=st.one_of(st.integers(1, 5), st.integers(1, 50)),
)
def test_walking_pages_yields_each_match_once_in_order(
    ds: Dataset, flt: ExecutionFilter, sort: str, direction: str, limit: int
) -> None:
    """Following next_cursor from the first page visits every matching execution exactly
    once, in the documented order, and ends with next_cursor None."""
    walked = _walk(ds.store, flt, sort, direction, limit)
    assert [item.id for item in walked] == _expected_order(ds, flt, sort, direction)
    for item in walked:
        row = BY_ID[item.id]
        assert (item.workflow_name, item.status, item.owner, item.parent_id) == (
            row.workflow_name,
            row.status,
            row.owner,
            row.parent_id,
        )
        assert item.attributes == row.attributes
        assert (item.created_at, item.updated_at) == (row.created_at, row.updated_at)
        assert (item.finished_at, item.duration) == (row.finished_at, row.duration)
    ds.assert_unchanged()


@FEW
@given(
    names=st.lists(
        st.tuples(st.text(SAFE_CHARS, min_size=1, max_size=3), st.integers(1, MAX_TEXT)).map(
            lambda t: (t[0] * t[1])[:MAX_TEXT]
        ),
        min_size=1,
        max_size=3,
    ),
    direction=st.sampled_from(DIRECTIONS),
)
def test_name_sort_pages_through_long_names(db: str, names: list[str], direction: str) -> None:
    """Name-sort pagination works for every stored name a name filter accepts (up to
    MAX_TEXT characters, any script)."""
    rows = [
        Row(f"r{n}", name, "RUNNING", None, None, {}, BASE + dt.timedelta(seconds=n), BASE, None, 0)
        for n, name in enumerate([*names, *names])
    ]
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE stepstone.executions, stepstone.steps, stepstone.states, "
            "stepstone.checkpoints, stepstone.logs"
        )
        _insert(conn, rows)
        ranks = _ranks(conn, [r.workflow_name for r in rows])
    expected = sorted(rows, key=lambda r: (ranks[r.workflow_name], r.created_at, r.id))
    if direction == "desc":
        expected.reverse()
    with Store(db, max_size=1) as store:
        walked = _walk(store, ExecutionFilter(), "name", direction, 1)
    assert [item.id for item in walked] == [r.id for r in expected]


# -- cursors ------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


@SETTINGS
@given(
    cursor=st.one_of(
        st.text(max_size=200),
        json_values.map(lambda v: _b64(json.dumps(v).encode())),
        st.binary(max_size=200).map(_b64),
        st.integers(4 * MAX_TEXT + 1, 4 * MAX_TEXT + 100).map(lambda n: "A" * n),
    ),
    sort=st.sampled_from(SORTS),
    direction=st.sampled_from(DIRECTIONS),
)
def test_random_cursors_raise_invalid_query(
    ds: Dataset, cursor: str, sort: str, direction: str
) -> None:
    """Random strings, base64 of random bytes or random JSON, and over-long strings raise
    InvalidQuery as cursors, never anything else."""
    with pytest.raises(InvalidQuery):
        ds.store.list_executions(sort=sort, direction=direction, cursor=cursor)
    ds.assert_unchanged()


@FEW
@given(
    depth=st.integers(1, 15_000),
    opener=st.sampled_from([(b"[", b"]"), (b'{"k":', b"}")]),
    sort=st.sampled_from(SORTS),
)
def test_deeply_nested_cursors_raise_invalid_query(
    ds: Dataset, depth: int, opener: tuple[bytes, bytes], sort: str
) -> None:
    """A cursor holding deeply nested JSON (still under the length limit) raises InvalidQuery."""
    start, end = opener
    cursor = _b64(start * depth + b"0" + end * depth)
    if len(cursor) > 4 * MAX_TEXT:
        cursor = cursor[: 4 * MAX_TEXT]
    with pytest.raises(InvalidQuery):
        ds.store.list_executions(sort=sort, cursor=cursor)
    ds.assert_unchanged()


# (st.text would drop the surrogates and most NULs of such an alphabet)
cursor_texts = st.lists(st.one_of(SAFE_CHARS, st.just("\x00"), SURROGATES), max_size=8).map("".join)
unencodable_texts = st.tuples(st.text(SAFE_CHARS, max_size=3), SURROGATES).map("".join)
iso_times = st.one_of(
    st.datetimes(timezones=zones).map(dt.datetime.isoformat),
    st.datetimes(timezones=zones).map(dt.datetime.isoformat),
    st.datetimes().map(dt.datetime.isoformat),
)
key_values = st.one_of(json_values, iso_times, st.integers(), cursor_texts)
SHAPED_KEYS: dict[str, st.SearchStrategy[tuple[Any, ...]]] = {
    "created": st.tuples(iso_times),
    "updated": st.tuples(iso_times),
    "duration": st.tuples(st.integers()),
    "name": st.tuples(st.one_of(cursor_texts, unencodable_texts), iso_times),
}


@st.composite
def _cursor_payloads(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    """A sort order and a cursor payload shaped like the real ones, with arbitrary values."""
    sort = draw(st.sampled_from(SORTS))
    direction = draw(st.sampled_from(DIRECTIONS))
    made_for = draw(
        st.one_of(
            st.just((sort, direction)),
            st.just((sort, direction)),
            st.tuples(st.sampled_from(SORTS), st.sampled_from(DIRECTIONS)),
            st.tuples(json_values, json_values),
        )
    )
    keys = draw(
        st.one_of(SHAPED_KEYS[sort].map(list), st.lists(key_values, max_size=3), json_values)
    )
    payload = {
        "v": draw(st.one_of(st.just(1), json_values)),
        "s": made_for[0],
        "d": made_for[1],
        "k": keys,
        "i": draw(st.one_of(cursor_texts, unencodable_texts, json_values)),
    }
    return sort, direction, payload


@MANY
@given(case=_cursor_payloads())
def test_cursor_payloads_raise_invalid_query_or_list(
    ds: Dataset, case: tuple[str, str, dict[str, Any]]
) -> None:
    """A cursor shaped like the real ones but with arbitrary keys and id either lists a page
    or raises InvalidQuery, never another exception."""
    sort, direction, payload = case
    cursor = _b64(json.dumps(payload).encode())
    try:
        page = ds.store.list_executions(sort=sort, direction=direction, limit=5, cursor=cursor)
    except InvalidQuery:
        pass
    else:
        assert isinstance(page, ExecutionPage)
        assert (payload["s"], payload["d"]) == (sort, direction)
    ds.assert_unchanged()


@FEW
@given(
    first=st.tuples(st.sampled_from(SORTS), st.sampled_from(DIRECTIONS)),
    second=st.tuples(st.sampled_from(SORTS), st.sampled_from(DIRECTIONS)),
    limit=st.integers(1, 50),
)
def test_cursor_from_another_sort_raises_invalid_query(
    ds: Dataset, first: tuple[str, str], second: tuple[str, str], limit: int
) -> None:
    """A real cursor used with another sort or direction raises InvalidQuery."""
    page = ds.store.list_executions(sort=first[0], direction=first[1], limit=limit)
    assert page.next_cursor is not None
    if first == second:
        ds.store.list_executions(sort=second[0], direction=second[1], cursor=page.next_cursor)
    else:
        with pytest.raises(InvalidQuery):
            ds.store.list_executions(sort=second[0], direction=second[1], cursor=page.next_cursor)
    ds.assert_unchanged()


@FEW
@given(cursor=st.one_of(st.integers(), st.binary(), st.lists(st.text(max_size=3)), st.floats()))
def test_non_string_cursors_raise_invalid_query(ds: Dataset, cursor: object) -> None:
    """A cursor that is not a string raises InvalidQuery."""
    with pytest.raises(InvalidQuery):
        ds.store.list_executions(cursor=cursor)  # type: ignore[arg-type]


# -- operator actions ---------------------------------------------------------------------

unknown_ids = st.one_of(
    st.text(SAFE_CHARS, max_size=300),
    st.sampled_from(IDS).map(lambda i: i + " "),
    st.sampled_from(IDS).map(str.swapcase),
    _mutated(IDS),
    _prefix_of(IDS),
    st.sampled_from(SQL_FRAGMENTS),
).filter(lambda i: i not in ID_SET and 0 < len(i) <= 255)


def _operate(store: Store, op: str, wid: str, from_step: int) -> None:
    if op == "cancel":
        store.cancel_execution(wid, "tester")
    elif op == "resume":
        store.resume_execution(wid, "tester")
    else:
        store.fork_execution(wid, from_step, "tester")


@SETTINGS
@given(
    op=st.sampled_from(["cancel", "resume", "fork"]),
    wid=unknown_ids,
    from_step=st.integers(-3, 5),
)
def test_operations_on_unknown_ids_raise_workflow_not_found(
    ops: Dataset, op: str, wid: str, from_step: int
) -> None:
    """Cancel, resume and fork of an id no execution has raise WorkflowNotFound and change
    nothing."""
    with pytest.raises(WorkflowNotFound):
        _operate(ops.store, op, wid, from_step)
    ops.assert_unchanged()


@FEW
@given(
    op=st.sampled_from(["cancel", "resume", "fork"]),
    wid=st.tuples(
        st.text(SAFE_CHARS, max_size=4), st.sampled_from(["\x00", "\ud800", "\udfff"])
    ).map("".join),
)
def test_operations_on_unstorable_ids_raise_usage_errors(ops: Dataset, op: str, wid: str) -> None:
    """Cancel, resume and fork of an id with a NUL or a lone surrogate (which no execution
    can have) raise InvalidWorkflowId (a UsageError), and change nothing."""
    with pytest.raises(UsageError):
        _operate(ops.store, op, wid, 0)
    ops.assert_unchanged()


def _wrong_state_cases() -> st.SearchStrategy[tuple[str, Row, int]]:
    cancel = [r for r in ROWS if r.status in ENDED]
    resume = [r for r in ROWS if r.status not in ("FAILED", "CANCELLED")]
    return st.one_of(
        st.sampled_from(cancel).map(lambda r: ("cancel", r, 0)),
        st.sampled_from(resume).map(lambda r: ("resume", r, 0)),
        st.sampled_from(ROWS).flatmap(
            lambda r: st.one_of(st.integers(max_value=-1), st.integers(min_value=r.steps + 1)).map(
                lambda n: ("fork", r, n)
            )
        ),
    )


@SETTINGS
@given(case=_wrong_state_cases())
def test_operations_in_the_wrong_state_raise_usage_error(
    ops: Dataset, case: tuple[str, Row, int]
) -> None:
    """Cancelling an ended execution, resuming one that is not FAILED or CANCELLED, or
    forking from a step outside 0..recorded raises a UsageError (not WorkflowNotFound) and
    changes nothing."""
    op, row, from_step = case
    with pytest.raises(UsageError) as caught:
        _operate(ops.store, op, row.id, from_step)
    assert not isinstance(caught.value, WorkflowNotFound)
    assert row.id[:20] in str(caught.value) or repr(row.id)[:20] in str(caught.value)
    ops.assert_unchanged()


@FEW
@given(
    wid=st.one_of(st.sampled_from(IDS), unknown_ids),
    from_step=st.one_of(st.booleans(), st.floats(), st.text(max_size=3), st.none()),
)
def test_fork_with_a_non_int_step_raises_invalid_query(
    ops: Dataset, wid: str, from_step: object
) -> None:
    """Forking from a step that is not an int raises InvalidQuery and changes nothing."""
    with pytest.raises(InvalidQuery):
        ops.store.fork_execution(wid, from_step, "tester")  # type: ignore[arg-type]
    ops.assert_unchanged()


@FEW
@given(
    args=st.one_of(
        st.tuples(
            st.one_of(
                st.timedeltas(max_value=dt.timedelta(0)),
                st.integers(),
                st.floats(allow_nan=False),
                st.none(),
                st.text(max_size=3),
            ),
            st.integers(1, 100),
        ),
        st.tuples(
            st.timedeltas(min_value=dt.timedelta(microseconds=1)),
            st.one_of(st.integers(max_value=0), st.integers(min_value=100_001), st.booleans()),
        ),
    )
)
def test_purge_with_invalid_arguments_raises_invalid_query(
    ops: Dataset, args: tuple[object, object]
) -> None:
    """Purge with a non-positive or non-timedelta age, or a batch size outside 1..100000,
    raises InvalidQuery and deletes nothing."""
    older_than, batch_size = args
    with pytest.raises(InvalidQuery):
        ops.store.purge(older_than, "tester", batch_size=batch_size)  # type: ignore[arg-type]
    ops.assert_unchanged()


@FEW
@given(
    ages=st.lists(st.tuples(st.sampled_from(STATUSES), st.integers(0, 100)), max_size=30),
    older_than_hours=st.integers(1, 110),
    batch_size=st.integers(1, 10),
    max_batches=st.one_of(st.none(), st.integers(1, 5)),
)
def test_purge_deletes_exactly_the_old_ended_executions(
    db: str,
    ages: list[tuple[str, int]],
    older_than_hours: int,
    batch_size: int,
    max_batches: int | None,
) -> None:
    """Purge deletes the ended executions that finished more than older_than ago, oldest
    first, at most batch_size * max_batches, with their steps, checkpoints and log, and
    leaves every other row as it was."""
    now = dt.datetime.now(UTC)
    rows = []
    for n, (status, hours) in enumerate(ages):
        finished = now - dt.timedelta(hours=hours, minutes=30)
        rows.append(
            Row(
                f"p{n}",
                "purgeable",
                status,
                None,
                None,
                {},
                finished - dt.timedelta(minutes=1),
                finished,
                finished if status in ENDED else None,
                n % 3,
            )
        )
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE stepstone.executions, stepstone.steps, stepstone.states, "
            "stepstone.checkpoints, stepstone.logs"
        )
        _insert(conn, rows)
        before = {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT e.id, md5(e::text || coalesce((SELECT string_agg(s::text, '|' ORDER BY s.seq) "
                "FROM stepstone.steps s WHERE s.execution_id = e.id), '')) FROM stepstone.executions e"
            )
        }
        with Store(db, max_size=1) as store:
            deleted_count = store.purge(
                dt.timedelta(hours=older_than_hours),
                "tester",
                batch_size=batch_size,
                max_batches=max_batches,
            )
        after = {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT e.id, md5(e::text || coalesce((SELECT string_agg(s::text, '|' ORDER BY s.seq) "
                "FROM stepstone.steps s WHERE s.execution_id = e.id), '')) FROM stepstone.executions e"
            )
        }
        leftovers = conn.execute(
            "SELECT count(*) FROM (SELECT execution_id FROM stepstone.steps UNION ALL "
            "SELECT execution_id FROM stepstone.checkpoints UNION ALL "
            "SELECT execution_id FROM stepstone.logs WHERE execution_id <> '') x "
            "WHERE execution_id <> ALL (%s)",
            (list(after),),
        ).fetchone()
        purge_logs = conn.execute(
            "SELECT count(*) FROM stepstone.logs WHERE execution_id = '' AND event = 'executions_purged'"
        ).fetchone()
    eligible = {
        r.id: r.finished_at
        for r in rows
        if r.finished_at is not None and r.finished_at < now - dt.timedelta(hours=older_than_hours)
    }
    cap = len(eligible) if max_batches is None else min(len(eligible), batch_size * max_batches)
    deleted = set(before) - set(after)
    assert deleted_count == len(deleted) == cap
    assert deleted <= set(eligible)
    assert set(after) <= set(before)
    assert all(after[i] == before[i] for i in after), "a row that was kept changed"
    kept_eligible = set(eligible) - deleted
    if deleted and kept_eligible:
        assert max(eligible[i] for i in deleted) <= min(eligible[i] for i in kept_eligible)
    assert leftovers == (0,)
    assert purge_logs == ((1,) if cap else (0,))


@FEW
@given(op=st.sampled_from(["cancel", "resume", "fork"]), wid=st.sampled_from(["", "x" * 256]))
def test_operations_on_impossible_ids_raise_invalid_workflow_id(
    ops: Dataset, op: str, wid: str
) -> None:
    """An empty or over-long id, which no execution can have, is refused as invalid."""
    with pytest.raises(InvalidWorkflowId):
        _operate(ops.store, op, wid, 0)
    ops.assert_unchanged()
