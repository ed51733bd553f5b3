"""The database schema as SQLAlchemy Core metadata; the migrations create exactly this.

The path of an event through these tables:
``inbox`` (written by any publisher, unordered) -> the sequencer -> ``events`` (numbered),
with ``topics`` holding each topic's head and ``sequencer`` the global position counter.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID

SCHEMA = "changefeed"
# pg_notify channels: sequenced batches (hints for replicas) and wake-ups for the sequencer.
EVENTS_CHANNEL = "changefeed_events"
WAKE_CHANNEL = "changefeed_wake"

metadata = sa.MetaData(schema=SCHEMA)

inbox = sa.Table(
    "inbox",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
    sa.Column("topic", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("data", JSONB, nullable=False),
    sa.Column("event_id", sa.Text),
    sa.Column(
        "published_at",
        sa.DateTime(timezone=True),
        nullable=False,
        server_default=sa.text("clock_timestamp()"),
    ),
    # Topic, type, id and data, one rule for every path (changefeed.event_ok(), 0008).
    sa.CheckConstraint(f"{SCHEMA}.event_ok(topic, type, event_id, data)", name="inbox_event_rules"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("topic", sa.Text, primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    # Gapless across all topics, in sequencing order.
    sa.Column("position", sa.BigInteger, nullable=False, unique=True),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("data", JSONB, nullable=False),
    sa.Column("event_id", sa.Text),
    # When the sequencer numbered it: non-decreasing along seq.
    sa.Column("time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
    # sha256(previous event's hash || canonical content): see changefeed.verify().
    sa.Column("hash", sa.LargeBinary),
    sa.Index(
        "events_topic_event_id",
        "topic",
        "event_id",
        unique=True,
        postgresql_where=sa.text("event_id IS NOT NULL"),
    ),
)

topics = sa.Table(
    "topics",
    metadata,
    sa.Column("topic", sa.Text, primary_key=True),
    sa.Column("head", sa.BigInteger, nullable=False),
    # The chain hash of the head event: the next event chains from it.
    sa.Column("head_hash", sa.LargeBinary),
    # The low-water mark: retention removed every event before this seq.
    sa.Column("first_seq", sa.BigInteger, nullable=False, server_default="1"),
    # The chain hash and global position of the last removed event (seq first_seq - 1).
    sa.Column("tail_hash", sa.LargeBinary),
    sa.Column("tail_position", sa.BigInteger),
    # Below first_seq a compacting policy left a snapshot (the latest event per key).
    sa.Column("compacted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("topics_tail_position", "tail_position"),
)

compaction_keys = sa.Table(
    "compaction_keys",
    metadata,
    # The event a compacted topic keeps for a key ([data.table, data.key]).
    sa.Column("topic", sa.Text, primary_key=True),
    sa.Column("key", JSONB, primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
)

retention = sa.Table(
    "retention",
    metadata,
    # A topic name or a pattern with * (any run of characters); the most specific one wins.
    sa.Column("pattern", sa.Text, primary_key=True),
    sa.Column("max_age", sa.Interval),
    sa.Column("max_count", sa.BigInteger),
    # Compact (keep the latest event per key) what is beyond the bounds, instead of removing.
    sa.Column("compact", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column(
        "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.CheckConstraint(f"{SCHEMA}.valid_pattern(pattern)", name="retention_pattern_format"),
    sa.CheckConstraint("max_age > interval '0'", name="retention_max_age_positive"),
    sa.CheckConstraint("max_count >= 1", name="retention_max_count_positive"),
)

sequencer = sa.Table(
    "sequencer",
    metadata,
    # A single row: the last global position handed out.
    sa.Column("one", sa.Boolean, primary_key=True, server_default=sa.true()),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.CheckConstraint("one", name="sequencer_single_row"),
)

captures = sa.Table(
    "captures",
    metadata,
    # The captured table as schema.table (text, not an oid, so that it survives dump/restore).
    sa.Column("table_name", sa.Text, primary_key=True),
    sa.Column("topic", sa.Text, nullable=False),
    sa.Column("key_columns", sa.ARRAY(sa.Text), nullable=False),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    # Columns left out of every event (0010).
    sa.Column(
        "excluded_columns", sa.ARRAY(sa.Text), nullable=False, server_default=sa.text("'{}'")
    ),
    # Only rows satisfying this SQL condition are published (0011); NULL: every row.
    sa.Column("row_filter", sa.Text),
)

# The first key of the advisory lock a running backfill holds (the second is its run id,
# modulo 2^31 - 1), as migration 0011 takes it.
BACKFILL_LOCK = 1667588710

# Each backfill run and its progress, written as each chunk commits (0011).
backfills = sa.Table(
    "backfills",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("table_name", sa.Text, nullable=False),
    sa.Column("topic", sa.Text, nullable=False),
    sa.Column("row_filter", sa.Text),
    sa.Column("state", sa.Text, nullable=False, server_default=sa.text("'running'")),
    sa.Column("rows_read", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("rows_estimate", sa.BigInteger),
    sa.Column("last_key", sa.ARRAY(sa.Text)),
    sa.Column("error", sa.Text),
    # The session running it; while it runs, that session also holds the advisory lock
    # (BACKFILL_LOCK, id): a run whose state says running without it was interrupted.
    sa.Column("runner_pid", sa.Integer, nullable=False),
    # sha256 of a secret only the running procedure knows (its reports and events).
    sa.Column("token_hash", sa.LargeBinary, nullable=False),
    sa.Column(
        "started_at",
        sa.DateTime(timezone=True),
        nullable=False,
        server_default=sa.func.clock_timestamp(),
    ),
    sa.Column(
        "updated_at",
        sa.DateTime(timezone=True),
        nullable=False,
        server_default=sa.func.clock_timestamp(),
    ),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint(
        "state IN ('running', 'done', 'failed', 'cancelled')", name="backfills_state_check"
    ),
    sa.Index("backfills_table", "table_name", "id"),
)

consumers = sa.Table(
    "consumers",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("selection", sa.ARRAY(sa.Text), nullable=False),
    sa.Column("topics", sa.ARRAY(sa.Text), nullable=False),
    sa.Column("patterns", sa.ARRAY(sa.Text), nullable=False),
    sa.Column("visibility_timeout", sa.Interval, nullable=False),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    # The subject that created it (a token's `sub`); NULL without authentication.
    sa.Column("owner", sa.Text),
    sa.CheckConstraint(f"{SCHEMA}.valid_topic(name)", name="consumers_name_format"),
)

consumer_topics = sa.Table(
    "consumer_topics",
    metadata,
    sa.Column(
        "consumer",
        sa.Text,
        sa.ForeignKey(f"{SCHEMA}.consumers.name", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("topic", sa.Text, primary_key=True),
    sa.Column("acked_seq", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("lease", UUID(as_uuid=True)),
    sa.Column("lease_expires", sa.DateTime(timezone=True)),
    sa.Column("leased_seq", sa.BigInteger),
    # Events that retention removed before this consumer acknowledged them, and the last.
    sa.Column("skipped", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("skipped_upto", sa.BigInteger),
)

# The role that may call changefeed.publish() and nothing else (GRANT it to producers).
PRODUCER_ROLE = "changefeed_producer"

# Advisory lock keys (bigint). Applications sharing the database should not use these.
MIGRATE_LOCK = 4_210_881_001
# Taken by changefeed.sequence() for its transaction: numbering never interleaves.
SEQUENCE_LOCK = 4_210_881_002
# Held for its session by the replica elected to run the sequencer.
ELECTION_LOCK = 4_210_881_003
# Taken by changefeed.trim() for its transaction: one replica enforces retention at a time.
RETENTION_LOCK = 4_210_881_004


def set_max_event_bytes(limit: int) -> str:
    """The statements that make ``limit`` the size limit of event data as stored (for every
    path: the inbox checks it). Replacing the function takes effect for statements that
    start afterwards; nothing is done when it already returns ``limit``."""
    if not 0 < int(limit) <= MAX_EVENT_BYTES_CEILING:
        raise ValueError(f"max_event_bytes must be between 1 and {MAX_EVENT_BYTES_CEILING}")
    return f"""
        DO $do$
        BEGIN
            IF {SCHEMA}.max_event_bytes() IS DISTINCT FROM {int(limit)} THEN
                CREATE OR REPLACE FUNCTION {SCHEMA}.max_event_bytes() RETURNS integer
                LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN {int(limit)};
            END IF;
        END
        $do$
    """


# PostgreSQL's text values stop at 1 GB; a quarter of that is the most an event may be.
MAX_EVENT_BYTES_CEILING = 1 << 28


def owned(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Alembic filter: only changefeed's own tables (not the application's, nor its own
    version table) are compared by autogenerate."""
    if type_ != "table":
        return True
    return getattr(obj, "schema", None) == SCHEMA and name != "alembic_version"
