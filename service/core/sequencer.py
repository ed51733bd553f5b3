"""The sequencer: numbers committed inbox rows into the events table, one replica at a time.

Every replica runs this loop; the one holding a session advisory lock (the election) calls
``changefeed.sequence()`` repeatedly, the others retry the lock every ``election_seconds``.
Correctness never rests on the election: the SQL function serialises its callers with a
transaction lock, so a stale leader can only wait, never interleave.

Wake-ups: a publish on this replica wakes it in-process when it leads; otherwise the
replica sends a NOTIFY on the wake channel after the publish committed (never inside the
writer's transaction). A short poll covers producers that publish from SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg

from .. import logs
from ..backoff import Backoff
from . import database, metrics
from .database import Database
from .schema import ELECTION_LOCK, SCHEMA, WAKE_CHANNEL

log = logs.get(__name__)

# A step takes milliseconds; one that hangs this long is on a dead connection.
_TIMEOUT = 10.0
# A leader polls every CHANGEFEED_SEQUENCER_POLL_SECONDS, so its session is never idle this
# long unless its process froze (a pause, SIGSTOP, a hung VM) while its TCP stack still
# answers keepalives: PostgreSQL then ends the session and frees the role for another.
_IDLE_SESSION_TIMEOUT = "10s"
# The inbox is vacuumed after this many rows consumed, or this many seconds after the
# first row consumed since the last vacuum (see _lead).
_VACUUM_EVERY = 50_000
_VACUUM_SECONDS = 5.0
_LAG = f"""
SELECT extract(epoch FROM clock_timestamp() - published_at)::float8
FROM {SCHEMA}.inbox ORDER BY id LIMIT 1
"""


class Sequencer:
    """This replica's side of the sequencer role."""

    def __init__(
        self,
        url: str,
        db: Database,
        *,
        batch_size: int,
        poll_seconds: float,
        election_seconds: float,
    ) -> None:
        self._url = url
        self._db = db
        self._batch_size = batch_size
        self._poll_seconds = poll_seconds
        self._election_seconds = election_seconds
        self._wake = asyncio.Event()
        self._nudging: asyncio.Task[None] | None = None
        self._nudge_again = False
        self.is_leader = False

    def wake(self) -> None:
        """Run a step soon (called for wake notifications; ignored unless leading)."""
        self._wake.set()

    def nudge(self) -> None:
        """A publish on this replica committed: make sure the leader, wherever it is, runs."""
        if self.is_leader:
            self._wake.set()
            return
        # Coalesce: at most one wake NOTIFY in flight per replica, plus one queued.
        if self._nudging is not None and not self._nudging.done():
            self._nudge_again = True
            return
        self._nudging = asyncio.create_task(self._send_wakes(), name="sequencer-nudge")

    async def _send_wakes(self) -> None:
        while True:
            self._nudge_again = False
            try:
                await self._db.execute("SELECT pg_notify($1, '')", WAKE_CHANNEL)
            except database.UNAVAILABLE as exc:
                log.warning("sequencer.nudge_failed", error=str(exc))
                return  # the leader's poll picks the rows up
            if not self._nudge_again:
                return

    async def stop(self) -> None:
        """After the supervisor stopped ``run``: the wake-up in flight, if any."""
        if self._nudging is not None:
            self._nudging.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._nudging
        self._set_leader(False)

    def _set_leader(self, leader: bool) -> None:
        if leader != self.is_leader:
            log.info("sequencer.role", leader=leader)
        self.is_leader = leader
        metrics.is_sequencer.set(1 if leader else 0)
        if not leader:
            metrics.sequencer_lag.set(0)

    async def run(self, backoff: Backoff) -> None:
        """One life of the sequencer's connection: try for the role, and lead while it lasts
        (a supervised loop: it returns when the connection is lost)."""
        try:
            conn = await database.connect(self._url, "sequencer")
        except database.UNAVAILABLE as exc:
            log.warning("sequencer.connect_failed", error=str(exc))
            return
        backoff.reset()
        try:
            if conn.get_server_version().major >= 14:
                await conn.execute(f"SET idle_session_timeout = '{_IDLE_SESSION_TIMEOUT}'")
            await self._lead(conn)
        except database.UNAVAILABLE as exc:
            log.warning("sequencer.connection_lost", error=str(exc))
        finally:
            # Closing the session releases the election lock for another replica.
            self._set_leader(False)
            conn.terminate()

    async def _lead(self, conn: asyncpg.Connection) -> None:
        lag_measured = first_consumed = 0.0
        consumed_since_vacuum = 0
        while True:
            if not self.is_leader:
                won = await conn.fetchval(
                    "SELECT pg_try_advisory_lock($1)", ELECTION_LOCK, timeout=_TIMEOUT
                )
                if not won:
                    await self._sleep(self._election_seconds)
                    continue
                self._set_leader(True)
            row = await conn.fetchrow(
                f"SELECT consumed, sequenced FROM {SCHEMA}.sequence($1)",
                self._batch_size,
                timeout=_TIMEOUT,
            )
            assert row is not None
            if row["sequenced"]:
                metrics.sequenced.inc(row["sequenced"])
            if row["consumed"] > row["sequenced"]:
                metrics.deduplicated.inc(row["consumed"] - row["sequenced"])
            now = time.monotonic()
            if row["consumed"] and not consumed_since_vacuum:
                first_consumed = now
            consumed_since_vacuum += row["consumed"]
            if consumed_since_vacuum >= _VACUUM_EVERY or (
                consumed_since_vacuum and now - first_consumed >= _VACUUM_SECONDS
            ):
                # Each step takes the oldest inbox rows through its primary key, and walks
                # every dead entry that earlier steps left at its head until a vacuum
                # clears them; autovacuum comes at most once a minute, and under a steady
                # flood steps slowed down severalfold (measured). Vacuuming the small
                # inbox from here keeps a step's cost flat: by rows for floods of batches,
                # by time for a stream of small publishes, where every step pays the walk
                # (measured: 1.2k single-event publishes/s became 1.8k/s).
                consumed_since_vacuum = 0
                await conn.execute(f"VACUUM {SCHEMA}.inbox", timeout=_TIMEOUT)
            if now - lag_measured >= 1.0:
                lag_measured = now
                metrics.sequencer_lag.set(await conn.fetchval(_LAG, timeout=_TIMEOUT) or 0.0)
            if row["consumed"] >= self._batch_size:
                continue  # more are waiting
            await self._sleep(self._poll_seconds)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()
