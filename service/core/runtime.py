"""What one replica runs beside its HTTP handlers, started and stopped together."""

from __future__ import annotations

from dataclasses import dataclass

from .. import logs
from ..settings import Settings
from . import backfill, database, metrics, publish, retention
from .admission import Admission
from .auth import Authenticator, Principal
from .fanout import Hub
from .inbox import Backlog, Inbox
from .listener import Listener
from .publish import NewEvent, parse
from .schema import EVENTS_CHANNEL, WAKE_CHANNEL
from .sequencer import Sequencer
from .supervise import Supervisor, every

log = logs.get(__name__)


@dataclass
class Runtime:
    """The pool, the fan-out hub, the sequencer, the LISTEN connection and the housekeeping
    loops, supervised together; admission and the inbox for the handlers."""

    settings: Settings
    url: str
    db: database.Database
    hub: Hub
    sequencer: Sequencer
    listener: Listener
    backlog: Backlog
    auth: Authenticator
    admission: Admission
    inbox: Inbox
    supervisor: Supervisor

    def check_publish(self, principal: Principal, body: bytes) -> list[NewEvent]:
        """A publish request's events, charged to the caller's allowance; raises InvalidInput
        or Limited (taking nothing) before anything is stored. PostgreSQL checks ``data``
        itself when the events are stored (see publish.py)."""
        batch = parse(body, max_batch_events=self.settings.max_batch_events)
        self.admission.charge(principal, len(batch))
        return batch

    async def store(self, topic: str, batch: list[NewEvent]) -> None:
        """Store checked events durably and wake the sequencer."""
        await self.inbox.append(topic, batch)
        metrics.published.inc(len(batch))
        self.sequencer.nudge()

    @classmethod
    async def start(cls, settings: Settings, url: str) -> Runtime:
        auth = Authenticator(settings)
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
        supervisor = Supervisor()
        supervisor.add("sequencer", sequencer.run)
        supervisor.add("listener", listener.run)
        for name, loop in hub.loops().items():
            supervisor.add(name, loop)
        supervisor.add("inbox-backlog", every(1.0, backlog.refresh), ceiling=1.0)
        supervisor.add(
            "backfill-metrics", every(5.0, lambda: backfill.refresh_metrics(db)), ceiling=5.0
        )
        trim_every = settings.retention_interval_seconds
        supervisor.add(
            "retention",
            every(trim_every, lambda: retention.trim(db, settings.retention_batch_rows)),
            ceiling=trim_every,
        )
        supervisor.start()
        return cls(
            settings,
            url,
            db,
            hub,
            sequencer,
            listener,
            backlog,
            auth,
            Admission(settings, hub, backlog),
            Inbox(db),
            supervisor,
        )

    def drain(self) -> None:
        """Shutting down: refuse new streams and end open ones so clients reconnect elsewhere."""
        self.hub.drain()

    async def stop(self) -> None:
        self.hub.drain()
        await self.supervisor.stop()
        await self.sequencer.stop()
        await self.db.close()
