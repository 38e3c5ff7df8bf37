"""The `stepstone` command run as a user runs it: a subprocess of this interpreter."""

from __future__ import annotations

import subprocess
import sys


def run_cli(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m stepstone --database-url DB ARGS...`, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "stepstone", "--database-url", db, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
