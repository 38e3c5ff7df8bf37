"""The `stepstone` command run as a real process against a real PostgreSQL.

Executions are made by a Runtime in the test, which is shut down before the command runs,
so that nothing but the command touches them: `order-ok-1` and `order-ok-2` SUCCEEDED,
`report-acme` SUCCEEDED with attributes, `order-failed` FAILED at its second step and
`order-running` left RUNNING (a BaseException stood for its process dying). For waits and
messages: `nap-1` WAITING in a one-hour sleep, `approval-1` WAITING to receive on topic
"approval" with no timeout (three unread messages on other topics), `approval-2` the same
with a two-hour timeout, and `inbox-1` SUCCEEDED after receiving two messages on "note".
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from typing import Any

import psycopg
import pytest

import stepstone
from stepstone import Runtime, WorkflowFailed
from stepstone.cli import main
from tests.support.cli import run_cli as _cli
from tests.support.runtime import Crash, wait_for

ALL_IDS = {"order-ok-1", "order-ok-2", "report-acme", "order-failed", "order-running"}
NEWEST_FIRST = ["order-running", "order-failed", "report-acme", "order-ok-2", "order-ok-1"]


def _populate(rt: Runtime) -> None:
    behaviour = {"ship": "ok"}

    @rt.step(name="reserve")
    def reserve(sku: str) -> str:
        return f"reserved {sku}"

    @rt.step(name="ship")
    def ship(sku: str) -> str:
        if behaviour["ship"] == "fail":
            raise ValueError(f"no courier for {sku}")
        if behaviour["ship"] == "crash":
            raise Crash
        return f"shipped {sku}"

    @rt.workflow(name="order")
    def order(sku: str) -> str:
        stepstone.current().state["stage"] = "reserving"
        reserve(sku)
        stepstone.current().state["stage"] = "reserved"
        return ship(sku)

    @rt.workflow(name="report")
    def report(n: int) -> int:
        return n * 2

    rt.launch()
    order.with_options(workflow_id="order-ok-1")("a")
    order.with_options(workflow_id="order-ok-2")("b")
    report.with_options(workflow_id="report-acme", attributes={"tenant": "acme", "priority": 3})(21)
    behaviour["ship"] = "fail"
    with pytest.raises(WorkflowFailed):
        order.with_options(workflow_id="order-failed")("c")
    behaviour["ship"] = "crash"
    with pytest.raises(Crash):
        order.with_options(workflow_id="order-running")("d")
    rt.shutdown()  # nothing may claim what the command leaves without an owner


@pytest.fixture
def populated(db: str, rt: Runtime) -> str:
    """The test's database with the five executions described above."""
    _populate(rt)
    return db


def _ok(db: str, *args: str) -> str:
    done = _cli(db, *args)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    return done.stdout


