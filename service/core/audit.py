"""Audit: recompute the hash chains that the sequencer writes (SQL in the migrations)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import database
from .schema import SCHEMA


@dataclass(frozen=True)
class Verdict:
    """``broken``: the first break of each broken topic as (topic, seq, problem);
    ``marks``: the topics whose chain is checked from a low-water mark rather than seq 1
    (retention removed, or compaction thinned, what is before it), with that seq;
    ``missing``: topics named that hold no events; ``checked``: the topics checked."""

    broken: list[tuple[str, int, str]]
    marks: dict[str, int]
    missing: list[str]
    checked: list[str]


async def verify(
    url: str, topics: list[str], on_topic: Callable[[], None] | None = None
) -> Verdict:
    """Recompute the hash chains of ``topics`` (all when empty); ``on_topic`` is called as
    each is done."""
    conn = await database.connect(url, "cli")
    try:
        known = {r["topic"] for r in await conn.fetch(f"SELECT topic FROM {SCHEMA}.topics")}
        missing = sorted(set(topics) - known)
        checked = sorted(set(topics) & known if topics else known)
        broken = []
        for topic in checked:
            row = await conn.fetchrow(f"SELECT seq, problem FROM {SCHEMA}.verify($1)", topic)
            if row is not None:
                broken.append((topic, row["seq"], row["problem"]))
            if on_topic is not None:
                on_topic()
        marks = await conn.fetch(
            f"SELECT topic, first_seq FROM {SCHEMA}.topics "
            "WHERE topic = ANY($1::text[]) AND first_seq > 1",
            checked,
        )
        return Verdict(broken, {r["topic"]: r["first_seq"] for r in marks}, missing, checked)
    finally:
        await conn.close()
