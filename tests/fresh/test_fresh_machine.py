"""The README's promise on a machine with no PostgreSQL: a fresh virtual environment with
stepstone[embedded] installed, no server reachable (a network namespace with no TCP
listener at all, Debian's socket directory hidden) and no PG* or STEPSTONE_* variables, runs
the quickstart and survives a SIGKILL through the embedded server in ./.stepstone."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from stepstone.persistence.embedded import EmbeddedServer

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).with_name("embedded_app.py")

pytestmark = pytest.mark.slow

_HIDE = (
    "set -e; if [ -d /var/run/postgresql ]; then mount -t tmpfs none /var/run/postgresql; fi; "
    'exec "$@"'
)


def _isolation() -> list[str]:
    """A command prefix that runs its command where no PostgreSQL is reachable: a new
    network namespace (no TCP peer at all) and a mount namespace hiding Debian's socket
    directory. Needs root (unshare); elsewhere the environment alone keeps libpq off."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return []
    prefix = ["unshare", "--net", "--mount", "sh", "-c", _HIDE, "sh"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, check=False)
    return prefix if probe.returncode == 0 else []


def _clean_env(home: Path) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with stepstone[embedded] installed from this checkout."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"{ROOT}[embedded]"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return venv


def _run(
    fresh: Path, args: list[str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_isolation(), *args],
        cwd=cwd,
        env=_clean_env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A project directory; its embedded server is stopped at the end whatever happened."""
    yield tmp_path
    EmbeddedServer(tmp_path / ".stepstone").stop()


def test_nothing_reachable_inside(fresh: Path, workdir: Path) -> None:
    """Inside the isolation, no PostgreSQL answers where libpq would look by default."""
    probe = (
        "import socket, pathlib\n"
        "s = socket.socket()\n"
        "print(s.connect_ex(('127.0.0.1', 5432)) != 0)\n"
        "print(not list(pathlib.Path('/var/run/postgresql').glob('.s.PGSQL.*')))\n"
    )
    done = _run(fresh, [str(fresh / "bin" / "python"), "-c", probe], workdir)
    assert done.stdout.split() == ["True", "True"], done.stderr


def test_quickstart_and_cli(fresh: Path, workdir: Path) -> None:
    """The quickstart runs with nothing configured; the CLI then shows its executions."""
    done = _run(
        fresh, [str(fresh / "bin" / "python"), str(ROOT / "examples/quickstart.py")], workdir
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("result: receipt-") == 3, done.stdout
    listed = _run(
        fresh, [str(fresh / "bin" / "stepstone"), "executions", "list", "--json"], workdir
    )
    assert listed.returncode == 0, listed.stderr
    statuses = [row["status"] for row in json.loads(listed.stdout)["items"]]
    assert statuses == ["SUCCEEDED", "SUCCEEDED"]
    assert not EmbeddedServer(workdir / ".stepstone").running()  # the last process stopped it


def test_sigkill_and_restart(fresh: Path, workdir: Path) -> None:
    """A process SIGKILLed inside a step is resumed by the next one on the same embedded
    server; a second process meanwhile shares the running server; the choice of database
    is logged once, without a password."""
    shutil.copy(APP, workdir / "app.py")
    (workdir / "block").touch()
    python = str(fresh / "bin" / "python")
    proc = subprocess.Popen(
        [*_isolation(), python, "app.py", "start"],
        cwd=workdir,
        env=_clean_env(workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ran = workdir / "ran"
    deadline = time.monotonic() + 120
    while not (ran.exists() and "charge" in ran.read_text()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pgdata = workdir / ".stepstone" / "pgdata"
    postmaster = (pgdata / "postmaster.pid").read_text().split()[0]

    listed = _run(
        fresh, [str(fresh / "bin" / "stepstone"), "executions", "list", "--json"], workdir
    )
    assert listed.returncode == 0, listed.stderr
    assert [(r["id"], r["status"]) for r in json.loads(listed.stdout)["items"]] == [
        ("order-1", "RUNNING")
    ]
    assert (pgdata / "postmaster.pid").read_text().split()[0] == postmaster  # the same server

    proc.send_signal(signal.SIGKILL)
    _, first_log = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    (workdir / "block").unlink()

    resumed = _run(fresh, [python, "app.py", "resume"], workdir)
    assert resumed.returncode == 0, resumed.stderr
    assert "result: reserved order-1, charged order-1" in resumed.stdout
    assert ran.read_text().split() == ["reserve", "charge", "charge"]
    for log in (first_log, resumed.stderr):
        selected = [line for line in log.splitlines() if "database_selected" in line]
        assert len(selected) == 1, log
        assert f"host={workdir / '.stepstone'}" in selected[0]
        assert "embedded server" in selected[0]
        assert "password" not in selected[0]
    assert not EmbeddedServer(workdir / ".stepstone").running()
