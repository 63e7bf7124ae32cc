"""The public API is typed exactly: ``Task[P, R]`` checks arguments and results."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SAMPLE = Path(__file__).parent / "typing" / "typed_usage.py"


@pytest.mark.timeout(180)
def test_mypy_accepts_good_calls_and_rejects_bad_ones() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--hide-error-context",
         "--no-error-summary", str(SAMPLE)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    lines = SAMPLE.read_text().splitlines()
    expected = {n for n, line in enumerate(lines, 1) if line.rstrip().split("# ")[-1][:2] == "E:"}
    reported = set()
    for row in run.stdout.splitlines():
        parts = row.split(":")
        if len(parts) > 2 and parts[0].endswith("typed_usage.py") and "error" in row:
            reported.add(int(parts[1]))
    assert reported == expected, run.stdout
