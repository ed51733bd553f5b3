"""A private PostgreSQL cluster in a directory: the embedded default and the tests' database.

It uses the server binaries it finds: ``PATH``, then Debian's ``/usr/lib/postgresql/*/bin``,
then the ``pgserver`` wheel (``pip install 'changefeed[embedded]'``), which bundles them.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

# Not "changefeed": a role named like the schema would put its unqualified tables there
# (the default search_path starts with "$user").
SUPERUSER = "postgres"
DATABASE = "changefeed"
# Unix socket paths are limited to 107 bytes; leave room for "/.s.PGSQL.NNNNN".
_MAX_SOCKET_DIR = 80
# pg_ctl starts the server through /bin/sh with the data directory and log file in double
# quotes, where these still mean something to the shell.
_SHELL = set('$`"\\\n')


class ClusterError(RuntimeError):
    """The cluster could not be created, started or stopped."""


def find_bin_dir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``."""
    candidates: list[Path] = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(debian)
    spec = importlib.util.find_spec("pgserver")
    if spec and spec.origin:
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin")
    for directory in candidates:
        if all((directory / name).exists() for name in ("initdb", "pg_ctl", "postgres")):
            return directory
    raise ClusterError(
        "no PostgreSQL server binaries found (looked on PATH, in /usr/lib/postgresql/*/bin and "
        "for the pgserver wheel): install the 'postgresql' package, or "
        "pip install 'changefeed[embedded]', or set CHANGEFEED_DATABASE_URL"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Cluster:
    """One PostgreSQL data directory and the server running on it.

    ``tcp_port`` set: the server also listens on 127.0.0.1 at that port (tests do this so
    that they can cut and restart connections); otherwise it is reachable only through its
    unix socket.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        tcp_port: int | None = None,
        durable: bool = True,
        bin_dir: Path | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        if _SHELL & set(str(self.data_dir)):
            raise ClusterError(
                f"{self.data_dir}: the embedded cluster's directory may not contain any of "
                "$ ` \\ \" or a line break (PostgreSQL's pg_ctl hands it to a shell)"
            )
        self.pgdata = self.data_dir / "pgdata"
        # postgres refuses to run as root: run it as an unprivileged user then.
        self.run_as = _unprivileged_user() if os.geteuid() == 0 else None
        _require_private(Path(os.path.abspath(data_dir)), self.pgdata, self.run_as)
        self.tcp_port = tcp_port
        self.port = tcp_port or 5432
        self.durable = durable
        self.bin_dir = bin_dir or find_bin_dir()
        self.socket_dir = self._choose_socket_dir()
        self.log_file = self.pgdata / "postgresql.log"

    @property
    def url(self) -> str:
        """An asyncpg/libpq URL for the ``changefeed`` database."""
        return self.url_for(DATABASE)

    def url_for(self, database: str) -> str:
        """The same server, another database."""
        if self.tcp_port:
            return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"
        host = quote(str(self.socket_dir), safe="/")  # a # or & in it must not end the value
        return f"postgresql://{SUPERUSER}@/{database}?host={host}&port={self.port}"

    def ensure(self) -> None:
        """Create the cluster on first use, start it, and make sure its database exists."""
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        self._private()
        if self.is_running():
            self._adopt_running_port()
        else:
            self.start()
        self._psql(f"CREATE DATABASE {DATABASE}", allow_error="already exists")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        listen = "127.0.0.1" if self.tcp_port else "''"  # '' = unix socket only
        options = [
            f"-p {self.port}",
            # pg_ctl puts these options into a shell command line as they are.
            f"-k {shlex.quote(str(self.socket_dir))}",
            f"-c listen_addresses={listen}",
            # The cluster trusts whoever reaches its socket, so only its own user (and root)
            # may: the socket and its directory are theirs alone (see _private).
            "-c unix_socket_permissions=0700",
        ]
        if not self.durable:
            # Throwaway test clusters: a crashed *process* loses nothing with fsync off
            # (the OS still has the pages); only a machine crash would.
            options += ["-c fsync=off", "-c full_page_writes=off"]
        self._run(
            "pg_ctl",
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            str(self.pgdata),
            "-l",
            str(self.log_file),
            "-o",
            " ".join(options),
        )

    def _adopt_running_port(self) -> None:
        # Already running (a previous run was killed before stopping it): use its port and
        # its socket's directory (a temporary one, for a long path), as postmaster.pid says.
        lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        if len(lines) > 3 and lines[3].strip().isdigit():
            self.port = int(lines[3])
            if self.tcp_port:
                self.tcp_port = self.port
        if len(lines) > 4 and lines[4].strip():
            socket_dir = Path(lines[4].strip())
            # Only a socket directory of the server's own user: postmaster.pid is the server's
            # word, and another user's directory could hold another server's socket.
            info = os.lstat(socket_dir)
            owner = pwd.getpwnam(self.run_as).pw_uid if self.run_as else os.geteuid()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != owner:
                raise ClusterError(
                    f"{self.pgdata}/postmaster.pid names the socket directory {socket_dir}, "
                    "which is not the server user's own: not adopting that server"
                )
            self.socket_dir = socket_dir

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``smart``, ``fast`` or ``immediate``)."""
        if self.is_running():
            self._run("pg_ctl", "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.pgdata))

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def is_running(self) -> bool:
        result = subprocess.run(
            [str(self.bin_dir / "pg_ctl"), "status", "-D", str(self.pgdata)],
            capture_output=True,
            check=False,
            **self._as_server_user(),
        )
        return result.returncode == 0

    def destroy(self) -> None:
        """Stop the server and delete the data directory."""
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def _initdb(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._grant(self.pgdata)
        os.chmod(self.pgdata, 0o700)
        self._run(
            "initdb",
            "-D",
            str(self.pgdata),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        )

    def _choose_socket_dir(self) -> Path:
        # In the data directory proper (initdb makes it the server user's alone), unless its
        # path is too long for a socket's.
        if len(str(self.pgdata)) <= _MAX_SOCKET_DIR:
            return self.pgdata
        directory = Path(tempfile.mkdtemp(prefix="changefeed-pg-"))  # mode 0700
        self._grant(directory)
        return directory

    def _private(self) -> None:
        """Only the server's user (and root) may reach the socket, the data and the log: the
        embedded cluster authenticates nobody (trust), so reaching its socket is being its
        superuser. The directory CHANGEFEED_DATA_DIR names is left as it is (it may hold
        other things); what is the cluster's lives in directories of its own, made private
        at every start."""
        self.pgdata.chmod(0o700)
        self.socket_dir.chmod(0o700)

    def _grant(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if self.run_as is None:
            return
        entry = pwd.getpwnam(self.run_as)
        os.chown(path, entry.pw_uid, entry.pw_gid)
        # The server's user must be able to reach its data directory.
        for parent in path.parents:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                raise ClusterError(
                    f"{parent} is not traversable by the '{self.run_as}' user that PostgreSQL "
                    "runs as under root; set CHANGEFEED_DATA_DIR to a path outside it"
                )

    def _as_server_user(self) -> dict[str, Any]:
        """subprocess options that run a program as the server's user, with its own group
        and no other (not root's group 0, which it would otherwise keep)."""
        if self.run_as is None:
            return {}
        entry = pwd.getpwnam(self.run_as)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _psql(self, sql: str, *, allow_error: str = "") -> None:
        # asyncpg rather than psql: the pgserver route has no client package on the machine.
        import asyncio

        import asyncpg

        async def run() -> None:
            conn = await asyncpg.connect(self.url_for("postgres"))
            try:
                await conn.execute(sql)
            except asyncpg.PostgresError as exc:
                if not allow_error or allow_error not in str(exc):
                    raise
            finally:
                await conn.close()

        asyncio.run(run())

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run(
            [str(self.bin_dir / program), *args],
            capture_output=True,
            text=True,
            cwd="/",
            check=False,
            **self._as_server_user(),
        )
        if result.returncode != 0:
            raise ClusterError(
                f"{program} {args[0]} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}"
            )


def _require_private(path: Path, pgdata: Path, run_as: str | None) -> None:
    """Refuse a data directory that another user could redirect or replace (as ssh's
    StrictModes does): every directory on its path, as given and as resolved, must belong
    to root or to this user, and none but sticky ones (/tmp) may be writable by others;
    ``pgdata``, if it exists, must be a real directory of the server's user. Otherwise a
    user could plant a link there and have changefeed, perhaps running as root, hand the
    target to the server's user, or adopt a server of theirs."""
    me = os.geteuid()
    for candidate in dict.fromkeys([path, path.resolve()]):
        for part in [*reversed(candidate.parents), candidate]:
            try:
                info = os.lstat(part)
            except FileNotFoundError:
                break
            if info.st_uid not in (0, me):
                raise ClusterError(
                    f"{part} belongs to another user, who could redirect the embedded "
                    "database: set CHANGEFEED_DATA_DIR to a directory of your own"
                )
            if stat.S_ISLNK(info.st_mode):
                continue
            if info.st_mode & 0o022 and not (info.st_mode & stat.S_ISVTX and part != candidate):
                raise ClusterError(
                    f"{part} is writable by other users: set CHANGEFEED_DATA_DIR to a "
                    "directory only you can write to"
                )
    try:
        info = os.lstat(pgdata)
    except FileNotFoundError:
        return
    owner = pwd.getpwnam(run_as).pw_uid if run_as else me
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != owner:
        raise ClusterError(
            f"{pgdata} is not a directory of the server's user ({run_as or 'you'}): "
            "refusing it (a link or another user's files)"
        )


def _unprivileged_user() -> str:
    # Not `nobody`: every other daemon that runs as nobody could reach the cluster, and
    # be its superuser.
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ClusterError(
            "running as root, the embedded PostgreSQL needs a user of its own to run as, "
            "'postgres', and there is none: create it (useradd --system postgres), install "
            "Debian's postgresql package, or run changefeed as an ordinary user"
        ) from None
    return "postgres"
