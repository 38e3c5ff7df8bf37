"""A real OTLP collector for tests: rotel (a Rust collector shipped in a PyPI wheel),
started on free loopback ports, logging everything it receives to a file."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Collector:
    def __init__(self) -> None:
        import rotel

        agent = Path(rotel.__file__).parent / "rotel-agent"
        self.grpc_port = _free_port()
        self.http_port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="stepstone-rotel-"))
        self.log = self.root / "received.log"
        command = [
            str(agent), "start",
            "--otlp-grpc-endpoint", f"127.0.0.1:{self.grpc_port}",
            "--otlp-http-endpoint", f"127.0.0.1:{self.http_port}",
            "--exporter", "blackhole",
            "--debug-log", "traces", "--debug-log", "metrics", "--debug-log", "logs",
            "--debug-log-verbosity", "detailed",
            "--batch-timeout", "100ms",
        ]  # fmt: skip
        # What it receives is printed on its standard output.
        self._output = self.log.open("wb")
        self._proc = subprocess.Popen(command, stdout=self._output, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        for port in (self.grpc_port, self.http_port):
            while True:
                assert self._proc.poll() is None, (
                    self._proc.stderr.read() if self._proc.stderr else b""
                )
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), timeout=0.2),
                ):
                    break
                assert time.monotonic() < deadline, "the collector did not start"
                time.sleep(0.05)

    def received(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, *needles: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.received()
            if all(n in text for n in needles):
                return text
            missing = [n for n in needles if n not in text]
            assert time.monotonic() < deadline, f"the collector never received {missing}"
            time.sleep(0.1)

    def stop(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)
        if self._proc.stderr:
            self._proc.stderr.close()
        self._output.close()


@contextlib.contextmanager
def collector() -> Iterator[Collector]:
    c = Collector()
    try:
        yield c
    finally:
        c.stop()
