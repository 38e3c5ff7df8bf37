"""Decorated functions keep their signatures for type checkers (mypy --strict)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1] / "typing"
ROOT = HERE.parents[1]


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


def test_realistic_async_user_code_type_checks_strictly() -> None:
    """The async user code of tests/typing/async_user_code.py passes mypy --strict: awaited
    workflows and steps have their functions' result types, transaction steps drop the
    injected AsyncConnection."""
    result = _mypy(HERE / "async_user_code.py")
    assert result.returncode == 0, result.stdout


def test_misuse_is_caught_by_the_type_checker() -> None:
    """Every line marked `# E:` in tests/typing/misuse.py gets a mypy error, and no other line."""
    source = (HERE / "misuse.py").read_text().splitlines()
    expected = {n for n, line in enumerate(source, start=1) if "# E:" in line}
    result = _mypy(HERE / "misuse.py")
    flagged = {int(m.group(1)) for m in re.finditer(r"misuse\.py:(\d+): error:", result.stdout)}
    assert flagged == expected, result.stdout


@pytest.mark.slow
def test_an_editable_install_is_found_by_mypy_without_mypypath(tmp_path: Path) -> None:
    """After the README's `pip install -e`, mypy --strict run outside the checkout with no
    MYPYPATH finds stepstone's annotations (no import-not-found, no untyped decorators)."""
    project = tmp_path / "project"  # a copy, so that the install writes nothing in the checkout
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(
        ROOT / "stepstone", project / "stepstone", ignore=shutil.ignore_patterns("__pycache__")
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # pip and stepstone's dependencies come from this interpreter's environment, so that
    # only the editable install itself is built (setuptools comes from the package index).
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", "--editable", str(project)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert install.returncode == 0, install.stderr
    user = tmp_path / "user"
    user.mkdir()
    shutil.copy(HERE / "user_code.py", user / "user_code.py")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--show-error-codes",
            "--python-executable",
            str(python),
            "user_code.py",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=user,
        env=env,
    )
    assert result.returncode == 0, result.stdout
