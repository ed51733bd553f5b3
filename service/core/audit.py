"""Audit: recompute the hash chains that the sequencer writes (SQL in the migrations)."""

from __future__ import annotations

from . import database
from .schema import SCHEMA


async def verify(url: str, topics: list[str]) -> tuple[list[tuple[str, int, str]], dict[str, int]]:
    """Recompute the hash chains of ``topics`` (all when empty). Returns the first break of
    each broken topic as (topic, seq, problem), and the topics whose chain is checked from
    a low-water mark rather than seq 1 (retention removed, or compaction thinned, what is
    before it) with that seq."""
    conn = await database.connect(url, "cli")
    try:
        if not topics:
            topics = [r["topic"] for r in await conn.fetch(f"SELECT topic FROM {SCHEMA}.topics")]
        broken = []
        for topic in sorted(topics):
            row = await conn.fetchrow(f"SELECT seq, problem FROM {SCHEMA}.verify($1)", topic)
            if row is not None:
                broken.append((topic, row["seq"], row["problem"]))
        marks = await conn.fetch(
            f"SELECT topic, first_seq FROM {SCHEMA}.topics "
            "WHERE topic = ANY($1::text[]) AND first_seq > 1",
            topics,
        )
        return broken, {r["topic"]: r["first_seq"] for r in marks}
    finally:
        await conn.close()
