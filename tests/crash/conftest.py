"""Helpers for crash tests: worker processes and what they leave in the database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]


class Workers:
    """Starts worker processes (tests/crash/worker.py) against one database."""

    def __init__(self, db: str, notes: Path) -> None:
        self.db = db
        self.notes = notes
        self._procs: list[subprocess.Popen[str]] = []

    def start(
        self, executor_id: str, mode: str, kill_at: str = "", module: str = "tests.crash.worker"
    ) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                module,
                self.db,
                executor_id,
                mode,
                str(self.notes),
                kill_at,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._procs.append(proc)
        return proc

    def run(
        self,
        executor_id: str,
        mode: str,
        kill_at: str = "",
        timeout: float = 60,
        module: str = "tests.crash.worker",
    ) -> subprocess.CompletedProcess[str]:
        proc = self.start(executor_id, mode, kill_at, module)
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def note_lines(self) -> list[str]:
        path = self.notes / "notes"
        return path.read_text().splitlines() if path.exists() else []

    def kill_all(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)


@pytest.fixture
def workers(db: str, tmp_path: Path) -> Iterator[Workers]:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE effects (id bigserial PRIMARY KEY, execution_id text NOT NULL, step text NOT NULL)"
        )
    w = Workers(db, tmp_path)
    yield w
    w.kill_all()
