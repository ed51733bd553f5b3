"""What one replica runs beside its HTTP handlers, started and stopped together."""

from __future__ import annotations

from dataclasses import dataclass

from .. import logs
from ..settings import Settings
from . import database, metrics, publish, retention
from .auth import Authenticator, Principal
from .fanout import Hub
from .inbox import Backlog, Inbox
from .limits import PublishLimits
from .listener import Listener
from .periodic import Periodic
from .publish import NewEvent, parse
from .schema import EVENTS_CHANNEL, WAKE_CHANNEL
from .sequencer import Sequencer

log = logs.get(__name__)


@dataclass
class Runtime:
    """The pool, the fan-out hub, the sequencer loop, the LISTEN connection, and the
    housekeeping loops (inbox backlog, retention)."""

    settings: Settings
    url: str
    db: database.Database
    hub: Hub
    sequencer: Sequencer
    listener: Listener
    backlog: Backlog
    housekeeping: list[Periodic]
    auth: Authenticator
    publish_limits: PublishLimits
    inbox: Inbox

    def check_publish(self, principal: Principal, body: bytes) -> list[NewEvent]:
        """A publish request's events, checked against the limits; raises InvalidInput or
        Limited (taking nothing from the caller's allowance) before anything is stored.
        PostgreSQL checks ``data`` itself when the events are stored (see publish.py)."""
        batch = parse(body, max_batch_events=self.settings.max_batch_events)
        if principal.limited:
            self.publish_limits.spend(principal.subject, len(batch))
        return batch

    async def store(self, topic: str, batch: list[NewEvent]) -> None:
        """Store checked events durably and wake the sequencer."""
        await self.inbox.append(topic, batch)
        metrics.published.inc(len(batch))
        self.sequencer.nudge()

    @classmethod
    async def start(cls, settings: Settings, url: str) -> Runtime:
        auth = Authenticator(settings)
        publish_limits = PublishLimits(
            rate=settings.subject_publish_rate, burst=settings.subject_publish_burst
        )
        db = await database.create(
            url,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            timeout=settings.query_timeout_seconds,
        )
        try:
            async with db.acquire() as conn:
                limit = await publish.max_event_bytes(conn)
        except BaseException:
            await db.close()
            raise
        configured = settings.max_event_bytes_if_set
        if configured is not None and configured != limit:
            # The database holds the limit, for every path; `changefeed migrate` sets it.
            log.warning(
                "max_event_bytes.differs",
                configured=configured,
                database=limit,
                detail="the database's limit applies; run `changefeed migrate` (or `serve "
                "--migrate`) with CHANGEFEED_MAX_EVENT_BYTES to change it",
            )
        hub = Hub(
            db,
            page_size=settings.max_page_events,
            buffer_bytes=settings.subscriber_buffer_bytes,
            keepalive_seconds=settings.keepalive_seconds,
            recheck_seconds=settings.recheck_seconds,
            max_streams_per_subject=settings.subject_max_streams,
        )
        sequencer = Sequencer(
            url,
            db,
            batch_size=settings.sequencer_batch_size,
            poll_seconds=settings.sequencer_poll_seconds,
            election_seconds=settings.election_seconds,
        )
        listener = Listener(
            url,
            {EVENTS_CHANNEL: hub.on_hint, WAKE_CHANNEL: lambda _payload: sequencer.wake()},
            on_connect=hub.recheck,
        )
        backlog = Backlog(db, settings.max_inbox_events)
        housekeeping = [
            Periodic("inbox-backlog", 1.0, backlog.refresh),
            Periodic(
                "retention",
                settings.retention_interval_seconds,
                lambda: retention.trim(db, settings.retention_batch_rows),
            ),
        ]
        hub.start()
        listener.start()
        sequencer.start()
        for task in housekeeping:
            task.start()
        return cls(
            settings,
            url,
            db,
            hub,
            sequencer,
            listener,
            backlog,
            housekeeping,
            auth,
            publish_limits,
            Inbox(db),
        )

    def drain(self) -> None:
        """Shutting down: refuse new streams and end open ones so clients reconnect elsewhere."""
        self.hub.drain()

    async def stop(self) -> None:
        for task in self.housekeeping:
            await task.stop()
        await self.hub.close()
        await self.listener.stop()
        await self.sequencer.stop()
        await self.db.close()
