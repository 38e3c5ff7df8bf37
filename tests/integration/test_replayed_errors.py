"""Recorded step errors, stored in PostgreSQL and replayed: what the workflow sees on replay
is what it saw on the first run, and any error text can be stored."""

from __future__ import annotations

import errno
import http.client
import io
from typing import TYPE_CHECKING, Any
from urllib.error import HTTPError

import pytest

from stepstone import StepError, WorkflowFailed
from tests.support.runtime import Crash

if TYPE_CHECKING:
    from pathlib import Path

    from stepstone import Runtime


def service_unavailable() -> HTTPError:
    headers = http.client.HTTPMessage()
    headers["Retry-After"] = "30"
    return HTTPError(
        "https://payments.example.test/charge",
        503,
        "Service Unavailable",
        headers,
        io.BytesIO(b"try later"),
    )


def test_replayed_step_errors_equal_the_first_runs(rt: Runtime, tmp_path: Path) -> None:
    """After a crash, the replayed errors of an exception group (matched with except*), a
    FileNotFoundError, an HTTPError and an exception of a type the replay cannot find show the
    workflow the same types, messages, fields and notes as on the first run."""

    class LedgerLocked(Exception):  # defined here: the replay cannot find it by its path
        def __init__(self, account: str) -> None:
            super().__init__(f"ledger {account} is locked")
            self.account = account

    crash = {"now": True}
    seen: list[list[Any]] = []

    @rt.step()
    def import_rows() -> None:
        group = ExceptionGroup("2 rows failed", [ValueError("row 3: bad sku"), KeyError("qty")])
        group.add_note("file orders.csv")
        raise group

    @rt.step()
    def read_config() -> str:
        return (tmp_path / "missing.toml").read_text()

    @rt.step()
    def charge() -> None:
        raise service_unavailable()

    @rt.step()
    def post_ledger() -> None:
        error = LedgerLocked("acct-9")
        error.add_note("retry after close")
        raise error

    @rt.step()
    def halt() -> None:
        if crash["now"]:
            raise Crash

    @rt.workflow()
    def settle() -> list[Any]:
        views: list[Any] = []
        try:
            import_rows()
        except* ValueError as values:
            views.append(("values", [repr(e) for e in values.exceptions], values.__notes__))
        except* KeyError as keys:
            views.append(("keys", [repr(e) for e in keys.exceptions]))
        try:
            read_config()
        except FileNotFoundError as exc:
            views.append(("file", exc.errno, exc.strerror, exc.filename, str(exc)))
        try:
            charge()
        except HTTPError as exc:
            views.append(
                ("http", exc.code, exc.reason, exc.url, exc.headers["Retry-After"], str(exc))
            )
        try:
            post_ledger()
        except Exception as exc:
            kind = type(exc)
            views.append(
                ("ledger", kind.__name__, kind.__qualname__, str(exc), exc.__notes__, exc.account)  # type: ignore[attr-defined]
            )
        seen.append(views)
        halt()
        return views

    rt.launch()
    with pytest.raises(Crash):
        settle.with_options(workflow_id="settle-1")()
    crash["now"] = False
    replayed = settle.with_options(workflow_id="settle-1")()

    first, again = seen
    assert again == first
    assert replayed == first
    assert first == [
        ("values", ["ValueError('row 3: bad sku')"], ["file orders.csv"]),
        ("keys", ["KeyError('qty')"]),
        (
            "file",
            errno.ENOENT,
            "No such file or directory",
            str(tmp_path / "missing.toml"),
            f"[Errno 2] No such file or directory: '{tmp_path / 'missing.toml'}'",
        ),
        (
            "http",
            503,
            "Service Unavailable",
            "https://payments.example.test/charge",
            "30",
            "HTTP Error 503: Service Unavailable",
        ),
        (
            "ledger",
            "LedgerLocked",
            LedgerLocked.__qualname__,
            "ledger acct-9 is locked",
            ["retry after close"],
            "acct-9",
        ),
    ]
    assert [s.name for s in rt.store.list_steps("settle-1")] == [
        "import_rows",
        "read_config",
        "charge",
        "post_ledger",
        "halt",
    ]


