"""Core: inbox, events, topic heads, the sequencer, and the SQL publish function.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen with this revision (a migration never imports the code it migrates for).
EVENTS_CHANNEL = "changefeed_events"
SCHEMA = "changefeed"
SEQUENCE_LOCK = 4_210_881_002
TOPIC_PATTERN = r"^[A-Za-z0-9._:-]{1,200}$"
TYPE_PATTERN = r"^[^[:cntrl:]]{1,200}$"

# Writers only INSERT here: no lock and no NOTIFY in their transactions, so they never wait
# for each other. Limit for SQL producers: the changefeed.max_event_bytes setting
# (ALTER DATABASE … SET changefeed.max_event_bytes = …), 64 KiB when unset.
PUBLISH = f"""
CREATE FUNCTION {SCHEMA}.publish(topic text, type text, data jsonb, id text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
AS $fn$
DECLARE
    max_bytes integer := coalesce(
        nullif(current_setting('changefeed.max_event_bytes', true), '')::integer, 65536);
    size integer := octet_length(coalesce(publish.data, 'null'::jsonb)::text);
BEGIN
    IF publish.topic IS NULL OR publish.topic !~ '{TOPIC_PATTERN}' THEN
        RAISE EXCEPTION 'changefeed.publish: invalid topic %', quote_nullable(publish.topic)
            USING ERRCODE = '22023', HINT = 'A topic matches [A-Za-z0-9._:-]{{1,200}}.';
    END IF;
    IF publish.type IS NULL OR publish.type !~ '{TYPE_PATTERN}' THEN
        RAISE EXCEPTION 'changefeed.publish: invalid type %', quote_nullable(publish.type)
            USING ERRCODE = '22023', HINT = 'A type is 1 to 200 characters, no control characters.';
    END IF;
    IF size > max_bytes THEN
        RAISE EXCEPTION 'changefeed.publish: event data is % bytes, over the limit of %',
            size, max_bytes USING ERRCODE = '54000';
    END IF;
    INSERT INTO {SCHEMA}.inbox (topic, type, data, event_id)
    VALUES (publish.topic, publish.type, coalesce(publish.data, 'null'::jsonb), publish.id);
END
$fn$;
"""

# One sequencer step, in one transaction: take committed inbox rows in inbox order, drop
# retries of an already stored client id, number them after each topic's head and after the
# global position, store them, and send one notification for the whole batch. Steps are
# serialised by a transaction lock, so every reader sees a gap-free prefix of every topic.
SEQUENCE = f"""
CREATE FUNCTION {SCHEMA}.sequence(max_rows integer DEFAULT 1000,
                                  OUT consumed integer, OUT sequenced integer)
LANGUAGE plpgsql
AS $fn$
DECLARE
    last_position bigint;
    heads jsonb;
    hint text;
BEGIN
    PERFORM pg_advisory_xact_lock({SEQUENCE_LOCK});

    WITH batch AS (
        DELETE FROM {SCHEMA}.inbox
        WHERE id IN (SELECT id FROM {SCHEMA}.inbox ORDER BY id LIMIT max_rows)
        RETURNING id, topic, type, data, event_id, published_at
    ),
    fresh AS (
        SELECT b.id, b.topic, b.type, b.data, b.event_id, b.published_at
        FROM (
            SELECT batch.*,
                   row_number() OVER (PARTITION BY batch.topic, batch.event_id
                                      ORDER BY batch.id) AS copy
            FROM batch
        ) b
        WHERE b.event_id IS NULL
           OR (b.copy = 1 AND NOT EXISTS (
                   SELECT 1 FROM {SCHEMA}.events e
                   WHERE e.topic = b.topic AND e.event_id = b.event_id))
    ),
    counts AS (
        SELECT fresh.topic, count(*) AS n FROM fresh GROUP BY fresh.topic
    ),
    new_heads AS (
        INSERT INTO {SCHEMA}.topics AS t (topic, head)
        SELECT counts.topic, counts.n FROM counts
        ON CONFLICT (topic) DO UPDATE SET head = t.head + excluded.head
        RETURNING t.topic, t.head
    ),
    advanced AS (
        UPDATE {SCHEMA}.sequencer s SET position = s.position + (SELECT count(*) FROM fresh)
        RETURNING s.position
    ),
    stored AS (
        INSERT INTO {SCHEMA}.events
            (topic, seq, position, type, data, event_id, time, published_at)
        SELECT f.topic,
               h.head - c.n + row_number() OVER (PARTITION BY f.topic ORDER BY f.id),
               a.position - (SELECT count(*) FROM fresh) + row_number() OVER (ORDER BY f.id),
               f.type, f.data, f.event_id, now(), f.published_at
        FROM fresh f
        JOIN counts c ON c.topic = f.topic
        JOIN new_heads h ON h.topic = f.topic
        CROSS JOIN advanced a
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM batch),
           (SELECT count(*) FROM stored),
           (SELECT max(advanced.position) FROM advanced),
           (SELECT jsonb_object_agg(new_heads.topic, new_heads.head) FROM new_heads)
    INTO consumed, sequenced, last_position, heads;

    IF sequenced > 0 THEN
        -- A hint, not the data: which topics moved and to which head. NOTIFY payloads must
        -- stay under 8000 bytes; without "topics" a replica re-reads all the heads it needs.
        hint := jsonb_build_object('position', last_position, 'topics', heads)::text;
        IF octet_length(hint) > 7900 THEN
            hint := jsonb_build_object('position', last_position)::text;
        END IF;
        PERFORM pg_notify('{EVENTS_CHANNEL}', hint);
    END IF;
END
$fn$;
"""


def upgrade() -> None:
    # Spelled out rather than taken from service/schema.py: a migration is a frozen record of
    # one step. tests/test_cli.py checks that the migrated schema equals the metadata.
    op.create_table(
        "inbox",
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
        sa.CheckConstraint(f"topic ~ '{TOPIC_PATTERN}'", name="inbox_topic_format"),
        sa.CheckConstraint(f"type ~ '{TYPE_PATTERN}'", name="inbox_type_format"),
        sa.CheckConstraint("length(event_id) BETWEEN 1 AND 200", name="inbox_event_id_length"),
        schema=SCHEMA,
    )
    op.create_table(
        "events",
        sa.Column("topic", sa.Text, primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False, unique=True),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("data", JSONB, nullable=False),
        sa.Column("event_id", sa.Text),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
    op.create_index(
        "events_topic_event_id",
        "events",
        ["topic", "event_id"],
        unique=True,
        postgresql_where=sa.text("event_id IS NOT NULL"),
        schema=SCHEMA,
    )
    op.create_table(
        "topics",
        sa.Column("topic", sa.Text, primary_key=True),
        sa.Column("head", sa.BigInteger, nullable=False),
        schema=SCHEMA,
    )
    op.create_table(
        "sequencer",
        sa.Column("one", sa.Boolean, primary_key=True, server_default=sa.true()),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.CheckConstraint("one", name="sequencer_single_row"),
        schema=SCHEMA,
    )
    op.execute(f"INSERT INTO {SCHEMA}.sequencer (one, position) VALUES (true, 0)")
    op.execute(PUBLISH)
    op.execute(SEQUENCE)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {SCHEMA}.sequence(integer)")
    op.execute(f"DROP FUNCTION {SCHEMA}.publish(text, text, jsonb, text)")
    for table in ("sequencer", "topics", "events", "inbox"):
        op.drop_table(table, schema=SCHEMA)
