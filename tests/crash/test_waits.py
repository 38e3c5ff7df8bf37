"""Durable waits across real crashes: a sleep outlives its process, and a message is
received exactly once whatever process dies when."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import psycopg

from stepstone.persistence import Store

if TYPE_CHECKING:
    from tests.crash.conftest import Workers


def _row(db: str, workflow_id: str) -> tuple[object, ...] | None:
    with psycopg.connect(db) as conn:
        return conn.execute(
            "SELECT status, owner, output, recoveries FROM stepstone.executions WHERE id = %s",
            [workflow_id],
        ).fetchone()


def test_a_sleep_survives_its_process_and_is_not_restarted(workers: Workers) -> None:
    """A worker killed with SIGKILL while its workflow sleeps leaves it WAITING; a worker
    started after the sleep was due resumes it at once, without sleeping again, and the
    step before the sleep does not run again."""
    deadline = time.monotonic() + 60
    sleeper = workers.start("sleeper", "nap")
    while (_row(workers.db, "nap-7") or ("",))[0] != "WAITING":
        assert time.monotonic() < deadline
        assert sleeper.poll() is None
        time.sleep(0.01)
    sleeper.kill()
    sleeper.communicate(timeout=30)
    time.sleep(2.5)  # past the sleep's end
    started = time.monotonic()
    result = workers.run("waker", "serve", timeout=60)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 5  # not another 2 s sleep on top of a cold start
    assert _row(workers.db, "nap-7") == ("SUCCEEDED", "waker", '"after nap-7"', 0)
    lines = workers.note_lines()
    assert lines.count("before nap-7") == 1
    assert lines.count("after nap-7") == 1


def test_a_message_is_received_once_when_the_receiver_dies_after_receiving_it(
    workers: Workers,
) -> None:
    """The receiver waits for a message; it arrives; the process wakes, receives it and is
    killed with SIGKILL before its next step. Another worker replays the receive from its
    record: the same message, consumed once; a later message stays unread."""
    deadline = time.monotonic() + 60
    receiver = workers.start("receiver", "inbox", "after_recv")
    while (_row(workers.db, "inbox-7") or ("",))[0] != "WAITING":
        assert time.monotonic() < deadline
        assert receiver.poll() is None
        time.sleep(0.01)
    store = Store(workers.db)
    store.open(migrate=False)
    try:
        status, stored = store.send("inbox-7", "go", '"first"')
        assert (status, stored) == ("WAITING", True)
        receiver.communicate(timeout=30)
        assert receiver.returncode == -9  # it killed itself right after the receive
        status, stored = store.send("inbox-7", "go", '"second"')
        assert stored
    finally:
        store.close()
    result = workers.run("second-receiver", "serve", timeout=60)
    assert result.returncode == 0, result.stderr
    assert _row(workers.db, "inbox-7") == ("SUCCEEDED", "second-receiver", '"got first"', 1)
    with psycopg.connect(workers.db) as conn:
        messages = conn.execute(
            "SELECT payload, received_seq FROM stepstone.messages WHERE execution_id = 'inbox-7' "
            "ORDER BY id"
        ).fetchall()
    assert messages == [('"first"', 0), ('"second"', None)]
    assert workers.note_lines().count("got first") == 1
