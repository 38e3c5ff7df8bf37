"""The schema name is checked before anything is created, and every valid name works.

The name is quoted wherever it is used, but the migrations also carry it inside function
bodies (`$$ ... $$`) and statements with placeholders (`%`), so a name holding those used to
break the migration half-way, after the schema itself was created.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import psycopg
import pytest

import stepstone
from stepstone import ConfigurationError, ExecutionFilter, Runtime, Store
from tests.support.runtime import Crash

BAD_NAMES = [
    "$$x",
    "a%b",
    'a"b',
    "a b",
    "a;b",
    "",
    "s" * 64,
    "1abc",
    "nul\x00inside",
    "lone\ud800surrogate",
    "pg_reserved",
    "tenant-7",
    "café",
]


def _schemas(db: str) -> list[str]:
    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT nspname FROM pg_namespace ORDER BY nspname").fetchall()
    return [row[0] for row in rows]


@pytest.mark.parametrize("schema", BAD_NAMES, ids=lambda s: ascii(s)[:20])
def test_bad_schema_names_are_refused_before_anything_is_created(db: str, schema: str) -> None:
    """Store and Runtime refuse a schema name outside [A-Za-z_][A-Za-z0-9_]* (1 to 63
    characters, no pg_ prefix) with a ConfigurationError that names it and states the rule;
    no schema appears in the database."""
    before = _schemas(db)
    for make in (lambda: Store(db, schema=schema), lambda: Runtime(db, schema=schema)):
        with pytest.raises(ConfigurationError) as info:
            make()
        message = str(info.value)
        assert f"schema {schema!r} is not a name stepstone can use" in message
        assert "[A-Za-z_][A-Za-z0-9_]*" in message
        assert "1 to 63" in message
    assert _schemas(db) == before


def test_a_schema_that_is_not_a_string_is_refused(db: str) -> None:
    """A schema given as another type is refused naming the value and its type."""
    with pytest.raises(ConfigurationError, match=re.escape("schema must be a string, got 7 (int)")):
        Store(db, schema=7)  # type: ignore[arg-type]


def _define(rt: Runtime, crash: dict[str, bool]) -> Any:
    @rt.step()
    def reserve(sku: str) -> str:
        return f"reserved {sku}"

    @rt.transaction()
    def record(conn: psycopg.Connection[Any], sku: str) -> None:
        conn.execute("INSERT INTO public.shipments (sku) VALUES (%s)", [sku])

    @rt.step()
    def ship(sku: str) -> str:
        if crash.get("now"):
            raise Crash
        return f"shipped {sku}"

    @rt.workflow()
    def order(sku: str) -> str:
        stepstone.current().state["stage"] = "reserving"
        reserved = reserve(sku)
        record(sku)
        stepstone.current().state["stage"] = "shipping"
        return f"{reserved}, {ship(sku)}"

    return order


def test_a_mixed_case_schema_migrates_runs_and_recovers(db: str) -> None:
    """Tenant_7 keeps its case: the migrations create "Tenant_7" (not tenant_7), and a
    workflow with state and a transaction step runs, is listed, filtered, interrupted and
    resumed there, leaving the default schema untouched."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.shipments (sku text NOT NULL)")
    rt = Runtime(db, schema="Tenant_7", executor_id="tenant-7-worker", connect_timeout=2)
    order = _define(rt, {})
    rt.launch()
    try:
        assert order.with_options(workflow_id="o-1", attributes={"tenant": "Tenant_7"})("a") == (
            "reserved a, shipped a"
        )
        assert rt.get_state("o-1") == {"stage": "shipping"}
        page = rt.list_executions(ExecutionFilter(attributes={"tenant": "Tenant_7"}))
        assert [item.id for item in page.items] == ["o-1"]
        assert rt.health_status().healthy
    finally:
        rt.shutdown()

    crashing = Runtime(db, schema="Tenant_7", executor_id="tenant-7-worker", connect_timeout=2)
    order = _define(crashing, {"now": True})
    crashing.launch()
    with pytest.raises(Crash):
        order.with_options(workflow_id="o-2")("b")
    crashing.shutdown()

    again = Runtime(db, schema="Tenant_7", executor_id="tenant-7-worker", connect_timeout=2)
    _define(again, {})
    again.launch()  # resumes o-2, which its executor id owned
    try:
        assert again.handle("o-2").result(timeout=30) == "reserved b, shipped b"
    finally:
        again.shutdown()

    with psycopg.connect(db) as conn:
        schemas = {row[0] for row in conn.execute("SELECT nspname FROM pg_namespace")}
        assert "Tenant_7" in schemas
        assert "tenant_7" not in schemas
        ids = conn.execute('SELECT id FROM "Tenant_7".executions ORDER BY id').fetchall()
        assert ids == [("o-1",), ("o-2",)]
        assert conn.execute("SELECT count(*) FROM stepstone.executions").fetchone() == (0,)
        shipped = conn.execute("SELECT sku FROM public.shipments ORDER BY sku").fetchall()
        assert shipped == [("a",), ("b",)]


def test_an_underscore_schema_name_is_accepted(db: str) -> None:
    """A name starting with an underscore, 63 characters long, migrates under its own name."""
    schema = "_" + "x" * 62
    with Store(db, schema=schema) as store:
        assert store.health_status().healthy
    assert schema in _schemas(db)


@pytest.mark.parametrize(
    ("schema", "shown"),
    [("$$x", "'$$x'"), ("a%b", "'a%b'"), (b"caf\xe9", "'caf\\udce9'")],
    ids=["dollars", "percent", "undecodable-bytes"],
)
def test_the_command_refuses_a_bad_schema_in_one_line(
    db: str, schema: str | bytes, shown: str
) -> None:
    """`stepstone --schema BAD` (migrate, or any other command) exits 2 with one line on
    stderr naming the value and the rule, and creates no schema. Bytes that are not UTF-8
    reach Python as lone surrogates, which are refused and shown escaped."""
    before = _schemas(db)
    for command in (["migrate"], ["executions", "list"]):
        done = subprocess.run(
            [sys.executable, "-m", "stepstone", "--database-url", db, "--schema", schema, *command],
            capture_output=True,
            check=False,
            timeout=60,
        )
        stderr = done.stderr.decode()
        assert done.returncode == 2, stderr
        assert done.stdout == b""
        assert "Traceback" not in stderr
        assert stderr.count("\n") == 1, stderr
        assert stderr.startswith(f"stepstone: schema {shown} is not a name stepstone can use")
        assert "[A-Za-z_][A-Za-z0-9_]*" in stderr
    assert _schemas(db) == before
