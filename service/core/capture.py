"""Change-data capture of application tables (the triggers live in the migrations)."""

from __future__ import annotations

from typing import Any

from . import database
from .schema import BACKFILL_LOCK, SCHEMA


async def capture(
    url: str,
    table: str,
    topic: str | None,
    exclude: list[str] | None = None,
    row_filter: str | None = None,
) -> str:
    """Install the capture triggers on ``table``, leaving the ``exclude`` columns out of
    every event and, with a ``row_filter``, the rows that do not satisfy it; returns the
    topic its changes go to."""
    conn = await database.connect(url, "cli")
    try:
        chosen: str = await conn.fetchval(
            f"SELECT {SCHEMA}.capture($1::regclass, $2, $3::text[], $4)",
            table,
            topic,
            exclude or [],
            row_filter,
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
    """The captured tables: table, topic, key columns, excluded columns, row filter, since
    when, and their latest backfill (None if never)."""
    rows = await conn.fetch(
        f"""
        SELECT c.table_name, c.topic, c.key_columns, c.excluded_columns, c.row_filter,
               c.created_at, b.id, b.rows_read, b.rows_estimate, b.row_filter AS only,
               b.started_at, b.updated_at, b.finished_at, b.error,
               CASE WHEN b.state = 'running' AND NOT EXISTS (
                        SELECT FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
                        AND l.classid = {BACKFILL_LOCK}::oid
                        AND l.objid = (b.id % 2147483647)::oid AND l.objsubid = 2)
                    THEN 'interrupted' ELSE b.state END AS state
        FROM {SCHEMA}.captures c
        LEFT JOIN LATERAL (SELECT * FROM {SCHEMA}.backfills b WHERE b.table_name = c.table_name
                           ORDER BY b.id DESC LIMIT 1) b ON true
        ORDER BY c.table_name
        """
    )
    return [
        {
            "table": r["table_name"],
            "topic": r["topic"],
            "key": list(r["key_columns"]),
            "excluded": list(r["excluded_columns"]),
            "where": r["row_filter"],
            "since": r["created_at"].isoformat(),
            "backfill": None if r["id"] is None else _backfill(r),
        }
        for r in rows
    ]


def _backfill(r: Any) -> dict[str, Any]:
    elapsed = ((r["finished_at"] or r["updated_at"]) - r["started_at"]).total_seconds()
    return {
        "state": r["state"],
        "rows": r["rows_read"],
        "estimate": r["rows_estimate"],
        "rate": round(r["rows_read"] / elapsed) if elapsed > 0 else None,
        "where": r["only"],
        "started": r["started_at"].isoformat(),
        "finished": None if r["finished_at"] is None else r["finished_at"].isoformat(),
        "error": r["error"],
    }
