"""The embedded cluster: it trusts whoever reaches its socket, so only the user running
changefeed (and the user PostgreSQL runs as) may reach it, not every local user."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator

import pytest

from changefeed.ops.cluster import Cluster
from tests.support import private_tempdir, temporary_cluster

# Any Python that every user may run (a virtual environment may live under /root).
PYTHON = shutil.which("python3", path="/usr/bin:/bin")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None or PYTHON is None,
    reason="needs root (to act as other local users) and a system python3",
)

# Connect to a unix socket; exits 0 if it may, 1 (PermissionError) if not.
PROBE = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(1)\n"
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with temporary_cluster("changefeed-embedded-", within=".changefeed") as pg:
        yield pg


def _reaches(user: str, cluster: Cluster) -> bool:
    socket_path = cluster.socket_dir / f".s.PGSQL.{cluster.port}"
    result = subprocess.run(
        ["runuser", "-u", user, "--", str(PYTHON), "-c", PROBE, str(socket_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 0


def test_only_its_own_users_reach_the_embedded_cluster(cluster: Cluster) -> None:
    assert stat.S_IMODE(cluster.pgdata.stat().st_mode) == 0o700
    assert stat.S_IMODE(cluster.socket_dir.stat().st_mode) == 0o700
    assert cluster.run_as == "postgres"
    assert _reaches("postgres", cluster)  # the server's own user
    assert not _reaches("nobody", cluster)  # any other local user


def test_a_cluster_made_before_the_rule_gets_it_at_its_next_start(cluster: Cluster) -> None:
    cluster.stop()
    cluster.pgdata.chmod(0o755)
    cluster.ensure()
    assert stat.S_IMODE(cluster.pgdata.stat().st_mode) == 0o700
    assert not _reaches("nobody", cluster)


def test_the_named_directory_itself_is_left_alone() -> None:
    """CHANGEFEED_DATA_DIR may name a directory that holds other things: the cluster's
    rights apply to its own subdirectory, not to it."""
    directory = private_tempdir("changefeed-shared-")
    (directory / "other.txt").write_text("not the cluster's")
    pg = Cluster(directory)
    try:
        pg.ensure()
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755
        assert directory.stat().st_uid == 0
    finally:
        pg.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)


def test_a_running_cluster_on_a_long_path_is_adopted() -> None:
    """With a path too long for a socket's, the socket lives in a temporary directory: a
    run that finds the server still up (its predecessor was killed) must find it there."""
    directory = private_tempdir("changefeed-long-")
    deep = directory / ("d" * 60) / ("e" * 30)
    first = Cluster(deep)
    try:
        first.ensure()
        second = Cluster(deep)  # another process, starting while the server runs
        second.ensure()
        assert second.socket_dir == first.socket_dir
    finally:
        first.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)


def test_a_data_directory_others_could_redirect_is_refused() -> None:
    """Root must not follow what another user planted: a link at pgdata (root would hand
    its target to the server's user), a data directory of another user's, or one that
    others may write to."""
    from changefeed.ops.cluster import ClusterError

    base = private_tempdir("changefeed-planted-")
    try:
        precious = base / "precious"
        precious.mkdir(mode=0o755)
        planted = base / "planted"
        planted.mkdir()
        (planted / "pgdata").symlink_to(precious)
        nobody = base / "nobodys"
        nobody.mkdir()
        os.chown(nobody, 65534, 65534)
        shared = base / "shared"
        shared.mkdir()
        shared.chmod(0o777)
        for data_dir, reason in (
            (planted, "not a directory of the server's user"),
            (nobody / ".changefeed", "belongs to another user"),
            (shared / ".changefeed", "writable by other users"),
        ):
            with pytest.raises(ClusterError, match=reason):
                Cluster(data_dir)
        info = precious.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o755)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_server_runs_without_roots_group(cluster: Cluster) -> None:
    version = cluster.pgdata / "PG_VERSION"
    assert version.stat().st_gid != 0
