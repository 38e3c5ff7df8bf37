"""examples/asgi_app.py served by uvicorn in a real process, as its docstring says to run it:
on a database given by STEPSTONE_DATABASE_URL and on the embedded default (nothing
configured, ./.stepstone in the working directory). Requests go over HTTP; what the
workflow did is read from the database."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from stepstone.persistence.embedded import EmbeddedServer
from tests.support.runtime import wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]
INSTALL = "pip install -e '.[dev,asgi-example]'"
STEPS = [(0, "record_order", "transaction", 1), (1, "charge", "step", 1), (2, "book_courier", "step", 1)]  # fmt: skip
ORDER = {"sku": "sku-1", "cents": 1250}
RESULT = {"order_id": "o-1", "receipt": "receipt-o-1-1250", "courier": "courier-sku-1-o-1"}


@pytest.fixture(scope="module", autouse=True)
def _example_dependencies() -> None:
    """Starlette and uvicorn are the example's own dependencies (the asgi-example extra)."""
    missing = [name for name in ("starlette", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.fail(f"examples/asgi_app.py needs {' and '.join(missing)}: run {INSTALL}")


class Server:
    """`uvicorn --app-dir examples asgi_app:app` on a free port of 127.0.0.1, its output
    in files."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.stdout = cwd / "server.out"
        self.stderr = cwd / "server.err"
        with self.stdout.open("w") as out, self.stderr.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "examples"),
                 "asgi_app:app", "--host", "127.0.0.1", "--port", str(port)],
                cwd=cwd, env=env, stdout=out, stderr=err,
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while not self._answers():
            assert self.proc.poll() is None, self.stderr.read_text()
            assert time.monotonic() < deadline, self.stderr.read_text()
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            self.request("GET", "/orders/none")
        except urllib.error.URLError:
            return False
        return True

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """The status and decoded JSON body of one request."""
        data = None if body is None else json.dumps(body).encode()
        # An http:// URL built here from 127.0.0.1 and a port.
        req = urllib.request.Request(self.base + path, data=data, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=60) as response:  # noqa: S310
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def stop(self) -> int:
        """SIGTERM, as a process manager stops it; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def _env(**extra: str) -> dict[str, str]:
    """This environment without any database setting; this checkout's stepstone first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "STEPSTONE_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env | extra


@pytest.fixture(params=["database_url", "embedded"])
def served(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Server, str, EmbeddedServer | None]]:
    """The example serving, the connection string of the database it uses, and the
    embedded server it runs on (None when it is given a database)."""
    embedded = EmbeddedServer(tmp_path / ".stepstone")
    if request.param == "database_url":
        dsn = request.getfixturevalue("db")
        env = _env(STEPSTONE_DATABASE_URL=dsn)
    else:
        dsn = embedded.conninfo()
        env = _env()
    server = Server(tmp_path, env)
    try:
        yield server, dsn, (embedded if request.param == "embedded" else None)
    finally:
        server.kill()
        embedded.stop()


def _recorded(dsn: str, workflow_id: str) -> tuple[str, list[tuple[Any, ...]], list[Any]]:
    """The execution's status, its steps (with their times) and the app's `orders` rows."""
    with psycopg.connect(dsn) as conn:
        status = conn.execute(
            "SELECT status FROM stepstone.executions WHERE id = %s", [workflow_id]
        ).fetchone()
        steps = conn.execute(
            "SELECT seq, name, kind, attempts, started_at, finished_at FROM stepstone.steps"
            " WHERE execution_id = %s ORDER BY seq",
            [workflow_id],
        ).fetchall()
        orders = conn.execute("SELECT id, sku, cents FROM orders").fetchall()
    assert status is not None, f"no execution {workflow_id!r}"
    return status[0], steps, orders


def test_an_order_runs_its_workflow_once_and_a_retried_request_replays_it(
    served: tuple[Server, str, EmbeddedServer | None],
) -> None:
    """POST runs the workflow durably (its transaction step writes the app's row, its two
    gathered steps run) and returns its result; the same POST again returns the same
    result without running a step; GET reads status and result; an unknown order is 404.
    Stopped with SIGTERM, the app leaves no embedded server running behind it."""
    server, dsn, embedded = served

    assert server.request("POST", "/orders/o-1", ORDER) == (200, RESULT)
    status, steps, orders = _recorded(dsn, "order-o-1")
    assert status == "SUCCEEDED"
    assert [row[:4] for row in steps] == STEPS
    assert orders == [("o-1", "sku-1", 1250)]

    assert server.request("POST", "/orders/o-1", ORDER) == (200, RESULT)
    assert _recorded(dsn, "order-o-1") == (status, steps, orders)
    assert server.request("GET", "/orders/o-1") == (
        200,
        {"order_id": "o-1", "status": "SUCCEEDED", "result": RESULT},
    )
    assert server.request("GET", "/orders/o-2")[0] == 404

    assert server.stop() == -signal.SIGTERM  # uvicorn raises the signal again once shut down
    assert server.stdout.read_text().count("payment_requested") == 1
    if embedded is not None:
        # uvicorn's re-raised SIGTERM skips exit handlers: the runtime's shutdown left it.
        assert not embedded.running()


def test_sigterm_runs_the_lifespan_shutdown(db: str, tmp_path: Path) -> None:
    """SIGTERM makes uvicorn run the app's lifespan exit: the runtime shuts down and gives
    its executor id back (its heartbeat set to -infinity), then the process ends."""
    server = Server(tmp_path, _env(STEPSTONE_DATABASE_URL=db))
    try:
        assert server.request("POST", "/orders/o-1", ORDER) == (200, RESULT)
        executors = "SELECT isfinite(heartbeat_at) FROM stepstone.executors"
        with psycopg.connect(db) as conn:
            assert conn.execute(executors).fetchall() == [(True,)]
        assert server.stop() == -signal.SIGTERM
        with psycopg.connect(db) as conn:
            assert conn.execute(executors).fetchall() == [(False,)]
        assert "Application shutdown complete." in server.stderr.read_text()
    finally:
        server.kill()


@pytest.mark.slow
def test_a_server_killed_inside_a_workflow_is_finished_by_the_next_one(
    db: str, tmp_path: Path
) -> None:
    """A server SIGKILLed while its workflow's transaction step waits on a lock leaves the
    execution RUNNING with nothing of that step committed; the server started next finishes
    it, the app's row written once, and the order's POST returns its result."""
    env = _env(STEPSTONE_DATABASE_URL=db)
    server = Server(tmp_path, env)
    answers: list[object] = []
    try:
        with psycopg.connect(db) as locker, psycopg.connect(db, autocommit=True) as watcher:
            locker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
            request = threading.Thread(target=_post_into, args=(server, answers))
            request.start()
            blocked = (
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                " AND query LIKE 'INSERT INTO orders%'"
            )
            wait_for(lambda: watcher.execute(blocked).fetchone() == (1,), timeout=60)
            server.kill()
            request.join(timeout=60)
            locker.rollback()
        assert isinstance(answers[0], OSError)  # the connection died with the server
        assert _recorded(db, "order-o-1") == ("RUNNING", [], [])
    finally:
        server.kill()

    server = Server(tmp_path, env)
    try:
        wait_for(lambda: _status_ended(server), timeout=90)  # a lease, a sweep
        assert server.request("POST", "/orders/o-1", ORDER) == (200, RESULT)
        status, steps, orders = _recorded(db, "order-o-1")
        assert (status, [row[:3] for row in steps], orders) == (
            "SUCCEEDED",
            [row[:3] for row in STEPS],
            [("o-1", "sku-1", 1250)],
        )
    finally:
        server.kill()


def _post_into(server: Server, answers: list[object]) -> None:
    try:
        answers.append(server.request("POST", "/orders/o-1", ORDER))
    except OSError as exc:
        answers.append(exc)


def _status_ended(server: Server) -> bool:
    code, body = server.request("GET", "/orders/o-1")
    return code == 200 and body["status"] not in {"RUNNING", "ENQUEUED", "WAITING"}
