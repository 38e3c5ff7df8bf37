"""Decorated functions keep their signatures for type checkers (mypy --strict)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "typing"


def _mypy(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--show-error-codes",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=HERE.parents[1],
    )


def test_realistic_user_code_type_checks_strictly() -> None:
    """The user code of tests/typing/user_code.py passes mypy --strict."""
    result = _mypy(HERE / "user_code.py")
    assert result.returncode == 0, result.stdout


def test_misuse_is_caught_by_the_type_checker() -> None:
    """Every line marked `# E:` in tests/typing/misuse.py gets a mypy error, and no other line."""
    source = (HERE / "misuse.py").read_text().splitlines()
    expected = {n for n, line in enumerate(source, start=1) if "# E:" in line}
    result = _mypy(HERE / "misuse.py")
    flagged = {int(m.group(1)) for m in re.finditer(r"misuse\.py:(\d+): error:", result.stdout)}
    assert flagged == expected, result.stdout