def test_replayed_stand_in_is_a_step_error_of_the_recorded_name(rt: Runtime) -> None:
    """On replay, an error of a type this process cannot find is a StepError subclass named as
    the recorded type, with its message."""
    crash = {"now": True}

    class Vanished(Exception):
        pass

    @rt.step()
    def boom() -> None:
        raise Vanished("original")

    @rt.step()
    def halt() -> None:
        if crash["now"]:
            raise Crash

    @rt.workflow()
    def flow() -> tuple[str, str, bool]:
        try:
            boom()
        except Exception as exc:
            seen = (type(exc).__name__, str(exc), isinstance(exc, StepError))
        halt()
        return seen

    rt.launch()
    with pytest.raises(Crash):
        flow.with_options(workflow_id="vanished-1")()
    crash["now"] = False
    assert flow.with_options(workflow_id="vanished-1")() == ("Vanished", "original", True)


def test_replayed_http_error_raised_again_fails_the_workflow_with_its_record(rt: Runtime) -> None:
    """An HTTPError replayed from its record and raised out of the workflow is recorded as the
    execution's failure (recording it used to raise KeyError and leave the execution RUNNING);
    the caller's WorkflowFailed has the HTTPError, code included, as its cause."""
    crash = {"now": True}

    @rt.step()
    def charge() -> None:
        raise service_unavailable()

    @rt.workflow()
    def pay() -> None:
        try:
            charge()
        except HTTPError:
            if crash["now"]:
                raise Crash from None  # the process dies after the step's failure committed
            raise

    rt.launch()
    with pytest.raises(Crash):
        pay.with_options(workflow_id="pay-1")()
    crash["now"] = False
    with pytest.raises(WorkflowFailed) as info:
        pay.with_options(workflow_id="pay-1")()

    assert rt.handle("pay-1").status() == "FAILED"
    assert info.value.error_type == "urllib.error.HTTPError"
    assert info.value.error_message == "HTTP Error 503: Service Unavailable"
    cause = info.value.__cause__
    assert isinstance(cause, HTTPError)
    assert (cause.code, cause.reason, cause.headers["Retry-After"]) == (
        503,
        "Service Unavailable",
        "30",
    )
    execution = rt.store.get_execution("pay-1")
    assert execution is not None
    assert execution.error is not None
    assert execution.error["type"] == "urllib.error:HTTPError"
    assert execution.error["http_headers"] == [["Retry-After", "30"]]


def test_step_error_text_postgresql_cannot_store_is_recorded_escaped(rt: Runtime) -> None:
    """A step raising ValueError("bad\\x00byte \\udcff") (a NUL and a lone surrogate, which
    jsonb refuses) is recorded with that text escaped; the workflow's own except runs and the
    execution succeeds, instead of the failure being taken for an outage."""

    @rt.step()
    def parse() -> None:
        error = ValueError("bad\x00byte \udcff")
        error.add_note("in field \x00name")
        raise error

    @rt.workflow()
    def ingest() -> str:
        try:
            parse()
        except ValueError as exc:
            return f"caught {type(exc).__name__}"
        return "not raised"

    rt.launch()
    assert ingest.with_options(workflow_id="ingest-1")() == "caught ValueError"

    assert rt.handle("ingest-1").status() == "SUCCEEDED"
    (step,) = rt.store.list_steps("ingest-1")
    assert step.error is not None
    assert step.error["type"] == "builtins:ValueError"
    assert step.error["message"] == "bad\\x00byte \\udcff"
    assert step.error["notes"] == ["in field \\x00name"]
    assert "ValueError: bad\\x00byte \\udcff" in step.error["traceback"]
    events = [(log.event, log.details) for log in rt.store.list_logs("ingest-1")]
    assert ("step_failed", {"step": "parse", "error": "ValueError: bad\\x00byte \\udcff"}) in events


def test_workflow_failing_with_text_postgresql_cannot_store_ends_failed(rt: Runtime) -> None:
    """A workflow whose error message holds a NUL and a lone surrogate ends FAILED with the
    text escaped in the execution's record, and replays the step's error as a ValueError."""

    @rt.step()
    def parse() -> None:
        raise ValueError("bad\x00byte \udcff")

    @rt.workflow()
    def ingest() -> None:
        parse()

    rt.launch()
    with pytest.raises(WorkflowFailed) as info:
        ingest.with_options(workflow_id="ingest-2")()
    assert rt.handle("ingest-2").status() == "FAILED"
    execution = rt.store.get_execution("ingest-2")
    assert execution is not None
    assert execution.error is not None
    assert execution.error["message"] == "bad\\x00byte \\udcff"
    assert info.value.error_message == "bad\\x00byte \\udcff"
    with pytest.raises(WorkflowFailed) as again:
        rt.handle("ingest-2").result(timeout=5)
    assert type(again.value.__cause__) is ValueError
    assert str(again.value.__cause__) == "bad\\x00byte \\udcff"
