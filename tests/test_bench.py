"""The benchmark scripts still start: they import the package by its module paths, which
only a run would otherwise check (the figures themselves are for bench/run.py to report)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import REPO


@pytest.mark.parametrize(
    "script",
    [
        "run.py",
        "loadgen.py",
        "audit.py",
        "retention.py",
        "writes.py",
        "client_size.py",
        "filters.py",
        "backfill.py",
    ],
)
def test_benchmark_script_starts(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
