"""Backfill: a captured table's existing rows published into its topic as ``read`` events,
so that replaying the topic from seq 1 rebuilds the table whenever capture began.

The rows are read in chunks of the primary key's order, each chunk its own short
transaction (no long-running snapshot holding back vacuum; memory bounded by a chunk).

Why a ``read`` can never overtake a concurrent change of the same row
---------------------------------------------------------------------
Events are numbered in the order their inbox rows become visible, and a row's changes
reach the inbox in the order their transactions commit (a writer must wait for the
previous writer of the row to commit). A chunk reads rows and inserts their ``read``
events in one transaction, and reads them ``FOR SHARE``:

- a writer that changed a row of the chunk and has not committed makes the chunk wait for
  it; the chunk then reads the row as that writer left it (READ COMMITTED re-reads the
  newest version, or skips the row if it was deleted or moved out of the chunk's range).
  The writer's event is committed before the chunk's ``read`` is even inserted, so it is
  numbered first, and the ``read`` carries the newer value;
- a writer that comes after the chunk's read must wait for the chunk's lock, so for the
  chunk to commit: its event is inserted, and numbered, after the ``read``.

Either way the ``read`` and the change of a row are ordered as they happened, and each
``read`` holds the row as of its place in the topic. Rows inserted by a writer the chunk
does not see arrive as their own ``insert`` events. A chunk covers a range of keys fixed
before it locks anything, ``(after, upper]``, so that a row whose key a concurrent update
moved cannot make the range skip rows: a row that moved out is read by the chunk its new
key falls in, or arrives as the ``insert`` of its key change. A ``TRUNCATE`` waits for a
chunk in progress (its lock conflicts with the chunk's), so its event follows the chunk's.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from . import database
from .schema import SCHEMA

# Tries per chunk when PostgreSQL aborts it to break a deadlock.
_ATTEMPTS = 10


class BackfillError(ValueError):
    """The table cannot be backfilled as asked (not captured, or a bad condition)."""


@dataclass(frozen=True)
class Plan:
    table: str  # schema.table, quoted as PostgreSQL prints it
    topic: str
    keys: list[str]
    excluded: list[str]


async def plan(conn: asyncpg.Connection, table: str) -> Plan:
    row = await conn.fetchrow(
        f"SELECT c.table_name, c.topic, c.key_columns, c.excluded_columns "
        f"FROM {SCHEMA}.captures c "
        f"WHERE c.table_name = {SCHEMA}.qualified_name($1::regclass)",
        table,
    )
    if row is None:
        raise BackfillError(f"{table} is not captured: declare it with changefeed capture first")
    return Plan(
        row["table_name"], row["topic"], list(row["key_columns"]), list(row["excluded_columns"])
    )


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def backfill(
    url: str,
    table: str,
    *,
    where: str | None = None,
    chunk_rows: int = 1000,
    on_rows: Callable[[int], None] | None = None,
) -> int:
    """Publish every row of captured ``table`` (matching ``where``, an SQL condition on its
    columns) as a ``read`` event; returns how many. Runs with the connecting role's rights:
    it needs SELECT and UPDATE (for FOR SHARE) on the table, and EXECUTE on publish()."""
    conn = await database.connect(url, "backfill")
    try:
        target = await plan(conn, table)
        reader = _Chunks(target, await _key_types(conn, table, target.keys), where, chunk_rows)
        published = 0
        after: list[str] | None = None
        while True:
            upper, rows = None, 0
            for attempt in range(_ATTEMPTS):
                try:
                    upper, rows = await reader.read(conn, after)
                    break
                except asyncpg.TransactionRollbackError as exc:
                    # A deadlock with a writer that locks rows of the chunk in another
                    # order (PostgreSQL aborts one of the two): the chunk was rolled back
                    # whole, so reading the same range again is exact.
                    if attempt == _ATTEMPTS - 1:
                        raise BackfillError(f"cannot read {target.table}: {exc}") from None
                    await asyncio.sleep(random.uniform(0, 0.05 * 2**attempt))
                except asyncpg.PostgresError as exc:
                    raise BackfillError(f"cannot read {target.table}: {exc}") from None
            published += rows
            if on_rows is not None and rows:
                on_rows(rows)
            if upper is None:
                return published
            after = upper
    finally:
        await conn.close()


class _Chunks:
    """The SQL of one chunk: its upper key, then its rows read FOR SHARE and published."""

    def __init__(self, target: Plan, types: list[str], where: str | None, rows: int) -> None:
        self.target, self.types, self.rows = target, types, rows
        self.keys = ", ".join(f"t.{_ident(k)}" for k in target.keys)
        self.as_text = ", ".join(f"t.{_ident(k)}::text" for k in target.keys)
        self.key_json = ", ".join(f"{_literal(k)}, t.{_ident(k)}" for k in target.keys)
        self.condition = f" AND ({where})" if where else ""

    def bound(self, first: int) -> str:
        # Key values travel as text, cast to the columns' own types.
        return ", ".join(f"(${first + i}::text)::{t}" for i, t in enumerate(self.types))

    async def read(
        self, conn: asyncpg.Connection, after: list[str] | None
    ) -> tuple[list[str] | None, int]:
        """Publishes the chunk after ``after`` in one transaction; returns its upper key
        (None: it was the last) and how many rows it published."""
        lower = f"({self.keys}) > ({self.bound(1)})" if after is not None else "true"
        args: list[Any] = list(after or [])
        async with conn.transaction():
            # The chunk's upper key, the rows-th after ``after``: fixed before anything is
            # locked (see above).
            found = await conn.fetchrow(
                f"SELECT {self.as_text} FROM {self.target.table} t WHERE {lower} "
                f"ORDER BY {self.keys} OFFSET ${len(args) + 1} - 1 LIMIT 1",
                *args,
                self.rows,
            )
            upper = list(found.values()) if found is not None else None
            upper_clause = "true"
            if upper is not None:
                upper_clause = f"({self.keys}) <= ({self.bound(len(args) + 1)})"
                args += upper
            n = len(args)
            published = await conn.fetch(
                f"WITH locked AS MATERIALIZED (SELECT t.* FROM {self.target.table} t "
                f"WHERE {lower} AND {upper_clause}{self.condition} "
                f"ORDER BY {self.keys} FOR SHARE OF t) "
                f"SELECT {SCHEMA}.publish(${n + 1}, 'read', jsonb_build_object("
                f"'table', ${n + 2}::text, 'op', 'read', "
                f"'key', jsonb_build_object({self.key_json}), "
                f"'new', to_jsonb(t) - ${n + 3}::text[])) FROM locked t",
                *args,
                self.target.topic,
                self.target.table,
                self.target.excluded,
            )
        return upper, len(published)


async def _key_types(conn: asyncpg.Connection, table: str, keys: list[str]) -> list[str]:
    rows = await conn.fetch(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type FROM pg_attribute a "
        "WHERE a.attrelid = $1::regclass AND a.attname = ANY($2::text[]) AND NOT a.attisdropped",
        table,
        keys,
    )
    found = {r["attname"]: r["type"] for r in rows}
    missing = [k for k in keys if k not in found]
    if missing:
        raise BackfillError(f"{table}: key column {missing[0]} is gone: declare the capture again")
    return [found[k] for k in keys]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def estimate(url: str, table: str) -> int | None:
    """The planner's row count of ``table`` (for progress), if it has one."""
    conn = await database.connect(url, "backfill")
    try:
        value: Any = await conn.fetchval(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = $1::regclass", table
        )
        return int(value) if value is not None and value >= 0 else None
    finally:
        await conn.close()
