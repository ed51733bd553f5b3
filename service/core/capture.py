"""Change-data capture of application tables (the triggers live in the migrations)."""

from __future__ import annotations

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
