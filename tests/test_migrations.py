"""Migrations are frozen records that go up and down: from a database in use to nothing and
back, on a real PostgreSQL, and the current SQL functions are readable in one place."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys

import asyncpg
import pytest

from changefeed.ops import migrate
from tests.support import REPO, create_database, private_tempdir

VERSIONS = REPO / "migrations" / "versions"


def test_migrations_never_import_the_code_they_migrate() -> None:
    """A migration is a record of one step: importing live code (a constant of today's
    schema) would change what an old step does when the code changes."""
    for path in VERSIONS.glob("*.py"):
        text = path.read_text()
        assert "import changefeed" not in text and "from changefeed" not in text, path.name
        assert "import_module(" not in text, path.name  # works from a checkout only


async def _objects(url: str) -> tuple[set[str], set[str]]:
    conn = await asyncpg.connect(url)
    try:
        functions = {
            r[0]
            for r in await conn.fetch(
                "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = 'changefeed'"
            )
        }
        tables = {
            r[0]
            for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'changefeed'"
            )
        }
        return functions, tables
    finally:
        await conn.close()


async def _use(url: str, suffix: str) -> None:
    """What a database in use holds: a captured table with changes, events, a consumer."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"CREATE TABLE app_{suffix} (id int PRIMARY KEY, v text)")
        await conn.fetchval(f"SELECT changefeed.capture('app_{suffix}')")
        await conn.execute(f"INSERT INTO app_{suffix} VALUES (1, 'a'), (2, 'b')")
        await conn.execute(f"UPDATE app_{suffix} SET id = 3 WHERE id = 2")
        await conn.execute("SELECT changefeed.publish('t', 'x', '1')")
        await conn.fetch("SELECT * FROM changefeed.sequence()")
        await conn.execute(
            "INSERT INTO changefeed.consumers (name, selection, topics, patterns, "
            "visibility_timeout) VALUES ('c', '{t}', '{t}', '{}', '30 s')"
        )
    finally:
        await conn.close()


async def test_every_migration_goes_down_and_up_again(admin_url: str) -> None:
    url = await create_database(admin_url)
    await asyncio.to_thread(migrate.upgrade, url)
    head = await _objects(url)
    await _use(url, "first")
    await asyncio.to_thread(migrate.downgrade, url, "base")
    functions, tables = await _objects(url)
    assert functions == set() and tables <= {"alembic_version"}, (functions, tables)
    await asyncio.to_thread(migrate.upgrade, url)
    assert await _objects(url) == head
    await _use(url, "second")
    # Down one step at a time from head, and up again, each with the database in use.
    revisions = sorted(p.name.split("_", 1)[0] for p in VERSIONS.glob("0*.py"))
    for revision in reversed(revisions[:-1]):
        await asyncio.to_thread(migrate.downgrade, url, revision)
    await asyncio.to_thread(migrate.upgrade, url)
    assert await _objects(url) == head


SQL = REPO / "migrations" / "sql"

# Each function as PostgreSQL prints it back (pg_get_functiondef); an aggregate by hand, as
# PostgreSQL has no function that prints one.
_DEFINITIONS = """
SELECT p.proname AS name,
       CASE WHEN p.prokind = 'a'
            THEN format(E'CREATE OR REPLACE AGGREGATE %s(%s) (\n    SFUNC = %s,\n'
                        '    STYPE = %s\n)',
                        p.oid::regproc, pg_get_function_identity_arguments(p.oid),
                        a.aggtransfn::regproc, format_type(a.aggtranstype, NULL))
            ELSE pg_get_functiondef(p.oid) END AS definition
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
LEFT JOIN pg_aggregate a ON a.aggfnoid = p.oid
WHERE n.nspname = 'changefeed'
ORDER BY p.proname
"""


async def test_the_current_sql_functions_are_in_one_place(database: str) -> None:
    """migrations/sql/ holds every function of the schema as head defines it, one file each,
    for reading: migrations are records of steps, in which the current definition of a
    function is wherever it last changed. Run with CHANGEFEED_WRITE_SQL=1 to write the
    files anew after a migration that changes functions."""
    conn = await asyncpg.connect(database)
    try:
        rows = await conn.fetch(_DEFINITIONS)
        major = conn.get_server_version().major
    finally:
        await conn.close()
    # PostgreSQL prints definitions a little differently from one major version to the next.
    header = f"-- changefeed at head, as PostgreSQL {major} prints it (see migrations/versions)\n"
    defined = {r["name"]: header + r["definition"].strip() + ";\n" for r in rows}
    if os.environ.get("CHANGEFEED_WRITE_SQL"):
        for old in SQL.glob("*.sql"):
            old.unlink()
        for name, definition in defined.items():
            (SQL / f"{name}.sql").write_text(definition)
    files = {path.stem: path.read_text() for path in SQL.glob("*.sql")}
    assert sorted(files) == sorted(defined)
    if not all(text.startswith(header) for text in files.values()):
        pytest.skip(f"migrations/sql/ was written with another PostgreSQL than {major}")
    for name, definition in defined.items():
        assert files[name] == definition, f"migrations/sql/{name}.sql is not what head defines"


@pytest.mark.slow
async def test_the_installed_wheel_migrates_down_and_up(admin_url: str) -> None:
    """Users run the wheel, not this checkout: its migrations (downgrades included, which
    load earlier revisions by path), its entry points and its files must work from
    site-packages."""
    work = private_tempdir("changefeed-wheel-")
    try:
        built = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work), str(REPO)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert built.returncode == 0, built.stderr
        (wheel,) = work.glob("changefeed-*.whl")
        site = work / "site"
        installed = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "-t", str(site), wheel],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert installed.returncode == 0, installed.stderr
        # The JS client (a symlink into clients/js in the checkout) ships as a file.
        shipped = site / "changefeed" / "web" / "static" / "client.js"
        assert not shipped.is_symlink()
        assert shipped.read_bytes() == (REPO / "clients" / "js" / "client.js").read_bytes()
        assert (shipped.parent / "swagger" / "swagger-ui-bundle.js").stat().st_size > 1_000_000
        url = await create_database(admin_url)
        script = (
            "import sys, changefeed\n"
            "from changefeed import Client\n"
            "from changefeed.ops import migrate\n"
            f"assert changefeed.__file__.startswith({str(site)!r}), changefeed.__file__\n"
            "migrate.upgrade(sys.argv[1])\n"
            "migrate.downgrade(sys.argv[1], 'base')\n"
            "migrate.upgrade(sys.argv[1])\n"
            "print('ok')\n"
        )
        # Outside the checkout, with the wheel's copy first on the path.
        env = {**os.environ, "PYTHONPATH": str(site)}
        ran = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", script, url],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ran.returncode == 0 and ran.stdout.strip() == "ok", ran.stderr
        cli = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "changefeed", "--help"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0 and "migrate" in cli.stdout, cli.stderr
        assert (await _objects(url))[0], "head has functions again"
    finally:
        shutil.rmtree(work, ignore_errors=True)
