"""Change-data capture of application tables (the triggers live in the migrations)."""

from __future__ import annotations

from typing import Any

from . import database
from .schema import SCHEMA


async def capture(url: str, table: str, topic: str | None, exclude: list[str] | None = None) -> str:
    """Install the capture triggers on ``table``, leaving the ``exclude`` columns out of
    every event; returns the topic its changes go to."""
    conn = await database.connect(url, "cli")
    try:
        chosen: str = await conn.fetchval(
            f"SELECT {SCHEMA}.capture($1::regclass, $2, $3::text[])", table, topic, exclude or []
        )
        return chosen
    finally:
        await conn.close()


async def uncapture(url: str, table: str) -> bool:
    """Remove the capture triggers from ``table``; False if it was not captured."""
    conn = await database.connect(url, "cli")
    try:
        removed: bool = await conn.fetchval(f"SELECT {SCHEMA}.uncapture($1::regclass)", table)
        return removed
    finally:
        await conn.close()


async def captures(conn: Any) -> list[dict[str, Any]]:
    """The captured tables: table, topic, key columns, excluded columns, since when."""
    rows = await conn.fetch(
        f"SELECT table_name, topic, key_columns, excluded_columns, created_at "
        f"FROM {SCHEMA}.captures ORDER BY table_name"
    )
    return [
        {
            "table": r["table_name"],
            "topic": r["topic"],
            "key": list(r["key_columns"]),
            "excluded": list(r["excluded_columns"]),
            "since": r["created_at"].isoformat(),
        }
        for r in rows
    ]
