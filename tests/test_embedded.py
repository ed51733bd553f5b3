"""The embedded cluster shared by `serve` and the database commands: a second serve on a
data directory in use exits and leaves the first alone; a killed serve's cluster is adopted;
database commands use the cluster whether serve runs or not, and leave it as they found it."""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from changefeed.ops.cluster import Cluster
from tests.support import Service, changefeed, new_topic, private_tempdir

pytestmark = pytest.mark.slow


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = private_tempdir("changefeed-embedded-") / "data"
    yield path
    if (path / "pgdata" / "PG_VERSION").exists():
        Cluster(path).stop("immediate")
    shutil.rmtree(path.parent, ignore_errors=True)


def test_a_second_serve_exits_and_leaves_the_first_alone(data_dir: Path) -> None:
    env = {"CHANGEFEED_DATA_DIR": str(data_dir)}
    with Service(None, env=env) as first:
        second = changefeed("serve", "--port", "0", env=env, timeout=90)
        assert second.returncode == 1
        assert f"pid {first.process.pid}" in second.stderr, second.stderr  # type: ignore[union-attr]
        assert (
            "another changefeed serve" in second.stderr and "CHANGEFEED_DATA_DIR" in second.stderr
        )
        topic = new_topic()
        published = httpx.post(f"{first.base_url}/feeds/{topic}", json={"data": 1})
        assert published.status_code == 202
        assert httpx.get(f"{first.base_url}/readyz").status_code == 200

        # Killed: its cluster runs on, and the next serve adopts it.
        assert first.process is not None
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
        assert Cluster(data_dir).is_running()
        with Service(None, env=env) as next_one:
            page = httpx.get(f"{next_one.base_url}/feeds/{topic}/events").json()
            assert [e["data"] for e in page["events"]] == [1]
    assert not Cluster(data_dir).is_running()


def test_database_commands_use_the_embedded_cluster(data_dir: Path) -> None:
    env = {"CHANGEFEED_DATA_DIR": str(data_dir)}
    topic = new_topic()
    # Nothing runs: the command creates and starts the cluster, and stops it again.
    made = changefeed("retention", "set", topic, "--max-count", "5", env=env)
    assert made.returncode == 0, made.stderr
    assert not Cluster(data_dir).is_running()
    status = changefeed("status", "--json", env=env)
    found = json.loads(status.stdout)
    assert found["data_dir"] == str(data_dir.resolve()) and found["serve_pid"] is None
    assert found["database_running"] is False and not found["serving"]

    with Service(None, env=env) as service:
        env_url = {**env, "CHANGEFEED_URL": service.base_url}
        assert changefeed("publish", topic, '{"n": 1}', env=env_url).returncode == 0
        # serve runs: the commands use its cluster, and leave it running.
        listed = changefeed("retention", "list", "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout)[0]["max_count"] == 5
        verified = changefeed("verify", topic, env=env)
        assert verified.returncode == 0 and "1 topics intact" in verified.stdout
        status = changefeed("status", "--json", env=env_url)
        found = json.loads(status.stdout)
        assert found["serve_pid"] == service.process.pid  # type: ignore[union-attr]
        assert found["serving"] and found["database_running"] and found["schema_revision"]
        assert found["database"].startswith("postgresql://postgres@/changefeed?host=")
        assert httpx.get(f"{service.base_url}/readyz").status_code == 200
        if shutil.which("psql"):
            counted = changefeed(
                "psql",
                "--",
                "-tAc",
                f"SELECT head FROM changefeed.topics WHERE topic = '{topic}'",
                env=env,
            )
            assert counted.returncode == 0 and counted.stdout.strip() == "1", counted.stderr
    assert not Cluster(data_dir).is_running()


def test_a_symlink_planted_as_the_lock_file_is_refused(data_dir: Path, tmp_path: Path) -> None:
    """In a data directory others can write to, serve (perhaps root) must not write through
    a link someone put at the lock file's name."""
    target = tmp_path / "precious"
    target.write_text("keep me")
    data_dir.mkdir(parents=True)
    (data_dir / "serve.lock").symlink_to(target)
    env = {"CHANGEFEED_DATA_DIR": str(data_dir)}
    for argv in (["serve", "--port", "0"], ["verify"]):
        result = changefeed(*argv, env=env, timeout=60)
        assert result.returncode in (1, 3) and "symbolic link" in result.stderr, result.stderr
    assert target.read_text() == "keep me"
