#!/usr/bin/env python3
"""Set up and run celeriac from a fresh clone: ``python3 dev.py demo`` or ``python3 dev.py test``.

Each command creates ``.venv`` (once), installs celeriac with its development extras into it,
then runs. Nothing is installed outside the repository's ``.venv``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
PYTHON = BIN / "python"
STAMP = VENV / ".celeriac-installed"


def ensure_venv() -> None:
    """Create the virtual environment and install the project when pyproject.toml changed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be run by an older python3
        raise SystemExit("celeriac needs Python 3.11 or newer")
    if not PYTHON.exists():
        print(f"Creating {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    print("Installing celeriac and its development tools into .venv ...", flush=True)
    run([str(PYTHON), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    run([str(PYTHON), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[dev]"])
    STAMP.write_text(digest)


def run(command: list[str], **kwargs: object) -> None:
    """Run a command; stop with its exit code if it fails."""
    code = subprocess.call(command, cwd=kwargs.pop("cwd", ROOT), **kwargs)  # type: ignore[arg-type]
    if code != 0:
        raise SystemExit(code)


def demo(args: list[str]) -> None:
    """Run the demo: a real worker, 2,000 tasks on the embedded SQLite broker."""
    run([str(PYTHON), str(ROOT / "examples" / "demo" / "run.py"), *args])


def test(args: list[str]) -> None:
    """Lint, type-check and run the whole test suite."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    run([str(BIN / "ruff"), "check", "celeriac", "tests", "examples", "bench", "dev.py"], env=env)
    run([str(BIN / "mypy")], env=env)
    run([str(PYTHON), "-m", "pytest", *args], env=env)


def bench(args: list[str]) -> None:
    """Measure celeriac and the bare-client ceiling in one run; print a table, write JSON."""
    run([str(PYTHON), "-m", "bench", *args])


COMMANDS = {"demo": demo, "test": test, "bench": bench}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        raise SystemExit(f"usage: python3 dev.py {{{'|'.join(COMMANDS)}}} [args...]")
    ensure_venv()
    COMMANDS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
