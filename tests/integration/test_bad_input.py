"""Bad input gets a clear error and leaves the database as it was."""

from __future__ import annotations

import math
import re
import traceback
from typing import Any

import pytest

import stepstone
from stepstone import (
    ConfigurationError,
    DatabaseUnreachable,
    DuplicateRegistration,
    ExecutionFilter,
    InvalidWorkflowId,
    Runtime,
    UsageError,
    WorkflowFailed,
)


def _count_executions(rt: Runtime) -> int:
    with rt.store.connection() as conn:
        row = conn.execute("SELECT count(*) FROM stepstone.executions").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize(
    ("workflow_id", "message"),
    [
        ("", "must not be empty"),
        ("x" * 256, "is 256 characters long, over the limit of 255"),
        (42, "must be a string, got 42 (int)"),
        (None, None),  # None means "generate one": allowed
        ("nul\x00byte", "contains a NUL character"),
        ("lone\ud800surrogate", "is not valid Unicode text (it holds a lone surrogate)"),
    ],
)
def test_invalid_workflow_ids_are_refused_before_anything_is_written(
    rt: Runtime, workflow_id: Any, message: str | None
) -> None:
    """Empty, too long, non-string, NUL-bearing and invalid Unicode ids raise InvalidWorkflowId;
    no row."""

    @rt.workflow()
    def flow() -> int:
        return 1

    rt.launch()
    if message is None:
        assert flow.with_options(workflow_id=workflow_id)() == 1
        assert _count_executions(rt) == 1
        return
    pattern = re.escape(message)
    with pytest.raises(InvalidWorkflowId, match=pattern):
        flow.with_options(workflow_id=workflow_id)()
    with pytest.raises(InvalidWorkflowId, match=pattern):
        rt.handle(workflow_id)
    with pytest.raises(InvalidWorkflowId, match=pattern):
        rt.get_state(workflow_id)
    assert _count_executions(rt) == 0


def test_longest_valid_id_is_accepted(rt: Runtime) -> None:
    """255 characters is within the limit."""

    @rt.workflow()
    def flow() -> int:
        return 1

    rt.launch()
    assert flow.with_options(workflow_id="é" * 255)() == 1
    assert rt.handle("é" * 255).status() == "SUCCEEDED"


def _cyclic() -> dict[str, Any]:
    inner: list[Any] = [1]
    inner.append({"back": inner})
    return {"a": inner}


def _deep(depth: int) -> dict[str, Any]:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return {"a": value}


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"a": math.nan}, 'attributes["a"] is nan, which JSON cannot hold'),
        ({"a": math.inf}, 'attributes["a"] is inf, which JSON cannot hold'),
        ({"a": -math.inf}, 'attributes["a"] is -inf, which JSON cannot hold'),
        ({"a": {"b": [1, 2, math.nan]}}, 'attributes["a"]["b"][2] is nan'),
        ({"a": ("x", math.inf)}, 'attributes["a"][1] is inf'),
        ({"a": "x\ud800"}, 'attributes["a"] is not valid Unicode text (it holds a lone surrog'),
        ({"a": ["ok", {"b": "\udfff"}]}, 'attributes["a"][1]["b"] is not valid Unicode text'),
        ({"a": "nul\x00"}, 'attributes["a"] contains a NUL character'),
        ({"a\x00b": 1}, 'the key "a\\u0000b" of attributes contains a NUL character'),
        ({"k\ud800": 1}, 'the key "k\\ud800" of attributes is not valid Unicode text'),
        ({"a": {"x\x00": True}}, 'the key "x\\u0000" of attributes["a"] contains a NUL'),
        ({"租户": {"b": math.nan}}, 'attributes["租户"]["b"] is nan'),
        ({"a": {1: "x"}}, 'attributes["a"] has the key 1 (int), but JSON object keys are strings'),
        ({"a": [{1, 2}]}, 'attributes["a"][0] is of type set, which is not JSON'),
        ({"a": b"raw"}, 'attributes["a"] is of type bytes, which is not JSON'),
        (_cyclic(), 'attributes["a"][1]["back"] contains itself'),
        pytest.param(_deep(100_000), "attributes are nested too deeply", id="too-deep"),
        ({1: "x"}, "attributes must be a dict with string keys, got the key 1 (int)"),
        (["not", "a", "dict"], "attributes must be a dict with string keys, got ['not'"),
    ],
    ids=lambda v: ascii(v)[:30],
)
def test_attributes_postgresql_cannot_store_are_refused_at_with_options(
    rt: Runtime, attributes: Any, message: str
) -> None:
    """NaN, infinities, NUL characters and lone surrogates (in keys or values, at any depth),
    non-JSON values, cycles and non-string keys raise UsageError at with_options, naming the
    key by its path; nothing is written (they used to fail the start statement, reported as
    a database outage)."""

    @rt.workflow()
    def tagged() -> int:
        return 1

    rt.launch()
    with pytest.raises(UsageError, match=re.escape(message)) as info:
        tagged.with_options(workflow_id="tagged-1", attributes=attributes)
    text = str(info.value)
    text.encode()  # the message itself is storable, printable text
    assert "\x00" not in text
    assert _count_executions(rt) == 0


