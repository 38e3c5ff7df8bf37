"""The embedded PostgreSQL of a directory, used when no database is configured: started by
the first process, shared by the others, stopped by the last; private sockets only."""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import TYPE_CHECKING

import psycopg
import pytest

from stepstone import Client, Runtime
from stepstone.errors import ConfigurationError
from stepstone.persistence import embedded

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

LOCATION_VARS = ("STEPSTONE_DATABASE_URL", "PGHOST", "PGDATABASE", "PGSERVICE", "PGPORT", "PGUSER")

ATTACH_AND_EXIT = (
    "import sys\n"
    "from stepstone.persistence.embedded import EmbeddedServer\n"
    "EmbeddedServer(sys.argv[1]).attach()\n"
)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory with no database configured; its server is stopped at the end."""
    for name in LOCATION_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    embedded.server_for(tmp_path / ".stepstone").detach()
    embedded.EmbeddedServer(tmp_path / ".stepstone").stop()


def test_runtime_without_configuration_runs_on_the_embedded_server(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Runtime() with nothing configured runs its workflows on ./.stepstone's server, and
    logs once where the database is (source, socket, database, schema; no password)."""
    caplog.set_level(logging.INFO, logger="stepstone")
    with Runtime() as rt:

        @rt.workflow()
        def hello(name: str) -> str:
            return f"hello {name}"

        rt.launch()
        assert hello.with_options(workflow_id="e-1")("there") == "hello there"
        assert rt.store.conninfo.startswith(f"host={project / '.stepstone'} ")
    selected = [r for r in caplog.records if getattr(r, "event", None) == "database_selected"]
    assert len(selected) == 1
    fields = selected[0].fields  # type: ignore[attr-defined]
    assert fields["source"] == f"the embedded server in {project / '.stepstone'}"
    assert fields["host"] == str(project / ".stepstone")
    assert (fields["dbname"], fields["schema"]) == ("postgres", "stepstone")
    assert "password" not in selected[0].getMessage()
    assert (project / ".stepstone" / ".gitignore").read_text().endswith("*\n")


def test_data_persists_across_a_stop(project: Path) -> None:
    """What one process committed is there after the server stopped and started again."""
    server = embedded.EmbeddedServer(project / ".stepstone")
    with psycopg.connect(server.attach(), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
    server.detach()
    assert not server.running()
    with psycopg.connect(server.attach(), autocommit=True) as conn:
        assert conn.execute("SELECT n FROM kept").fetchone() == (7,)
    server.detach()


def test_the_last_process_to_leave_stops_the_server(project: Path) -> None:
    """A second process attaching and leaving does not stop the server this process still
    uses; a client that died without leaving does not keep it up; the last one stops it."""
    directory = project / ".stepstone"
    server = embedded.EmbeddedServer(directory)
    conninfo = server.attach()
    pid = (directory / "pgdata" / "postmaster.pid").read_text().split()[0]
    other = subprocess.run(
        [sys.executable, "-c", ATTACH_AND_EXIT, str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert other.returncode == 0, other.stderr
    assert server.running()
    assert (directory / "pgdata" / "postmaster.pid").read_text().split()[0] == pid
    with psycopg.connect(conninfo) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (directory / "clients" / str(dead.pid)).touch()  # a client that died without leaving
    server.detach()
    assert not server.running()
    assert not list((directory / "clients").iterdir())


def test_a_long_directory_gets_its_socket_in_a_private_temporary_directory(
    project: Path,
) -> None:
    """A directory whose socket path would be too long puts the socket in a short directory
    under the temporary directory, open to its owner only."""
    deep = project / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    server = embedded.EmbeddedServer(deep / ".stepstone")
    sockets = server.socket_dir()
    assert sockets != server.directory
    try:
        with psycopg.connect(server.attach()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert sockets.stat().st_mode & 0o077 == 0
    finally:
        server.detach()


def test_a_directory_with_a_comma_and_a_quote_works(project: Path) -> None:
    """A project path holding a comma (a list separator to PostgreSQL) and a quote still
    gets a server: its socket goes to a private temporary directory."""
    odd = project / "a,b 'c'"
    odd.mkdir()
    server = embedded.EmbeddedServer(odd / ".stepstone")
    assert server.socket_dir() != server.directory
    try:
        with psycopg.connect(server.attach()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.detach()


def test_a_socket_directory_someone_else_made_is_refused(project: Path) -> None:
    """The short socket directory has a predictable name: one that exists open to others is
    refused (whoever controls it could stand in for the server), and named in the error."""
    deep = project / ("f" * 60) / ("g" * 60)
    deep.mkdir(parents=True)
    server = embedded.EmbeddedServer(deep / ".stepstone")
    sockets = server.socket_dir()
    sockets.mkdir()
    sockets.chmod(0o777)
    try:
        with pytest.raises(ConfigurationError, match=str(sockets)):
            server.attach()
        assert not server.running()
    finally:
        sockets.rmdir()


def test_the_last_store_of_a_process_to_close_stops_the_server(project: Path) -> None:
    """Each Store on the embedded server is one user of it: the server runs while one of
    the process's stores is open, stops when the last one closes (a process ended by a
    signal it re-raises never runs its exit handlers: shutting the runtime down is what
    stops it), and starts again when a store opens again."""
    server = embedded.server_for(project / ".stepstone")
    with Runtime() as rt:
        rt.launch()
        client = Client()
        client.open()
        rt.shutdown()
        assert server.running()  # the client still uses it
        client.close()
        assert not server.running()
        rt.store.open(migrate=False)  # attaches again, starting it
        assert server.running()
        assert rt.store.health_status().reachable
    assert not server.running()
