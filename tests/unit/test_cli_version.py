"""`stepstone --version`."""

from __future__ import annotations

import subprocess
import sys

from stepstone import __version__


def test_version_prints_the_package_version_and_exits_0() -> None:
    """`stepstone --version` prints the package's version and exits 0, with no database."""
    done = subprocess.run(
        [sys.executable, "-m", "stepstone", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, f"stepstone {__version__}\n", "")