def _refused(done: subprocess.CompletedProcess[str], *fragments: str, status: int = 2) -> None:
    """Exit status 2 (a usage error) with one line on stderr, naming every fragment, and no
    traceback."""
    assert done.returncode == status, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("stepstone: "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    for fragment in fragments:
        assert fragment in done.stderr, done.stderr
    assert done.stdout == ""


def _failed(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit status 1 (a failed operation), otherwise as `_refused`."""
    _refused(done, *fragments, status=1)


def _query(db: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(db, autocommit=True) as conn:
        cursor = conn.execute(query, params)
        return list(cursor.fetchall()) if cursor.description is not None else []


def _execution(db: str, workflow_id: str) -> tuple[Any, ...] | None:
    rows = _query(
        db, "SELECT status, owner, epoch FROM stepstone.executions WHERE id = %s", (workflow_id,)
    )
    return rows[0] if rows else None


def _ids(db: str, *args: str) -> list[str]:
    page = json.loads(_ok(db, "executions", "list", "--json", *args))
    return [item["id"] for item in page["items"]]


def _table_ids(text: str) -> list[str]:
    return [line.split()[0] for line in text.splitlines()[1:] if line and " " in line]


def _snapshot(db: str) -> list[tuple[Any, ...]]:
    return _query(
        db,
        "SELECT id, status, owner, epoch, updated_at, wake_at, "
        "(SELECT count(*) FROM stepstone.steps s WHERE s.execution_id = e.id), "
        "(SELECT count(*) FROM stepstone.logs l WHERE l.execution_id = e.id), "
        "(SELECT count(*) FROM stepstone.messages m WHERE m.execution_id = e.id) "
        "FROM stepstone.executions e ORDER BY id",
    )


# -- executions list -----------------------------------------------------------------------


def test_list_prints_an_aligned_table_newest_first(populated: str) -> None:
    """The default listing is a table of every execution, newest first, with its error."""
    out = _ok(populated, "executions", "list")
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID",
        "WORKFLOW",
        "VERSION",
        "STATUS",
        "CREATED",
        "DURATION",
        "OWNER",
        "ERROR",
    ]
    assert _table_ids(out) == NEWEST_FIRST
    workflow_column = lines[0].index("WORKFLOW")
    assert all(line[workflow_column - 2 : workflow_column] == "  " for line in lines)
    failed = next(line for line in lines if line.startswith("order-failed"))
    assert "FAILED" in failed
    assert "ValueError: no courier for c" in failed
    running = next(line for line in lines if line.startswith("order-running"))
    assert "RUNNING" in running
    assert "test-executor" in running
    assert "next cursor" not in out


def test_list_filters_by_status_workflow_prefix_executor_and_attributes(populated: str) -> None:
    """Each filter option narrows the listing to the executions it names."""
    db = populated
    assert _ids(db, "--status", "failed") == ["order-failed"]
    assert set(_ids(db, "--status", "SUCCEEDED", "--status", "FAILED")) == ALL_IDS - {
        "order-running"
    }
    assert _ids(db, "--workflow", "report") == ["report-acme"]
    assert _ids(db, "--id-prefix", "order-ok") == ["order-ok-2", "order-ok-1"]
    assert set(_ids(db, "--executor", "test-executor")) == ALL_IDS
    assert _ids(db, "--executor", "someone-else") == []
    assert _ids(db, "--parent", "order-ok-1") == []
    assert _ids(db, "--attribute", "tenant=acme") == ["report-acme"]
    assert _ids(db, "--attribute", "tenant=acme", "--attribute", "priority=3") == ["report-acme"]
    assert _ids(db, "--attribute", 'priority="3"') == []  # JSON string "3" is not the number 3
    assert _ids(db, "--attribute", "tenant=other") == []


def test_list_filters_by_time_as_iso_or_as_an_age(populated: str) -> None:
    """--created-*/--updated-* take ISO 8601 with a zone or an age such as 1h or 7d."""
    db = populated
    assert set(_ids(db, "--created-after", "1h")) == ALL_IDS
    assert _ids(db, "--created-before", "1h") == []
    assert _ids(db, "--updated-before", "2020-01-01T00:00:00Z") == []
    assert _ids(db, "--created-after", "2020-01-01T00:00:00+02:00", "--status", "RUNNING") == [
        "order-running"
    ]
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    assert set(_ids(db, "--created-before", future)) == ALL_IDS
    assert _ids(db, "--created-after", future) == []
    assert set(_ids(db, "--updated-after", "30m", "--updated-before", future)) == ALL_IDS


def test_list_json_sorts_by_name_ascending_with_iso_timestamps(populated: str) -> None:
    """--json prints items and next_cursor; --sort name --asc orders by workflow then age."""
    page = json.loads(_ok(populated, "executions", "list", "--json", "--sort", "name", "--asc"))
    assert set(page) == {"items", "next_cursor"}
    assert page["next_cursor"] is None
    assert [i["id"] for i in page["items"]] == [
        "order-ok-1",
        "order-ok-2",
        "order-failed",
        "order-running",
        "report-acme",
    ]
    report = page["items"][-1]
    assert report["attributes"] == {"tenant": "acme", "priority": 3}
    assert report["status"] == "SUCCEEDED"
    assert dt.datetime.fromisoformat(report["created_at"]).utcoffset() is not None
    assert dt.datetime.fromisoformat(report["finished_at"]).utcoffset() is not None
    assert report["duration_seconds"] >= 0
    running = page["items"][3]
    assert running["finished_at"] is None
    assert running["duration_seconds"] is None
    failed = page["items"][2]
    assert (failed["error_type"], failed["error_message"]) == (
        "builtins:ValueError",
        "no courier for c",
    )


def test_list_sorts_by_duration_and_update_time(populated: str) -> None:
    """--sort duration lists only ended executions; --sort updated follows the last change."""
    assert set(_ids(populated, "--sort", "duration")) == ALL_IDS - {"order-running"}
    _query(
        populated,
        "UPDATE stepstone.executions SET updated_at = now() + interval '1 minute' WHERE id = %s",
        ("order-ok-1",),
    )
    assert _ids(populated, "--sort", "updated")[0] == "order-ok-1"
    assert _ids(populated, "--sort", "updated", "--asc")[-1] == "order-ok-1"


@pytest.mark.parametrize(("sort", "asc"), [("created", False), ("name", True), ("updated", True)])
def test_list_pages_through_every_execution_exactly_once(
    populated: str, sort: str, asc: bool
) -> None:
    """Following next_cursor with --limit 2 visits each execution once, then stops."""
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        args = ["--limit", "2", "--sort", sort] + (["--asc"] if asc else [])
        page = json.loads(
            _ok(
                populated,
                "executions",
                "list",
                "--json",
                *args,
                *(["--cursor", cursor] if cursor else []),
            )
        )
        pages += 1
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10
    assert sorted(seen) == sorted(ALL_IDS)
    assert len(seen) == len(ALL_IDS)
    assert pages == 3


def test_list_text_prints_the_next_cursor_to_pass_back(populated: str) -> None:
    """A full text page ends with the next cursor, which continues the listing."""
    first = _ok(populated, "executions", "list", "--limit", "3")
    match = re.search(r"^next cursor: (\S+)", first, re.MULTILINE)
    assert match is not None, first
    assert _table_ids(first.split("\nnext cursor")[0]) == NEWEST_FIRST[:3]
    second = _ok(populated, "executions", "list", "--limit", "3", "--cursor", match.group(1))
    assert _table_ids(second) == NEWEST_FIRST[3:]
    assert "next cursor" not in second


def test_list_with_nothing_to_show_says_so(db: str) -> None:
    """An empty listing prints a plain sentence, and JSON an empty page."""
    assert _ok(db, "executions", "list").strip() == "no executions match"
    assert json.loads(_ok(db, "executions", "list", "--json")) == {
        "items": [],
        "next_cursor": None,
    }


# -- executions show -----------------------------------------------------------------------


def test_show_prints_the_execution_steps_state_checkpoints_and_log(populated: str) -> None:
    """show prints every field, the steps with their errors, the state, checkpoints, log."""
    out = _ok(populated, "executions", "show", "order-failed")
    stored = _query(populated, "SELECT inputs FROM stepstone.executions WHERE id = 'order-failed'")[
        0
    ][0]
    assert out.startswith("execution order-failed\n")
    for expected in (
        "order (version 1)",
        "status:     FAILED",
        "owner:      test-executor",
        f"inputs:     {stored}",
        "error:      ValueError: no courier for c",
        "steps (2)",
        '"reserved c"',
        "error ValueError: no courier for c",
        'stage = "reserved"',
        "checkpoints (",
        "execution_started",
        "execution_failed",
    ):
        assert expected in out, (expected, out)
    steps = out.split("steps (2)\n")[1].splitlines()
    assert steps[0].split()[:4] == ["SEQ", "NAME", "KIND", "ATTEMPTS"]
    assert steps[1].split()[:2] == ["0", "reserve"]
    assert steps[2].split()[:2] == ["1", "ship"]


def test_show_json_embeds_stored_values_and_has_every_part(populated: str) -> None:
    """show --json gives the execution, steps, state, log; stored values as JSON values."""
    shown = json.loads(_ok(populated, "executions", "show", "order-ok-1", "--json"))
    assert set(shown) == {"execution", "steps", "state", "checkpoints", "logs", "mailbox"}
    stored = _query(
        populated, "SELECT inputs, output FROM stepstone.executions WHERE id = 'order-ok-1'"
    )[0]
    execution = shown["execution"]
    assert (execution["inputs"], execution["output"]) == (json.loads(stored[0]), "shipped a")
    assert execution["status"] == "SUCCEEDED"
    assert dt.datetime.fromisoformat(execution["created_at"]).utcoffset() is not None
    assert [(s["seq"], s["name"], s["output"]) for s in shown["steps"]] == [
        (0, "reserve", "reserved a"),
        (1, "ship", "shipped a"),
    ]
    assert shown["state"] == {"stage": "reserved"}
    assert shown["checkpoints"][-1]["state"] == {"stage": "reserved"}
    events = [entry["event"] for entry in shown["logs"]]
    assert events[0] == "execution_started"
    assert events[-1] == "execution_succeeded"


def test_show_of_an_unknown_id_fails(populated: str) -> None:
    """An id no execution has gets exit status 1 and a message naming it."""
    _failed(_cli(populated, "executions", "show", "no-such-id"), "'no-such-id'")


# -- operations ----------------------------------------------------------------------------


def test_cancel_ends_a_running_execution_and_records_who(populated: str) -> None:
    """cancel turns RUNNING into CANCELLED and logs the actor cli:<user>@<host>."""
    out = _ok(populated, "cancel", "order-running")
    assert "cancelled 'order-running' (it was RUNNING)" in out
    assert _execution(populated, "order-running") == ("CANCELLED", "test-executor", 1)
    actors = _query(
        populated,
        "SELECT actor FROM stepstone.logs WHERE execution_id = 'order-running' "
        "AND event = 'execution_cancelled'",
    )
    assert len(actors) == 1
    assert re.fullmatch(r"cli:[^@]+@.+", actors[0][0]), actors


def test_cancel_of_an_ended_execution_is_refused_and_changes_nothing(populated: str) -> None:
    """cancel of a SUCCEEDED execution exits 1 and leaves the database as it was."""
    before = _snapshot(populated)
    _failed(_cli(populated, "cancel", "order-ok-1"), "'order-ok-1'", "SUCCEEDED")
    _failed(_cli(populated, "cancel", "missing"), "'missing'")
    assert _snapshot(populated) == before


def test_resume_makes_a_failed_execution_running_without_an_owner(populated: str) -> None:
    """resume turns FAILED into RUNNING with no owner, drops the failed step, says who runs it."""
    out = _ok(populated, "resume", "order-failed")
    assert "resumed 'order-failed' (it was FAILED)" in out
    assert "RUNNING with no owner" in out
    assert "workflow 'order'" in out
    assert "next sweep" in out
    assert _execution(populated, "order-failed") == ("RUNNING", None, 2)
    steps = _query(populated, "SELECT seq FROM stepstone.steps WHERE execution_id = 'order-failed'")
    assert steps == [(0,)]


def test_resume_of_a_running_execution_is_refused(populated: str) -> None:
    """resume of a RUNNING execution exits 1 and changes nothing."""
    before = _snapshot(populated)
    _failed(_cli(populated, "resume", "order-running"), "'order-running'", "RUNNING")
    assert _snapshot(populated) == before


def test_fork_copies_the_steps_before_the_given_one_under_a_new_id(populated: str) -> None:
    """fork --from-step 1 --new-id makes a RUNNING unowned copy keeping step 0 only."""
    out = _ok(populated, "fork", "order-ok-1", "--from-step", "1", "--new-id", "order-again")
    assert "new execution: order-again" in out
    assert "RUNNING with no owner" in out
    assert _execution(populated, "order-again") == ("RUNNING", None, 1)
    steps = _query(
        populated,
        "SELECT seq, name, output FROM stepstone.steps WHERE execution_id = 'order-again' "
        "ORDER BY seq",
    )
    assert steps == [(0, "reserve", '"reserved a"')]
    assert _execution(populated, "order-ok-1") == ("SUCCEEDED", "test-executor", 1)


def test_fork_without_a_new_id_prints_the_generated_one(populated: str) -> None:
    """fork without --new-id prints the id it generated, which exists."""
    out = _ok(populated, "fork", "order-ok-2", "--from-step", "2")
    match = re.search(r"^new execution: (order-ok-2-fork-[0-9a-f]{8})$", out, re.MULTILINE)
    assert match is not None, out
    assert _execution(populated, match.group(1)) == ("RUNNING", None, 1)
    copied = _query(
        populated, "SELECT count(*) FROM stepstone.steps WHERE execution_id = %s", (match.group(1),)
    )
    assert copied == [(2,)]


def test_fork_past_the_last_step_is_refused(populated: str) -> None:
    """fork --from-step beyond the recorded steps (or of an unknown id, or to a taken id)
    exits 1 and creates nothing."""
    before = _snapshot(populated)
    _failed(
        _cli(populated, "fork", "order-ok-1", "--from-step", "3"), "between 0 and 2", "'order-ok-1'"
    )
    _failed(_cli(populated, "fork", "missing", "--from-step", "0"), "'missing'")
    _failed(
        _cli(populated, "fork", "order-ok-1", "--from-step", "0", "--new-id", "order-ok-2"),
        "'order-ok-2'",
    )
    assert _snapshot(populated) == before


def test_purge_deletes_old_ended_executions_with_their_steps(populated: str) -> None:
    """purge --older-than 30d deletes what ended over 30 days ago, steps and all, and counts."""
    _query(
        populated,
        "UPDATE stepstone.executions SET finished_at = now() - interval '40 days' "
        "WHERE id IN ('order-ok-1', 'order-failed')",
    )
    out = _ok(populated, "purge", "--older-than", "30d")
    assert out.startswith("purged 2 executions")
    remaining = {r[0] for r in _query(populated, "SELECT id FROM stepstone.executions")}
    assert remaining == ALL_IDS - {"order-ok-1", "order-failed"}
    orphans = _query(
        populated,
        "SELECT count(*) FROM stepstone.steps WHERE execution_id IN ('order-ok-1', 'order-failed')",
    )
    assert orphans == [(0,)]
    assert _ok(populated, "purge", "--older-than", "12h").startswith("purged 0 executions")
    _query(
        populated,
        "UPDATE stepstone.executions SET finished_at = now() - interval '2 minutes' "
        "WHERE finished_at IS NOT NULL",
    )
    assert _ok(populated, "purge", "--older-than", "90m").startswith("purged 0 executions")
    assert _ok(populated, "purge", "--older-than", "45s").startswith("purged 2 executions")
    remaining = {r[0] for r in _query(populated, "SELECT id FROM stepstone.executions")}
    assert remaining == {"order-running"}


def test_purge_with_a_short_age_keeps_what_just_ended(populated: str) -> None:
    """purge --older-than 12h deletes nothing that ended minutes ago."""
    before = _snapshot(populated)
    assert _ok(populated, "purge", "--older-than", "12h").startswith("purged 0 executions")
    assert _snapshot(populated) == before


# -- waits and messages --------------------------------------------------------------------


def _populate_waits(rt: Runtime) -> None:
    @rt.workflow(name="nap")
    def nap() -> str:
        stepstone.sleep(3600)
        return "rested"

    @rt.workflow(name="approval")
    def approval() -> Any:
        return stepstone.recv("approval")

    @rt.workflow(name="deadline")
    def deadline() -> Any:
        return stepstone.recv("approval", timeout=7200)

    @rt.workflow(name="inbox")
    def inbox() -> list[Any]:
        return [stepstone.recv("note"), stepstone.recv("note")]

    rt.launch()
    waiting = [
        rt.start(nap.with_options(workflow_id="nap-1")),
        rt.start(approval.with_options(workflow_id="approval-1")),
        rt.start(deadline.with_options(workflow_id="approval-2")),
    ]
    box = rt.start(inbox.with_options(workflow_id="inbox-1"))
    wait_for(lambda: all(h.status() == "WAITING" for h in waiting))
    rt.send("approval-1", "early", topic="other")
    rt.send("approval-1", "later", topic="other")
    rt.send("approval-1", 1)
    rt.send("inbox-1", "first", topic="note")
    rt.send("inbox-1", "second", topic="note")
    assert box.result(timeout=15) == ["first", "second"]
    rt.shutdown()  # nothing wakes what the command makes due


@pytest.fixture
def waits(db: str, rt: Runtime) -> str:
    """The test's database with the waiting executions and messages described above."""
    _populate_waits(rt)
    return db


def _wake_at(db: str, workflow_id: str) -> dt.datetime | None:
    rows = _query(db, "SELECT wake_at FROM stepstone.executions WHERE id = %s", (workflow_id,))
    return rows[0][0]


def _moment(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _line(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


def _messages(db: str, workflow_id: str) -> list[tuple[Any, ...]]:
    return _query(
        db,
        "SELECT topic, payload, idempotency_key, sender, received_seq FROM stepstone.messages "
        "WHERE execution_id = %s ORDER BY id",
        (workflow_id,),
    )


def test_list_status_waiting_shows_what_each_waits_for_and_until_when(waits: str) -> None:
    """list --status WAITING lists the waiting executions with WAITS FOR (sleep, recv and
    its topic) and UNTIL (the due time, or `a message`); --json has wake_at and waiting."""
    out = _ok(waits, "executions", "list", "--status", "WAITING")
    header = out.splitlines()[0]
    assert re.split(r"\s{2,}", header) == [
        "ID",
        "WORKFLOW",
        "VERSION",
        "STATUS",
        "CREATED",
        "DURATION",
        "OWNER",
        "WAITS FOR",
        "UNTIL",
        "ERROR",
    ]
    assert _table_ids(out) == ["approval-2", "approval-1", "nap-1"]
    nap_wake = _wake_at(waits, "nap-1")
    assert nap_wake is not None
    nap = re.split(r"\s{2,}", _line(out, "nap-1"))
    assert nap[3:] == ["WAITING", nap[4], "-", "-", "sleep", _moment(nap_wake), "-"]
    assert re.split(r"\s{2,}", _line(out, "approval-1"))[-3:] == [
        'recv "approval"',
        "a message",
        "-",
    ]
    deadline = _wake_at(waits, "approval-2")
    assert deadline is not None
    assert re.split(r"\s{2,}", _line(out, "approval-2"))[-3:] == [
        'recv "approval"',
        _moment(deadline),
        "-",
    ]
    items = json.loads(_ok(waits, "executions", "list", "--status", "waiting", "--json"))["items"]
    by_id = {item["id"]: item for item in items}
    assert set(by_id) == {"nap-1", "approval-1", "approval-2"}
    assert dt.datetime.fromisoformat(by_id["nap-1"]["wake_at"]) == _wake_at(waits, "nap-1")
    assert by_id["nap-1"]["waiting"]["kind"] == "sleep"
    assert by_id["approval-1"]["wake_at"] is None
    assert by_id["approval-1"]["waiting"]["topic"] == "approval"
    ended = _ok(waits, "executions", "list", "--status", "SUCCEEDED")
    assert "WAITS FOR" not in ended  # the columns come with waiting executions only


def test_show_tells_what_a_sleep_waits_for_and_until_when(waits: str) -> None:
    """show of a sleeping execution says it waits for a sleep of 1h00m at step 0, since when,
    until its wake time (how far off); --json has wake_at, waiting and an empty mailbox."""
    out = _ok(waits, "executions", "show", "nap-1")
    wake_at = _wake_at(waits, "nap-1")
    assert wake_at is not None
    lines = out.splitlines()
    assert lines[2] == "  status:     WAITING"
    assert re.fullmatch(
        r"  waits for:  a sleep of 1h00m, at step 0 \(sleep\), since \S+Z", lines[3]
    ), lines[3]
    assert re.fullmatch(
        rf"  until:      {_moment(wake_at)} \(in (59m[0-5][0-9]s|1h00m)\)", lines[4]
    ), lines[4]
    assert "\nmessages: none\n" in out
    shown = json.loads(_ok(waits, "executions", "show", "nap-1", "--json"))
    execution = shown["execution"]
    assert dt.datetime.fromisoformat(execution["wake_at"]) == wake_at
    assert {k: execution["waiting"][k] for k in ("kind", "seq", "name", "timeout")} == {
        "kind": "sleep",
        "seq": 0,
        "name": "sleep",
        "timeout": 3600,
    }
    assert shown["mailbox"] == {"unread": [], "received": []}


def test_show_tells_what_a_receive_waits_for_with_its_unread_mailbox(waits: str) -> None:
    """show of a receive names its topic and, without a timeout, waits until a message
    arrives; with one, until the timeout; the mailbox counts unread messages per topic with
    the oldest's send time, in text and JSON."""
    out = _ok(waits, "executions", "show", "approval-1")
    assert re.search(
        r'^  waits for:  a message on topic "approval", at step 0 \(recv\), since \S+Z$',
        out,
        re.MULTILINE,
    ), out
    assert "\n  until:      a message arrives (no timeout)\n" in out
    sent = dict(
        _query(
            waits,
            "SELECT topic, min(sent_at) FROM stepstone.messages "
            "WHERE execution_id = 'approval-1' GROUP BY topic",
        )
    )
    unread = out.split("unread messages (3 on 2 topics)\n")[1].splitlines()
    assert unread[0].split() == ["TOPIC", "COUNT", "OLDEST", "SENT"]
    assert unread[1].split() == ['""', "1", _moment(sent[""])]
    assert unread[2].split() == ['"other"', "2", _moment(sent["other"])]
    assert "\nreceived messages: none\n" in out
    shown = json.loads(_ok(waits, "executions", "show", "approval-1", "--json"))
    assert shown["execution"]["wake_at"] is None
    assert shown["execution"]["waiting"]["topic"] == "approval"
    assert shown["execution"]["waiting"]["timeout"] is None
    assert [
        (m["topic"], m["count"], dt.datetime.fromisoformat(m["oldest_sent_at"]))
        for m in shown["mailbox"]["unread"]
    ] == [("", 1, sent[""]), ("other", 2, sent["other"])]
    assert shown["mailbox"]["received"] == []
    timed = _ok(waits, "executions", "show", "approval-2")
    deadline = _wake_at(waits, "approval-2")
    assert deadline is not None
    until = _line(timed, "  until:")
    assert until.startswith(f"  until:      {_moment(deadline)} (in 1h5"), until
    assert until.endswith("when the receive times out unless a message arrives first")


def test_list_and_show_tell_waits_for_other_executions(db: str, rt: Runtime) -> None:
    """A wait for another execution's state key and a wait for its end are listed as
    `state "key" of ID` and `end of ID`, and shown with the key, the target and what makes
    them due."""

    @rt.workflow(name="blocker")
    def blocker() -> Any:
        return stepstone.recv("go")

    @rt.workflow(name="watcher")
    def watcher() -> Any:
        return stepstone.wait_state("blocker-1", "stage")

    @rt.workflow(name="joiner")
    def joiner() -> Any:
        return rt.handle("blocker-1").result()

    rt.launch()
    handles = [
        rt.start(blocker.with_options(workflow_id="blocker-1")),
        rt.start(watcher.with_options(workflow_id="watcher-1")),
        rt.start(joiner.with_options(workflow_id="joiner-1")),
    ]
    wait_for(lambda: all(h.status() == "WAITING" for h in handles))
    rt.shutdown()
    out = _ok(db, "executions", "list", "--status", "WAITING")
    assert re.split(r"\s{2,}", _line(out, "watcher-1"))[-3:] == [
        'state "stage" of blocker-1',
        "the key",
        "-",
    ]
    assert re.split(r"\s{2,}", _line(out, "joiner-1"))[-3:] == ["end of blocker-1", "its end", "-"]
    shown = _ok(db, "executions", "show", "watcher-1")
    assert re.search(
        r"^  waits for:  state key \"stage\" of workflow 'blocker-1', at step 0 \(wait_state\)",
        shown,
        re.MULTILINE,
    ), shown
    assert "\n  until:      the key is committed (no timeout)\n" in shown
    joined = _ok(db, "executions", "show", "joiner-1")
    assert "  waits for:  the end of workflow 'blocker-1', at step 0" in joined
    assert "\n  until:      the other execution ends\n" in joined


def test_show_lists_the_messages_an_execution_received(waits: str) -> None:
    """show lists received messages by the step that received them, with their topic, send
    and receive times and sender; an ended execution says nothing of waiting."""
    out = _ok(waits, "executions", "show", "inbox-1")
    assert "waits for:" not in out
    assert "until:" not in out
    assert "\nunread messages: none\n" in out
    received = out.split("received messages (2)\n")[1].splitlines()
    assert received[0].split() == ["STEP", "TOPIC", "SENT", "RECEIVED", "SENDER"]
    assert [row.split()[:2] + row.split()[-1:] for row in received[1:3]] == [
        ["0", '"note"', "test-executor"],
        ["1", '"note"', "test-executor"],
    ]
    shown = json.loads(_ok(waits, "executions", "show", "inbox-1", "--json"))
    steps = {s["seq"]: s for s in shown["steps"]}
    mailbox = shown["mailbox"]
    assert mailbox["unread"] == []
    assert [(m["seq"], m["topic"], m["sender"]) for m in mailbox["received"]] == [
        (0, "note", "test-executor"),
        (1, "note", "test-executor"),
    ]
    for message in mailbox["received"]:
        assert message["received_at"] == steps[message["seq"]]["finished_at"]
        assert message["sent_at"] <= message["received_at"]
    assert [steps[0]["output"], steps[1]["output"]] == ["first", "second"]


def test_send_wakes_a_receiving_workflow_which_completes_with_the_value(db: str) -> None:
    """send ID MESSAGE --topic T stores the parsed JSON as rt.send would (an object that
    looks like a tagged value stays that object), records the CLI as sender, and a live
    executor wakes the waiting receive, which returns the value."""
    live = Runtime(db, executor_id="live", workers=1, sweep_interval=0.2)
    try:

        @live.workflow(name="approval")
        def approval() -> Any:
            return stepstone.recv("approval")

        live.launch()
        handle = live.start(approval.with_options(workflow_id="approval-9"))
        wait_for(lambda: handle.status() == "WAITING")
        message = '{"ok": true, "__stepstone__": "date", "v": "2020-01-01"}'
        out = _ok(db, "send", "approval-9", message, "--topic", "approval")
        assert out == (
            "stored the message for 'approval-9' on topic \"approval\" (it is WAITING); its "
            "receives on that topic take messages in the order they were sent\n"
        )
        assert handle.result(timeout=15) == {"ok": True, "__stepstone__": "date", "v": "2020-01-01"}
    finally:
        live.shutdown()
    ((topic, payload, key, sender, received),) = _messages(db, "approval-9")
    assert (topic, key, received) == ("approval", None, 0)
    assert json.loads(payload) == {
        "__stepstone__": "dict",
        "v": [["ok", True], ["__stepstone__", "date"], ["v", "2020-01-01"]],
    }
    assert re.fullmatch(r"cli:[^@]+@.+", sender), sender


def test_send_with_an_idempotency_key_stores_one_message_and_makes_the_receive_due(
    waits: str,
) -> None:
    """The same --idempotency-key twice stores one message and says the second was already
    sent; the waiting receive becomes due, which show tells; JSON text of any kind is
    stored as its value serialized."""
    assert _wake_at(waits, "approval-1") is None
    first = _ok(
        waits,
        "send",
        "approval-1",
        '{"ok": true}',
        "--topic",
        "approval",
        "--idempotency-key",
        "mail-7",
    )
    assert first.startswith("stored the message for 'approval-1' on topic \"approval\"")
    again = _ok(
        waits,
        "send",
        "approval-1",
        '{"ok": false}',
        "--topic",
        "approval",
        "--idempotency-key",
        "mail-7",
    )
    assert again == (
        "already sent with that key: 'approval-1' has a message with idempotency key "
        "'mail-7', so nothing was stored\n"
    )
    for text in ('"text"', "42", "null", ' [1.5, {"a": []}] '):
        _ok(waits, "send", "approval-1", text, "--topic", "kinds")
    stored = [(m[0], m[1], m[2]) for m in _messages(waits, "approval-1")[3:]]
    assert stored == [
        ("approval", '{"ok":true}', "mail-7"),
        ("kinds", '"text"', None),
        ("kinds", "42", None),
        ("kinds", "null", None),
        ("kinds", '[1.5,{"a":[]}]', None),
    ]
    assert _wake_at(waits, "approval-1") is not None
    until = _line(_ok(waits, "executions", "show", "approval-1"), "  until:")
    assert "ago), made due by a message: due, so an executor that registers workflow " in until
    assert until.endswith("'approval' wakes it at its next sweep")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["approval-1", "approved"], ["MESSAGE 'approved' is not JSON", """'"approved"'"""]),
        (["approval-1", '{"ok": tru'], ["""MESSAGE '{"ok": tru' is not JSON"""]),
        (["approval-1", "NaN"], ["NaN is not a JSON number"]),
        (["approval-1", "1e999"], ["1e999 is too large"]),
        (["approval-1", "[" * 100_000], ["is nested too deeply"]),
        (["approval-1", '"\udcff"'], ["not valid Unicode"]),
        (["", "1"], ["ID is empty"]),
        (["x" * 256, "1"], ["ID: workflow_id", "over the limit of 255"]),
        (["approval-1", "1", "--topic", "t" * 256], ["--topic", "at most 255 characters"]),
        (["approval-1", "1", "--topic", "a\udcffb"], ["--topic", "not valid Unicode"]),
        (["approval-1", "1", "--idempotency-key", ""], ["--idempotency-key is empty"]),
        (["approval-1", "1", "--idempotency-key", "k\udcff"], ["--idempotency-key", "Unicode"]),
    ],
)
def test_send_refuses_bad_input_and_stores_nothing(
    waits: str, args: list[str], fragments: list[str]
) -> None:
    """A MESSAGE that is not JSON (or not storable), a bad id, topic or key: one line naming
    it, exit status 2, nothing stored or changed."""
    before = _snapshot(waits)
    _refused(_cli(waits, "send", *args), *fragments)
    assert _snapshot(waits) == before


def test_send_to_an_unknown_or_ended_execution_fails(waits: str) -> None:
    """send to an id no execution has, or to one that ended, exits 1; nothing is stored."""
    before = _snapshot(waits)
    _failed(
        _cli(waits, "send", "no-such-id", "1"),
        "no execution has workflow id 'no-such-id'",
        "not sent",
        "stepstone executions list",
    )
    _failed(_cli(waits, "send", "inbox-1", "1"), "'inbox-1' has ended (SUCCEEDED)", "not sent")
    assert _snapshot(waits) == before


def test_send_refuses_a_nul_or_an_oversized_message(
    waits: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A NUL in the topic or key (which no command line can pass, but a caller of main()
    can) and a message over the size limit are refused the same way; nothing is stored."""
    before = _snapshot(waits)
    cases = [
        (["approval-1", "1", "--topic", "a\x00b"], "NUL"),
        (["approval-1", "1", "--idempotency-key", "k\x00"], "NUL"),
        (["approval-1", json.dumps("x" * (1024 * 1024))], "over the limit of 1048576 bytes"),
    ]
    for args, fragment in cases:
        assert main(["--database-url", waits, "send", *args]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("stepstone: ")
        assert captured.err.count("\n") == 1
        assert fragment in captured.err
    assert _snapshot(waits) == before


# -- reports -------------------------------------------------------------------------------


def test_stats_counts_outcomes_per_workflow(populated: str) -> None:
    """stats --json gives per-workflow counts, success rate, percentiles and retries."""
    report = json.loads(_ok(populated, "stats", "--since", "24h", "--json"))
    assert set(report) == {"since", "until", "items"}
    by_name = {item["workflow_name"]: item for item in report["items"]}
    order = by_name["order"]
    assert (order["count"], order["succeeded"], order["failed"], order["unfinished"]) == (
        4,
        2,
        1,
        1,
    )
    assert order["cancelled"] == 0
    assert order["success_rate"] == pytest.approx(2 / 3)
    assert order["retries"] == 0
    assert 0 <= order["p50_seconds"] <= order["p95_seconds"] <= order["p99_seconds"]
    assert by_name["report"]["count"] == 1
    only = json.loads(_ok(populated, "stats", "--workflow", "report", "--json"))
    assert [item["workflow_name"] for item in only["items"]] == ["report"]


def test_stats_text_is_a_table_per_workflow(populated: str) -> None:
    """stats prints the window, then one row per workflow with its success rate."""
    out = _ok(populated, "stats", "--since", "2h")
    lines = out.splitlines()
    assert lines[0].startswith("executions created from ")
    assert lines[1].split() == [
        "WORKFLOW",
        "COUNT",
        "SUCCEEDED",
        "FAILED",
        "CANCELLED",
        "UNFINISHED",
        "SUCCESS",
        "P50",
        "P95",
        "P99",
        "RETRIES",
    ]
    order = lines[2].split()
    assert order[:7] == ["order", "4", "2", "1", "0", "1", "66.7%"]
    assert lines[3].split()[:2] == ["report", "1"]
    until = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    assert _ok(populated, "stats", "--since", "2h", "--until", until).endswith(": none\n")


def test_slowest_steps_lists_the_slowest_first(populated: str) -> None:
    """slowest-steps --json gives the slowest steps first, each with seconds and outcome."""
    report = json.loads(_ok(populated, "slowest-steps", "--since", "24h", "--limit", "3", "--json"))
    items = report["items"]
    assert len(items) == 3
    seconds = [item["seconds"] for item in items]
    assert all(isinstance(s, float) for s in seconds)
    assert seconds == sorted(seconds, reverse=True)
    assert {item["step_name"] for item in items} <= {"reserve", "ship"}
    everything = json.loads(_ok(populated, "slowest-steps", "--json"))["items"]
    assert len(everything) == 7  # 2 + 2 + 2 (one failed) + 1 for the crashed one
    assert [i["failed"] for i in everything].count(True) == 1
    out = _ok(populated, "slowest-steps", "--since", "1h")
    assert out.splitlines()[1].split()[:4] == ["DURATION", "EXECUTION", "WORKFLOW", "SEQ"]
    assert len(out.splitlines()) == 2 + 7


# -- health --------------------------------------------------------------------------------


def test_health_exits_0_when_healthy_and_1_on_an_empty_database(db: str, empty_db: str) -> None:
    """health exits 0 on a migrated database and 1 (with healthy false) on an empty one."""
    out = _ok(db, "health")
    assert out.splitlines()[0] == "healthy: yes"
    report = json.loads(_ok(db, "health", "--json"))
    assert (report["healthy"], report["reasons"], report["warnings"]) == (True, [], [])
    empty = _cli(empty_db, "health", "--json")
    assert empty.returncode == 1, empty.stderr
    status = json.loads(empty.stdout)
    assert status["healthy"] is False
    assert status["schema_version"] is None
    assert len(status["reasons"]) == 1
    assert "no stepstone tables" in status["reasons"][0]
    assert "stepstone migrate" in status["reasons"][0]


def _health_lines(db: str) -> dict[str, list[str]]:
    """`health`'s text as label -> values (a label such as `reason` may repeat)."""
    done = _cli(db, "health")
    lines: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        label, _, value = line.partition(": ")
        lines.setdefault(label, []).append(value)
    return lines


def test_health_prints_plain_values_one_per_line(db: str) -> None:
    """Healthy: `label: value` lines with plain values (yes/no, `1.2 ms`, `13 (expected 13)`,
    counts as numbers), no Python reprs (True, None, {...})."""
    done = _cli(db, "health")
    assert done.returncode == 0, done.stderr
    lines = _health_lines(db)
    assert lines["healthy"] == ["yes"]
    assert lines["reachable"] == ["yes"]
    assert re.fullmatch(r"[0-9]+\.[0-9] ms", lines["latency"][0]), lines
    assert re.fullmatch(r"([0-9]+) \(expected \1\)", lines["schema version"][0]), lines
    for label in ("running", "enqueued", "expired lease", "unclaimable", "code changed"):
        assert lines[label] == ["0"], (label, lines)
    assert "reason" not in lines
    assert "warning" not in lines
    for repr_ in ("True", "False", "None", "{", "'"):
        assert repr_ not in done.stdout, done.stdout


def test_health_says_why_it_is_unhealthy_one_reason_a_line(db: str) -> None:
    """An unclaimable execution and a schema behind or ahead each get a `reason:` line
    saying what to do, and exit 1; an expired lease a live executor can take is a warning
    only; --json has the same in `reasons` and `warnings`."""
    _query(
        db,
        "INSERT INTO stepstone.executors (id, hostname, pid, lease_seconds, heartbeat_at, workflows)"
        " VALUES ('dead', 'h1', 11, 30, now() - interval '1 hour', '[]'),"
        " ('live', 'h2', 12, 30, now(), '[[\"order\", \"1\"]]')",
    )
    _query(
        db,
        "INSERT INTO stepstone.executions (id, workflow_name, workflow_version, status, inputs,"
        " owner) VALUES ('lost-1', 'report', '1', 'RUNNING', '{}', 'dead'),"
        " ('taken-1', 'order', '1', 'RUNNING', '{}', 'dead')",
    )
    lines = _health_lines(db)
    assert lines["healthy"] == ["no"]
    assert lines["unclaimable"] == ["1"]
    assert lines["expired lease"] == ["2"]
    [reason] = lines["reason"]
    assert "1 RUNNING execution without a live owner runs a workflow version no live" in reason
    assert "start an executor that registers it" in reason
    [warning] = lines["warning"]
    assert warning.startswith("1 RUNNING execution has an owner whose lease expired")
    assert _cli(db, "health").returncode == 1
    report = json.loads(_cli(db, "health", "--json").stdout)
    assert report["reasons"] == [reason]
    assert report["warnings"] == [warning]

    _query(db, "DELETE FROM stepstone.executions")
    latest = _query(db, "SELECT max(version) FROM stepstone.schema_migrations")[0][0]
    _query(db, "DELETE FROM stepstone.schema_migrations WHERE version = %s", (latest,))
    behind = _cli(db, "health")
    assert behind.returncode == 1
    assert f"schema version: {latest - 1} (expected {latest})" in behind.stdout
    [reason] = _health_lines(db)["reason"]
    assert f"at version {latest - 1}, behind the version {latest}" in reason
    assert "stepstone migrate" in reason
    _query(
        db,
        "INSERT INTO stepstone.schema_migrations (version, name, checksum) "
        "VALUES (%s, 'later', 'x'), (%s, 'later still', 'y')",
        (latest, latest + 1),
    )
    [reason] = _health_lines(db)["reason"]
    assert f"at version {latest + 1}, ahead of the version {latest}" in reason
    assert "upgrade stepstone" in reason


def test_health_of_an_unreachable_database_says_why_and_exits_1() -> None:
    """No server: `healthy: no`, a reason naming the connection failure, exit 1; --json
    has healthy false and the same reason."""
    unreachable = "postgresql://stepstone@127.0.0.1:1/nowhere?connect_timeout=2"
    done = _cli(unreachable, "health")
    assert done.returncode == 1
    healthy, reason, *rest = done.stdout.splitlines()
    assert healthy == "healthy: no"
    assert reason.startswith("reason: the database cannot be reached: cannot connect to PostgreSQL")
    assert rest == ["reachable: no"]
    report = json.loads(_cli(unreachable, "health", "--json").stdout)
    assert (report["healthy"], report["reachable"]) == (False, False)
    assert report["reasons"][0].startswith("the database cannot be reached")


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (
            ["executions", "list", "--created-after", "yesterday"],
            ["--created-after 'yesterday'", "ISO 8601", "30m"],
        ),
        (
            ["executions", "list", "--updated-before", "2026-11-26T10:00:00"],
            ["'2026-11-26T10:00:00' has no time zone", "+00:00"],
        ),
        (["purge", "--older-than", "30 days"], ["--older-than '30 days'", "30d"]),
        (["purge", "--older-than", "0d"], ["--older-than '0d' is zero"]),
        (["executions", "list", "--sort", "bogus"], ["--sort 'bogus'", "created, updated"]),
        (["executions", "list", "--status", "bogus"], ["--status 'bogus'", "RUNNING"]),
        (["executions", "list", "--attribute", "tenant"], ["--attribute 'tenant'", "KEY=VALUE"]),
        (["executions", "list", "--attribute", "=acme"], ["--attribute '=acme'", "KEY=VALUE"]),
        (["executions", "list", "--limit", "0"], ["--limit 0", "1 to 1000"]),
        (["stats", "--since", "3 hours"], ["--since '3 hours'"]),
        (["slowest-steps", "--since", "1h", "--until", "2h"], ["--since '1h' is not before"]),
        (["executions", "list", "--cursor", "garbage"], ["cursor 'garbage'"]),
        (["fork", "order-ok-1", "--from-step", "0", "--new-id", ""], ["--new-id", "empty"]),
        (
            ["fork", "order-ok-1", "--from-step", "0", "--new-id", "x" * 256],
            ["--new-id", "over the limit of 255"],
        ),
        (
            ["executions", "list", "--created-after", "1h", "--created-before", "2h"],
            ["created range is empty"],
        ),
    ],
)
def test_bad_values_get_one_line_and_exit_2_without_writing(
    populated: str, args: list[str], fragments: list[str]
) -> None:
    """A malformed time, duration, attribute, sort, status, limit or cursor exits 2 with one
    line naming it and what to write; nothing changes."""
    before = _snapshot(populated)
    _refused(_cli(populated, *args), *fragments)
    assert _snapshot(populated) == before


