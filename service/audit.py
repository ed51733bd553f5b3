"""Audit: recompute the hash chains that the sequencer writes (SQL in the migrations)."""

from __future__ import annotations

import asyncpg

from service.schema import SCHEMA


async def verify(url: str, topics: list[str]) -> list[tuple[str, int, str]]:
    """Recompute the hash chains of ``topics`` (all when empty); the first break of each
    broken topic as (topic, seq, problem)."""
    conn = await asyncpg.connect(url)
    try:
        if not topics:
            topics = [r["topic"] for r in await conn.fetch(f"SELECT topic FROM {SCHEMA}.topics")]
        broken = []
        for topic in sorted(topics):
            row = await conn.fetchrow(f"SELECT seq, problem FROM {SCHEMA}.verify($1)", topic)
            if row is not None:
                broken.append((topic, row["seq"], row["problem"]))
        return broken
    finally:
        await conn.close()
