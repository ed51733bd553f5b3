"""The embedded cluster in CHANGEFEED_DATA_DIR, shared by ``serve`` and the database
commands (migrate, capture, verify, retention, trim, status, psql).

Who may use the cluster is settled by one lock file, ``<data dir>/serve.lock``, locked with
``flock`` (the kernel drops a lock with its process, so a killed run leaves nothing to clean
up):

- ``serve`` holds it exclusively for its whole life and writes its pid and URL into it. A
  second ``serve`` on the same directory cannot take it and exits, naming the first, instead
  of adopting the first one's cluster and stopping it on its way out.
- A database command holds it shared. If ``serve`` holds it, the command uses the running
  cluster and leaves it running. Otherwise it starts the cluster if needed, and the last
  command to finish stops it again if a command started it (the marker file
  ``cluster.by-command`` says so), so commands leave the cluster as they found it.
- ``serve`` waits (bounded) for commands that hold it shared, and then owns the cluster,
  running or not (a cluster left running by a killed run is adopted).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .. import logs
from ..settings import Settings
from . import migrate
from .cluster import Cluster

log = logs.get(__name__)

LOCK = "serve.lock"
STARTED_BY_COMMAND = "cluster.by-command"
# How long serve waits for database commands that are using the cluster.
COMMANDS_WAIT_SECONDS = 60.0


class DataDirInUse(RuntimeError):
    """Another ``changefeed serve`` uses this data directory."""


@dataclass(frozen=True)
class Holder:
    """The ``serve`` that holds a data directory, as its lock file says."""

    pid: int
    url: str


def holder(data_dir: Path) -> Holder | None:
    """The ``serve`` running on ``data_dir``, if one is."""
    try:
        fd = os.open(data_dir / LOCK, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # none, or a link (see _open_lock)
        return None
    with os.fdopen(fd, "r") as handle:
        if _try_lock(handle, fcntl.LOCK_SH):
            return None  # nobody holds it exclusively: no serve
        return _read_holder(handle)


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[str]:
    """The embedded cluster's URL, for ``serve``: the directory locked for this process, the
    cluster created, started and migrated; stopped on exit."""
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with _open_lock(data_dir) as handle:
        deadline = time.monotonic() + COMMANDS_WAIT_SECONDS
        while not _try_lock(handle, fcntl.LOCK_EX):
            found = _read_holder(handle)
            if found is not None:
                raise DataDirInUse(
                    f"{data_dir} is in use by another changefeed serve (pid {found.pid}, "
                    f"serving {found.url}): stop it first, or give this one another "
                    "CHANGEFEED_DATA_DIR"
                )
            if time.monotonic() > deadline:
                raise DataDirInUse(
                    f"{data_dir} is in use by database commands that did not finish within "
                    f"{COMMANDS_WAIT_SECONDS:.0f} s"
                )
            time.sleep(0.1)  # shared holders (commands) finish; flock has no timed wait
        url = f"http://{settings.host}:{settings.port}"
        _write_holder(handle, Holder(os.getpid(), url))
        # serve stops the cluster on exit, whoever started it.
        (data_dir / STARTED_BY_COMMAND).unlink(missing_ok=True)
        cluster = Cluster(data_dir, bin_dir=settings.pg_bin_dir)
        log.info("embedded.starting", data_dir=str(data_dir), binaries=str(cluster.bin_dir))
        try:
            cluster.ensure()
            migrate.upgrade(cluster.url, max_event_bytes=settings.max_event_bytes_if_set)
            log.info("embedded.ready", url=cluster.url, revision=migrate.head_revision())
            yield cluster.url
        finally:
            log.info("embedded.stopping")
            cluster.stop()
            handle.seek(0)
            handle.truncate()


@contextlib.contextmanager
def for_command(settings: Settings) -> Iterator[str]:
    """The embedded cluster's URL, for a database command: the running one (serve's, or
    another command's), else started for the command's duration."""
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with _open_lock(data_dir) as handle:
        if not _try_lock(handle, fcntl.LOCK_SH):
            # serve holds it: its cluster is (or is about to be) running and migrated, and
            # stays serve's.
            cluster = Cluster(data_dir, bin_dir=settings.pg_bin_dir)
            deadline = time.monotonic() + COMMANDS_WAIT_SECONDS
            while not cluster.is_running():
                if time.monotonic() > deadline:
                    raise DataDirInUse(f"{data_dir}: changefeed serve did not start its cluster")
                time.sleep(0.1)
            cluster.ensure()
            yield cluster.url
            return
        cluster = Cluster(data_dir, bin_dir=settings.pg_bin_dir)
        marker = data_dir / STARTED_BY_COMMAND
        if not cluster.is_running():
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
        cluster.ensure()
        try:
            migrate.upgrade(cluster.url, max_event_bytes=settings.max_event_bytes_if_set)
            yield cluster.url
        finally:
            # The last command out stops what a command started (alone: exclusive).
            if _try_lock(handle, fcntl.LOCK_EX) and marker.exists():
                cluster.stop()
                marker.unlink(missing_ok=True)


@contextlib.contextmanager
def _open_lock(data_dir: Path) -> Iterator[IO[str]]:
    # Private like the rest of what is the cluster's: its contents say where serve runs.
    # O_NOFOLLOW: in a directory others can write to, a symlink planted at this name would
    # otherwise have serve (perhaps root) truncate and write the file it points to.
    try:
        fd = os.open(data_dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DataDirInUse(f"{data_dir / LOCK} is a symbolic link: refusing it") from None
        raise
    with os.fdopen(fd, "r+") as handle:
        yield handle  # closing it releases the lock


def _try_lock(handle: IO[str], mode: int) -> bool:
    try:
        fcntl.flock(handle.fileno(), mode | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


def _write_holder(handle: IO[str], found: Holder) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": found.pid, "url": found.url}))
    handle.flush()


def _read_holder(handle: IO[str]) -> Holder | None:
    handle.seek(0)
    try:
        info: Any = json.loads(handle.read() or "null")
        return Holder(int(info["pid"]), str(info["url"])) if info else None
    except (ValueError, KeyError, TypeError):
        return None