def test_usage_errors_exit_2_and_an_unreachable_database_exits_1(db: str) -> None:
    """Missing subcommands or options are argparse errors (2); no server is a one-line 1."""
    for args in (["executions"], ["fork", "x"], ["purge"], ["executions", "list", "--limit", "x"]):
        done = _cli(db, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert "Traceback" not in done.stderr
        assert "usage:" in done.stderr
    unreachable = "postgresql://stepstone@127.0.0.1:1/nowhere?connect_timeout=2"
    for args in (["executions", "list"], ["cancel", "x"], ["migrate"], ["send", "x", "1"]):
        _failed(_cli(unreachable, *args), "cannot connect to PostgreSQL")
    _refused(_cli("postgresql://a@b@c/d", "executions", "list"), "percent-encode")


def test_commands_on_a_schema_without_tables_say_to_migrate(empty_db: str, db: str) -> None:
    """An unmigrated database or a wrong --schema fails (1) with a hint to migrate."""
    for args in (["executions", "list"], ["cancel", "x"], ["stats"]):
        _failed(_cli(empty_db, *args), "found no stepstone tables", "stepstone migrate")
    _failed(
        _cli(db, "--schema", "elsewhere", "executions", "show", "x"),
        "schema 'elsewhere'",
        "stepstone migrate",
    )


def test_the_installed_command_runs_like_the_module(populated: str) -> None:
    """The `stepstone` script and `python -m stepstone` print the same listing."""
    bindir = sys.executable.rsplit("/", 1)[0]
    script = subprocess.run(
        [f"{bindir}/stepstone", "--database-url", populated, "executions", "list", "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert script.returncode == 0, script.stderr
    assert script.stdout == _ok(populated, "executions", "list", "--json")


# -- global options ------------------------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stepstone", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_global_options_work_after_the_command_as_before_it(populated: str) -> None:
    """--database-url and --schema after the (sub)command mean what they mean before it."""
    before = _ok(populated, "executions", "list", "--json")
    after = _run("executions", "list", "--json", "--database-url", populated)
    assert (after.returncode, after.stderr) == (0, "")
    assert after.stdout == before
    mixed = _run("--schema", "stepstone", "stats", "--database-url", populated, "--json")
    assert (mixed.returncode, mixed.stderr) == (0, "")
    moved = _run("executions", "show", "x", "--database-url", populated, "--schema", "elsewhere")
    assert "schema 'elsewhere'" in moved.stderr
    again = _run(
        "--database-url", populated, "purge", "--older-than", "1d", "--database-url", populated
    )
    assert (again.returncode, again.stderr) == (0, "")


def test_a_global_option_given_twice_with_different_values_is_a_usage_error(db: str) -> None:
    """Two different values for one global option, on either side, exit 2 naming it."""
    other = "postgresql://someone:sekrit@127.0.0.1:1/nowhere"
    for args in (
        ["--database-url", db, "executions", "list", "--database-url", other],
        ["executions", "list", "--database-url", db, "--database-url", other],
        ["--schema", "a", "--schema", "b", "health"],
        ["--schema", "a", "cancel", "x", "--schema", "b"],
    ):
        done = _run(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert "is given twice with different values" in done.stderr
        assert "usage:" in done.stderr
        assert "sekrit" not in done.stderr
        assert done.stdout == ""


# -- --json on operations ------------------------------------------------------------------


def test_operations_print_a_json_object_with_the_ids_they_touched(populated: str) -> None:
    """cancel, resume, fork, purge and migrate --json print one object naming what changed."""
    db = populated
    assert json.loads(_ok(db, "cancel", "order-running", "--json")) == {
        "id": "order-running",
        "previous_status": "RUNNING",
        "status": "CANCELLED",
    }
    assert json.loads(_ok(db, "resume", "order-failed", "--json")) == {
        "id": "order-failed",
        "previous_status": "FAILED",
        "status": "RUNNING",
        "workflow": "order",
    }
    forked = json.loads(_ok(db, "fork", "order-ok-1", "--from-step", "1", "--json"))
    assert forked["source_id"] == "order-ok-1"
    assert forked["from_step"] == 1
    assert (forked["status"], forked["workflow"]) == ("RUNNING", "order")
    assert _execution(db, forked["id"]) == ("RUNNING", None, 1)
    _query(db, "UPDATE stepstone.executions SET finished_at = now() - interval '40 days'")
    purged = json.loads(_ok(db, "purge", "--older-than", "30d", "--json"))
    assert purged == {"purged": 4, "older_than_seconds": 30 * 86400.0}  # all but two RUNNING
    migrated = json.loads(_ok(db, "migrate", "--json"))
    assert migrated["applied"] == []
    assert migrated["schema"] == "stepstone"
    assert "dbname=" in migrated["database"]


def test_send_json_says_whether_the_message_was_stored(waits: str) -> None:
    """send --json prints the id, topic, whether it was stored and the execution's status."""
    args = ("send", "approval-1", "1", "--topic", "other", "--idempotency-key", "k1", "--json")
    first = json.loads(_ok(waits, *args))
    assert first == {
        "id": "approval-1",
        "topic": "other",
        "stored": True,
        "status": "WAITING",
        "idempotency_key": "k1",
    }
    assert json.loads(_ok(waits, *args))["stored"] is False


def test_show_json_keeps_a_stored_value_that_is_not_json_as_a_string(populated: str) -> None:
    """A value a custom serializer stored as non-JSON text is shown as that string."""
    _query(
        populated,
        "UPDATE stepstone.executions SET output = 'pickle:gASV' WHERE id = 'order-ok-1'",
    )
    _query(
        populated,
        "UPDATE stepstone.steps SET output = 'NaN' WHERE execution_id = 'order-ok-1' AND seq = 0",
    )
    shown = json.loads(_ok(populated, "executions", "show", "order-ok-1", "--json"))
    assert shown["execution"]["output"] == "pickle:gASV"
    assert shown["steps"][0]["output"] == "NaN"
    assert shown["steps"][1]["output"] == "shipped a"


def test_no_tables_names_the_database_it_looked_at_without_the_password(empty_db: str) -> None:
    """With no tables, the message names host, port, database and schema (never the
    password) and says to check the URL before migrating."""
    params = psycopg.conninfo.conninfo_to_dict(empty_db)
    url = psycopg.conninfo.make_conninfo(empty_db, password="sekrit-pw")
    done = _run("executions", "list", "--database-url", url)
    _failed(
        done,
        f"host={params['host']} port={params.get('port', '5432')} dbname={params['dbname']}",
        "schema 'stepstone'",
        "check that --database-url",
        "stepstone migrate",
    )
    assert "sekrit" not in done.stderr
    assert done.stderr.index("--database-url") < done.stderr.index("stepstone migrate")


def test_executors_lists_each_with_its_heartbeat_age_and_work(db: str) -> None:
    """`stepstone executors` lists registered executors: a live one (alive, its running
    count), one whose lease expired, one that shut down (stopped, no heartbeat age); --json
    has the same as values."""
    _query(
        db,
        "INSERT INTO stepstone.executors (id, hostname, pid, lease_seconds, heartbeat_at) VALUES "
        "('gone', 'h1', 11, 30, now() - interval '1 hour'), "
        "('stopped', 'h2', 12, 30, '-infinity'), "
        "('live', 'h3', 13, 30, now())",
    )
    _query(
        db,
        "INSERT INTO stepstone.executions (id, workflow_name, workflow_version, status, inputs, "
        "owner) VALUES ('w-1', 'wf', '1', 'RUNNING', '{}', 'live')",
    )
    out = _ok(db, "executors")
    header, *rows = out.splitlines()
    assert re.split(r"\s{2,}", header) == [
        "ID",
        "HOST",
        "PID",
        "STARTED",
        "HEARTBEAT",
        "LEASE",
        "RUNNING",
        "STATE",
    ]
    cells = {re.split(r"\s{2,}", row)[0]: re.split(r"\s{2,}", row) for row in rows}
    assert cells["live"][6:] == ["1", "alive"]
    assert cells["gone"][4].endswith(" ago")
    assert cells["gone"][6:] == ["0", "expired"]
    assert cells["stopped"][4:] == ["-", "30s", "0", "stopped"]
    listed = json.loads(_ok(db, "executors", "--json"))["executors"]
    by_id = {e["id"]: e for e in listed}
    assert (by_id["live"]["state"], by_id["live"]["running"]) == ("alive", 1)
    assert by_id["gone"]["heartbeat_age_seconds"] > 3500
    assert by_id["stopped"]["heartbeat_age_seconds"] is None


# -- errors under --json -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "status", "kind"),
    [
        (["executions", "show", "no-such-id"], 1, "WorkflowNotFound"),
        (["cancel", "no-such-id"], 1, "WorkflowNotFound"),
        (["stats", "--since", "3 hours"], 2, "BadArgument"),
        (["fork", "order-ok-1", "--from-step", "0", "--new-id", ""], 2, "BadArgument"),
        (["executions", "list", "--limit", "x"], 2, "ArgumentError"),
    ],
)
def test_errors_under_json_are_one_json_object_on_stderr_with_the_same_status(
    populated: str, args: list[str], status: int, kind: str
) -> None:
    """With --json, a failed command prints {"error": {type, message, exit_status}} on
    stderr, nothing on stdout, and exits as it does without --json."""
    plain = _cli(populated, *args)
    done = _cli(populated, *args, "--json")
    assert (plain.returncode, done.returncode) == (status, status)
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    error = json.loads(done.stderr)["error"]
    assert error["type"] == kind
    assert error["exit_status"] == status
    assert error["message"]
    assert error["message"] in plain.stderr  # the same words as the line of text


def test_an_unreachable_database_under_json_is_a_json_error_exiting_1() -> None:
    """With --json, no server is {"error": {"type": "DatabaseUnreachable", ...}} on stderr
    and exit status 1, for reads and operations alike."""
    unreachable = "postgresql://stepstone@127.0.0.1:1/nowhere?connect_timeout=2"
    for args in (["executions", "list"], ["cancel", "x"], ["executors"]):
        done = _cli(unreachable, *args, "--json")
        assert done.returncode == 1, done.stderr
        assert done.stdout == ""
        error = json.loads(done.stderr)["error"]
        assert error == {
            "type": "DatabaseUnreachable",
            "message": error["message"],
            "exit_status": 1,
        }
        assert "cannot connect to PostgreSQL" in error["message"]
