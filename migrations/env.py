"""Alembic environment: runs migrations through asyncpg under an advisory lock.

The lock makes ``changefeed migrate`` safe when several replicas or jobs run it at once:
the first applies the migrations, the others wait and then find nothing to do.
"""

from __future__ import annotations

import asyncio

import asyncpg
from alembic import context
from sqlalchemy import Connection, pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from changefeed.core import database, schema

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=schema.metadata,
        version_table_schema=schema.SCHEMA,
        include_schemas=True,
        include_object=schema.owned,
    )
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": schema.MIGRATE_LOCK})
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {schema.SCHEMA}"))
        context.run_migrations()
        # Configuration the database holds, applied under the same lock.
        limit = config.attributes.get("max_event_bytes")
        if limit is not None:
            connection.execute(text(schema.set_max_event_bytes(limit)))


async def _main() -> None:
    url: str = config.attributes["database_url"]
    engine = create_async_engine(
        "postgresql+asyncpg://",
        # The pinned search path: functions with SQL-standard bodies are resolved under it.
        async_creator=lambda: asyncpg.connect(
            url, server_settings=database.session_settings("migrate"), timeout=10
        ),
        poolclass=pool.NullPool,
    )
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("changefeed migrations run online only: use `changefeed migrate`")
asyncio.run(_main())
