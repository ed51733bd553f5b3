"""What every command shares: its error style and exit codes, its output (text or
``--json``), and progress on a terminal."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

# Exit codes, the same for every command (and listed in `changefeed --help`).
OK = 0
FAILED = 1  # the command ran and failed, or found a problem (a broken chain, a refusal)
USAGE = 2  # the command line or the configuration is wrong
UNREACHABLE = 3  # the service or the database cannot be reached

EXIT_CODES = (
    "exit status: 0 done; 1 failed, refused or found a problem (a broken chain, a missing "
    "topic); 2 bad command line or configuration; 3 the service or database cannot be "
    "reached; 130 interrupted"
)


class CommandError(Exception):
    """What a command says when it fails: one line on stderr, and its exit code."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code


def show(args: argparse.Namespace, text: str, data: Any) -> None:
    """Prints ``data`` as JSON with ``--json``, else ``text``."""
    if getattr(args, "json", False):
        # default=str: Decimals (numbers beyond float's range), datetimes.
        print(json.dumps(data, indent=2, default=str))
    elif text:
        print(text)


class Progress:
    """A count, rate and (when the total is known) ETA on stderr, rewritten in place while
    stderr is a terminal; nothing otherwise."""

    def __init__(self, what: str, total: int | None = None) -> None:
        self.what, self.total = what, total
        self.count = 0
        self.started = self.shown = time.monotonic()
        self.enabled = sys.stderr.isatty()

    def add(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if self.enabled and now - self.shown >= 0.25:
            self.shown = now
            print(f"\r{self._line(now)}\033[K", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.enabled and self.count:
            print(f"\r{self._line(time.monotonic())}\033[K", file=sys.stderr, flush=True)

    def _line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-6)
        rate = self.count / elapsed
        line = f"{self.count:,} {self.what}, {rate:,.0f}/s"
        if self.total:
            line = f"{self.count:,}/{self.total:,} {self.what}, {rate:,.0f}/s"
            if rate > 0 and self.count < self.total:
                line += f", about {(self.total - self.count) / rate:.0f} s left"
        return line
