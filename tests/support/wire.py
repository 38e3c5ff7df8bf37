"""A loopback TCP proxy in front of PostgreSQL that counts protocol messages.

A round trip is a wait of the client for the server: every one ends with the server's
ReadyForQuery ('Z') message, so counting those counts round trips. Messages are counted
before they are forwarded, so a count read after a client call returns includes all of it.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections import Counter


class _Parser:
    """Splits a PostgreSQL protocol stream into message types."""

    def __init__(self, untyped_first: bool) -> None:
        self._buffer = b""
        self._untyped = untyped_first  # the client's startup message has no type byte

    def feed(self, data: bytes) -> list[str]:
        self._buffer += data
        types = []
        while True:
            if self._untyped:
                if len(self._buffer) < 4:
                    break
                (length,) = struct.unpack("!I", self._buffer[:4])
                if len(self._buffer) < length:
                    break
                self._buffer = self._buffer[length:]
                self._untyped = False
                types.append("startup")
                continue
            if len(self._buffer) < 5:
                break
            kind = chr(self._buffer[0])
            (length,) = struct.unpack("!I", self._buffer[1:5])
            if len(self._buffer) < 1 + length:
                break
            self._buffer = self._buffer[1 + length :]
            types.append(kind)
        return types


class CountingProxy:
    """Forwards 127.0.0.1:<port> to the server and counts what passes."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._lock = threading.Lock()
        self.from_server: Counter[str] = Counter()
        self.from_client: Counter[str] = Counter()
        self._closed = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def dsn(self, dbname: str) -> str:
        return (
            f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname} "
            "sslmode=disable gssencmode=disable"
        )

    def reset(self) -> None:
        with self._lock:
            self.from_server.clear()
            self.from_client.clear()

    @property
    def round_trips(self) -> int:
        with self._lock:
            return self.from_server["Z"]

    def close(self) -> None:
        self._closed = True
        self._server.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _close(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(
                target=self._pump,
                args=(client, upstream, _Parser(True), self.from_client),
                daemon=True,
            ).start()
            threading.Thread(
                target=self._pump,
                args=(upstream, client, _Parser(False), self.from_server),
                daemon=True,
            ).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, parser: _Parser, counts: Counter[str]
    ) -> None:
        try:
            while data := src.recv(65536):
                kinds = parser.feed(data)
                with self._lock:
                    counts.update(kinds)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