def test_the_refusal_says_what_to_do(rt: Runtime) -> None:
    """Each kind of refusal ends with the remedy."""

    @rt.workflow()
    def tagged() -> int:
        return 1

    remedies = {
        "store it as a string ('nan') or leave the key out": {"a": math.nan},
        "remove it, or store the text encoded": {"a": "\x00"},
        "use a key without it": {"\x00": 1},
        "convert it (to a string, for instance)": {"a": object()},
        "convert it with str()": {"a": {None: 1}},
    }
    for remedy, attributes in remedies.items():
        with pytest.raises(UsageError, match=re.escape(remedy)):
            tagged.with_options(attributes=attributes)


def test_good_attributes_are_stored_as_given_and_filterable(rt: Runtime) -> None:
    """Unicode keys and values, nested lists and dicts, big integers, and text that merely
    looks like an escape (a backslash followed by u0000) are stored as given (tuples as
    lists) and found by containment filters, at the top level and nested. Changing the dict
    after with_options does not change what is stored."""

    @rt.workflow()
    def tagged(n: int) -> int:
        return n

    rt.launch()
    attributes: dict[str, Any] = {
        "租户": "ácmé 🎉",
        "nested": {"list": [1, 2.5, True, None, {"deep": "x"}], "pair": ("a", 1)},
        "big": 2**70,
        "escape-looking": "\\u0000 and \\ud800",
        "empty": {},
    }
    bound = tagged.with_options(workflow_id="good-1", attributes=attributes)
    attributes["租户"] = math.nan  # too late: with_options kept a checked copy
    assert bound(1) == 1
    tagged.with_options(workflow_id="other", attributes={"租户": "other"})(2)
    row = rt.store.get_execution("good-1")
    assert row is not None
    assert row.attributes == {
        "租户": "ácmé 🎉",
        "nested": {"list": [1, 2.5, True, None, {"deep": "x"}], "pair": ["a", 1]},
        "big": 2**70,
        "escape-looking": "\\u0000 and \\ud800",
        "empty": {},
    }
    for wanted in (
        {"租户": "ácmé 🎉"},
        {"nested": {"list": [{"deep": "x"}]}},
        {"big": 2**70},
        {"escape-looking": "\\u0000 and \\ud800"},
    ):
        page = rt.list_executions(ExecutionFilter(attributes=wanted))
        assert [item.id for item in page.items] == ["good-1"], wanted


@pytest.mark.parametrize(
    ("decorator", "kwargs", "message"),
    [
        ("workflow", {"name": 5}, "the workflow name must be a non-empty string, got 5"),
        ("workflow", {"name": ""}, "the workflow name must be a non-empty string, got ''"),
        ("workflow", {"name": "a\x00b"}, "the workflow name 'a\\x00b' contains a NUL character"),
        ("workflow", {"name": "a\ud800"}, "is not valid Unicode text (it holds a lone surrogate)"),
        ("workflow", {"version": "1\x00"}, "the workflow version '1\\x00' contains a NUL"),
        ("step", {"name": "s\x00"}, "the step name 's\\x00' contains a NUL character"),
        ("transaction", {"name": "t\udfff"}, "the transaction step name 't\\udfff' is not valid"),
    ],
)
def test_names_postgresql_cannot_store_are_refused_at_decoration(
    rt: Runtime, decorator: str, kwargs: dict[str, Any], message: str
) -> None:
    """A workflow or step name (or a version) that is not text PostgreSQL can store is refused
    when the function is decorated, naming it: not at launch, not in the middle of a run.
    Nothing is registered: the runtime still launches and records no definition."""
    with pytest.raises(UsageError, match=re.escape(message)):
        getattr(rt, decorator)(**kwargs)
    rt.launch()
    with rt.store.connection() as conn:
        assert conn.execute("SELECT count(*) FROM stepstone.workflows").fetchone() == (0,)
    assert _count_executions(rt) == 0


def test_store_reads_refuse_text_that_is_not_valid_unicode(rt: Runtime) -> None:
    """Store calls given a lone surrogate (which nothing stored can hold) raise a UsageError
    naming the call, not the driver's UnicodeEncodeError."""
    rt.launch()
    calls = {
        "get execution": lambda: rt.store.get_execution("a\ud800"),
        "get status": lambda: rt.store.get_status("a\ud800"),
        "list steps": lambda: rt.store.list_steps("a\ud800"),
        "get state": lambda: rt.store.get_state("a\ud800"),
        "load workflow": lambda: rt.store.load_workflow("w\udfff"),
    }
    for action, call in calls.items():
        with pytest.raises(UsageError, match=f"^{action}: a value given is not valid Unicode"):
            call()
    assert rt.health_status().reachable


