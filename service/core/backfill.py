"""Backfill: a captured table's existing rows published into its topic as ``read`` events,
so that replaying the topic from seq 1 rebuilds the table whenever capture began.

The work is the procedure ``changefeed.backfill`` (migrations/versions/0011_row_filters.py),
so that SQL and the command line backfill alike: it reads the rows in chunks of the primary
key's order, each chunk its own short transaction (no long-running snapshot holding back
vacuum; memory bounded by a chunk), and records each run's progress in
``changefeed.backfills``, where this module watches it.

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

A capture's row filter changes nothing in this: it is part of the chunk's condition, which
PostgreSQL evaluates again on the newest version of a row it waited for, so a row that a
writer took out of the filter is skipped after that writer's ``delete`` and one it brought
in is read after its ``insert``. The trigger evaluates the filter with the writer's rights
and the chunk with the backfill's: the same expression, with the same result as long as it
depends on the row alone (which docs/design.md asks of it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg

from .. import logs
from . import database, metrics
from .capture import captures
from .schema import SCHEMA

log = logs.get(__name__)

# How often the command line looks at a run's progress.
_PROGRESS_SECONDS = 0.25


class BackfillError(ValueError):
    """The table cannot be backfilled as asked (not captured, or a bad condition)."""


async def backfill(
    url: str,
    table: str,
    *,
    where: str | None = None,
    chunk_rows: int = 1000,
    on_progress: Callable[[int, int | None], None] | None = None,
) -> int:
    """Publish every row of captured ``table`` (matching ``where``, an SQL condition on its
    columns) as a ``read`` event; returns how many. ``on_progress`` is told the rows
    published so far and the planner's estimate of the total, as chunks commit.

    Runs with the connecting role's rights: SELECT and UPDATE (for FOR SHARE) on the
    table, EXECUTE on ``changefeed.backfill`` and what it calls (see docs/operations.md)."""
    conn = await database.connect(url, "backfill")
    watcher = None
    try:
        # The procedure runs on after its client is gone unless the server looks: a killed
        # command must not leave a backfill running without it.
        await conn.execute("SET client_connection_check_interval = '1s'")
        before = await conn.fetchval(f"SELECT coalesce(max(id), 0) FROM {SCHEMA}.backfills")
        call = asyncio.ensure_future(
            conn.fetchval(f"CALL {SCHEMA}.backfill($1::regclass, $2, $3)", table, where, chunk_rows)
        )
        if on_progress is not None:
            try:
                watcher = await database.connect(url, "backfill-progress")
                await _watch(watcher, call, before, conn.get_server_pid(), on_progress)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # Progress is for show: losing it must not stop the backfill.
                log.warning("backfill.progress_lost", error=str(exc))
        published: int = await call
        return published
    except asyncpg.PostgresError as exc:
        raise BackfillError(str(exc)) from None
    finally:
        if watcher is not None:
            await watcher.close()
        await conn.close()


async def _watch(
    conn: asyncpg.Connection,
    call: asyncio.Future[Any],
    before: int,
    pid: int,
    on_progress: Callable[[int, int | None], None],
) -> None:
    """Reports the run's committed progress until ``call`` ends."""
    while not call.done():
        await asyncio.wait([call], timeout=_PROGRESS_SECONDS)
        row = await conn.fetchrow(
            f"SELECT rows_read, rows_estimate FROM {SCHEMA}.backfills "
            f"WHERE id > $1 AND runner_pid = $2 ORDER BY id DESC LIMIT 1",
            before,
            pid,
        )
        if row is not None:
            on_progress(row["rows_read"], row["rows_estimate"])


async def refresh_metrics(db: Any) -> None:
    """Sets the backfill gauges from ``changefeed.backfills`` (a pool or a connection)."""
    found = await captures(db)
    gauges = (metrics.backfill_rows, metrics.backfill_rows_estimate, metrics.backfill_running)
    for gauge in gauges:
        gauge.clear()  # a table no longer captured has no series
    for capture in found:
        run = capture["backfill"]
        if run is None:
            continue
        metrics.backfill_rows.labels(capture["table"]).set(run["rows"])
        if run["estimate"] is not None:
            metrics.backfill_rows_estimate.labels(capture["table"]).set(run["estimate"])
        metrics.backfill_running.labels(capture["table"]).set(run["state"] == "running")
