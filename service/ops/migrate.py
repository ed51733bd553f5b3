"""Apply the Alembic migrations in ``migrations/`` to a database."""

from __future__ import annotations

from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from ..core.schema import SCHEMA


def migrations_dir() -> Path:
    """``migrations/`` inside the package (installed wheel) or beside its folder (source
    checkout, editable install)."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "migrations", package.parent / "migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise FileNotFoundError("the changefeed migrations directory is missing from this install")


def _config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["database_url"] = database_url
    return config


def upgrade(
    database_url: str, *, max_event_bytes: int | None = None, revision: str = "head"
) -> None:
    """Bring the schema to the newest revision (a no-op when it is already there), and
    make ``max_event_bytes``, when given, the database's size limit of event data.
    (``revision``: an older one, for tests that show what a migration changed.)"""
    config = _config(database_url)
    config.attributes["max_event_bytes"] = max_event_bytes
    command.upgrade(config, revision)


def downgrade(database_url: str, revision: str) -> None:
    """Take the schema back to ``revision`` (``base``: remove it all)."""
    command.downgrade(_config(database_url), revision)


def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(_config("")).get_current_head()
    assert head is not None
    return head


async def current_revision(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
) -> str | None:
    """The revision the database is at, or None before the first migration."""
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{SCHEMA}.alembic_version")
    if not exists:
        return None
    revision: str | None = await conn.fetchval(f"SELECT version_num FROM {SCHEMA}.alembic_version")
    return revision


class SchemaNotReady(RuntimeError):
    """The database has not been migrated to this code's revision."""


async def require_head(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> None:
    """Raise SchemaNotReady unless the database is at this code's newest revision."""
    current = await current_revision(conn)
    expected = head_revision()
    if current != expected:
        raise SchemaNotReady(
            f"database schema is at revision {current or 'none'}, this code needs {expected}: "
            "run `changefeed migrate` (or `changefeed serve --migrate`)"
        )