def test_workflows_and_steps_registered_twice_under_one_name_are_refused(rt: Runtime) -> None:
    """A second definition under a used name raises and tells how to tell them apart."""

    @rt.workflow()
    def flow() -> None:
        return None

    with pytest.raises(
        DuplicateRegistration, match=r"workflow named 'flow' is already registered.*name="
    ):

        @rt.workflow(name="flow")
        def flow_again() -> None:
            return None

    @rt.step()
    def act() -> None:
        return None

    with pytest.raises(DuplicateRegistration, match=r"step named 'act' is already registered"):

        @rt.transaction(name="act")
        def act_again(conn: Any) -> None:
            return None

    rt.launch()
    assert rt.store.load_workflow("flow") is not None


def test_unreachable_database_at_launch_names_host_and_database_but_not_the_password() -> None:
    """launch() against a closed port raises DatabaseUnreachable with host, port and db."""
    rt = Runtime("postgresql://shop:s3cret-pw@127.0.0.1:1/orders", connect_timeout=2)
    with pytest.raises(DatabaseUnreachable) as info:
        rt.launch()
    message = str(info.value)
    assert "host=127.0.0.1 port=1 dbname=orders user=shop" in message
    assert "s3cret-pw" not in message
    assert "s3cret-pw" not in "".join(traceback.format_exception(info.value))


def test_missing_database_at_launch_is_reported_the_same_way(db: str) -> None:
    """A server that is up but lacks the database names the database."""
    missing = db.replace("dbname=stepstone_test_", "dbname=absent_")
    with pytest.raises(DatabaseUnreachable, match="dbname=absent_"):
        Runtime(missing).launch()


def test_unparsable_dsn_is_a_configuration_error_without_the_password() -> None:
    """A malformed connection string is refused at construction, password not repeated."""
    with pytest.raises(ConfigurationError) as info:
        Runtime("host=x password=hunter2 this-is-not-key-value")
    assert "hunter2" not in str(info.value)


def test_environment_variable_supplies_the_database(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a dsn argument, STEPSTONE_DATABASE_URL is used."""
    monkeypatch.setenv("STEPSTONE_DATABASE_URL", db)
    with Runtime() as rt:
        assert rt.health_status().healthy


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": 0}, "workers must be an int >= 1, got 0"),
        ({"max_async": 0}, "max_async must be an int >= 1, got 0"),
        ({"max_async": True}, "max_async must be an int >= 1, got True"),
        ({"schema": ""}, "schema '' is not a name stepstone can use: a schema name is 1 to 63"),
        ({"schema": "s" * 64}, "schema 's{64}' is not a name stepstone can use"),
        ({"pool_min_size": 5, "pool_max_size": 2}, "min_size=5 max_size=2"),
        ({"executor_id": ""}, "executor_id must be a string of 1 to 255 characters"),
        ({"max_value_size": 0}, "max_value_size must be a positive int, got 0"),
        ({"notify": "yes"}, "notify must be True or False, got 'yes'"),
    ],
)
def test_invalid_settings_are_refused(db: str, kwargs: dict[str, Any], message: str) -> None:
    """Each invalid setting raises ConfigurationError naming it and its value."""
    with pytest.raises(ConfigurationError, match=message):
        Runtime(db, **kwargs)


def test_retry_must_be_a_retry_policy(rt: Runtime) -> None:
    """A retry= that is not a RetryPolicy is refused at decoration time."""
    with pytest.raises(ConfigurationError, match="retry must be a RetryPolicy, got 3"):
        rt.step(retry=3)  # type: ignore[arg-type]


def test_non_string_state_keys_are_refused(rt: Runtime) -> None:
    """State keys are strings: another key type fails the workflow with a clear message."""

    @rt.workflow()
    def keyed() -> None:
        stepstone.current().state[1] = "x"  # type: ignore[index]

    rt.launch()
    with pytest.raises(WorkflowFailed, match=r"state keys must be strings, got 1 \(int\)") as info:
        keyed()
    assert isinstance(info.value.__cause__, UsageError)


def test_transaction_step_inside_a_step_is_refused(rt: Runtime) -> None:
    """A transaction step cannot hide inside a plain step's body."""

    @rt.transaction()
    def inner(conn: Any) -> None:
        return None

    @rt.step()
    def outer() -> None:
        inner()

    @rt.workflow()
    def nested() -> None:
        outer()

    rt.launch()
    with pytest.raises(WorkflowFailed, match="called inside the body of another step"):
        nested()
