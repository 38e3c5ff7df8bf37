"""A PgBouncer in transaction pooling mode that a test starts on a free loopback port.

It listens on 127.0.0.1 only, lets the `postgres` user in without a password (trust) and
pools every database of the test server (the host and port of STEPSTONE_TEST_ADMIN_DSN). Its configuration, log and pid file live in a temporary
directory. PgBouncer refuses to run as root: as root, it runs as the `postgres` OS user.
The binary is `pgbouncer` on the PATH or in /usr/sbin (Debian's package; `bash .ci/run`
installs it), or STEPSTONE_PGBOUNCER; without one, the tests using it fail and say so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from tests.support.cluster import _free_port
from tests.support.databases import admin_dsn

if TYPE_CHECKING:
    from collections.abc import Iterator

MISSING = (
    "pgbouncer is not installed: install Debian's package (apt-get install pgbouncer, as "
    "`bash .ci/run` does) or point STEPSTONE_PGBOUNCER at the binary"
)


def binary() -> str | None:
    """The pgbouncer executable, or None if there is none."""
    configured = os.environ.get("STEPSTONE_PGBOUNCER")
    if configured:
        return configured
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")


class PgBouncer:
    """One running PgBouncer; `dsn(...)` is a connection string through it."""

    def __init__(self, executable: str, pool_size: int) -> None:
        server = psycopg.conninfo.conninfo_to_dict(admin_dsn())
        self.root = Path(tempfile.mkdtemp(prefix="stepstone-pgbouncer-"))
        self.port = _free_port()
        (self.root / "userlist.txt").write_text('"postgres" ""\n')
        (self.root / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={server.get('host', '127.0.0.1')} port={server.get('port', 5432)}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.root / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\n"
            "max_client_conn = 500\n"
            f"logfile = {self.root / 'pgbouncer.log'}\n"
            f"pidfile = {self.root / 'pgbouncer.pid'}\n"
        )
        command = [executable, str(self.root / "pgbouncer.ini")]
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            for path in self.root.iterdir():
                shutil.chown(path, "postgres", "postgres")
            command = [executable, "-u", "postgres", str(self.root / "pgbouncer.ini")]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 15
        while True:
            if self._process.poll() is not None:
                _, err = self._process.communicate()
                raise RuntimeError(f"pgbouncer exited at start: {err}{self.log()}")
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def dsn(self, dbname: str, **params: str) -> str:
        """A connection string to `dbname` through this PgBouncer."""
        return psycopg.conninfo.make_conninfo(
            host="127.0.0.1", port=str(self.port), user="postgres", dbname=dbname, **params
        )

    def log(self) -> str:
        path = self.root / "pgbouncer.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()  # SIGTERM: immediate shutdown
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        if self._process.stderr is not None:
            self._process.stderr.close()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def pgbouncer(executable: str, pool_size: int = 20) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(executable, pool_size)
    try:
        yield bouncer
    finally:
        bouncer.stop()
