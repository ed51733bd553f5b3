"""Durable consumers: named cursors per topic, and leases that share the work.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Frozen with this revision (a migration never imports the code it migrates for).
SCHEMA = "changefeed"
TOPIC_PATTERN = r"^[A-Za-z0-9._:-]{1,200}$"

# Hand a batch to one worker of a consumer. Work is shared by topic: a worker leases the
# topics it gets events of, so no two workers hold events of one topic at once and each
# topic is processed in order; a lease not acknowledged within the visibility timeout
# lapses and its events are handed out again. FOR UPDATE SKIP LOCKED keeps concurrent
# pollers apart while they choose.
LEASE = f"""
CREATE FUNCTION {SCHEMA}.lease(consumer_name text, max_events integer)
RETURNS TABLE (lease uuid, expires_at timestamptz, "position" bigint, topic text,
               seq bigint, type text, data jsonb, "time" timestamptz, event_id text)
LANGUAGE plpgsql
AS $fn$
DECLARE
    c {SCHEMA}.consumers%ROWTYPE;
    new_lease uuid := gen_random_uuid();
    expires timestamptz;
BEGIN
    SELECT * INTO c FROM {SCHEMA}.consumers WHERE name = consumer_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no consumer named %', quote_literal(consumer_name)
            USING ERRCODE = 'P0002';
    END IF;
    expires := clock_timestamp() + c.visibility_timeout;
    -- Topics that appeared since the last poll start from their first event.
    INSERT INTO {SCHEMA}.consumer_topics (consumer, topic)
    SELECT c.name, t.topic FROM {SCHEMA}.topics t
    WHERE t.topic = ANY (c.topics) OR t.topic LIKE ANY (c.patterns)
    ON CONFLICT DO NOTHING;

    RETURN QUERY
    WITH free AS (
        SELECT ct.topic, ct.acked_seq
        FROM {SCHEMA}.consumer_topics ct
        JOIN {SCHEMA}.topics t ON t.topic = ct.topic
        WHERE ct.consumer = c.name
          AND t.head > ct.acked_seq
          AND (ct.lease IS NULL OR ct.lease_expires < clock_timestamp())
        -- Oldest pending event first, so that no topic starves.
        ORDER BY (SELECT e.position FROM {SCHEMA}.events e
                  WHERE e.topic = ct.topic AND e.seq = ct.acked_seq + 1)
        LIMIT max_events
        FOR UPDATE OF ct SKIP LOCKED
    ),
    picked AS (
        SELECT e.position, e.topic, e.seq, e.type, e.data, e.time, e.event_id
        FROM free f
        CROSS JOIN LATERAL (
            SELECT * FROM {SCHEMA}.events e
            WHERE e.topic = f.topic AND e.seq > f.acked_seq
            ORDER BY e.seq LIMIT max_events
        ) e
        -- Positions grow with seq within a topic: each topic gets a prefix of what it owes.
        ORDER BY e.position
        LIMIT max_events
    ),
    leased AS (
        UPDATE {SCHEMA}.consumer_topics ct
        SET lease = new_lease, lease_expires = expires, leased_seq = p.last_seq
        FROM (SELECT picked.topic, max(picked.seq) AS last_seq FROM picked
              GROUP BY picked.topic) p
        WHERE ct.consumer = c.name AND ct.topic = p.topic
        RETURNING ct.topic
    )
    SELECT new_lease, expires, p.position, p.topic, p.seq, p.type, p.data, p.time, p.event_id
    FROM picked p
    WHERE p.topic IN (SELECT leased.topic FROM leased)
    ORDER BY p.position;
END
$fn$;
"""

# Acknowledge a lease up to a global position (all of it when NULL): each leased topic's
# cursor moves to its last event at or before that position, and the lease ends; events
# after it are handed out again. A lease that lapsed and went to another worker is gone.
ACK = f"""
CREATE FUNCTION {SCHEMA}.ack(consumer_name text, lease_id uuid, upto bigint DEFAULT NULL)
RETURNS TABLE (topic text, acked_seq bigint)
LANGUAGE plpgsql
AS $fn$
BEGIN
    RETURN QUERY
    UPDATE {SCHEMA}.consumer_topics ct
    SET acked_seq = coalesce(
            (SELECT max(e.seq) FROM {SCHEMA}.events e
             WHERE e.topic = ct.topic AND e.seq > ct.acked_seq AND e.seq <= ct.leased_seq
               AND (upto IS NULL OR e.position <= upto)),
            ct.acked_seq),
        lease = NULL, lease_expires = NULL, leased_seq = NULL
    WHERE ct.consumer = consumer_name AND ct.lease = lease_id
    RETURNING ct.topic, ct.acked_seq;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lease % is not held by consumer %: it lapsed and its events were '
                        'handed out again, or it was already acknowledged',
                        lease_id, quote_literal(consumer_name)
            USING ERRCODE = '55000';
    END IF;
END
$fn$;
"""


def upgrade() -> None:
    op.create_table(
        "consumers",
        sa.Column("name", sa.Text, primary_key=True),
        # As given (names and patterns), and split for matching: exact names, LIKE patterns.
        sa.Column("selection", sa.ARRAY(sa.Text), nullable=False),
        sa.Column("topics", sa.ARRAY(sa.Text), nullable=False),
        sa.Column("patterns", sa.ARRAY(sa.Text), nullable=False),
        sa.Column("visibility_timeout", sa.Interval, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint(f"name ~ '{TOPIC_PATTERN}'", name="consumers_name_format"),
        schema=SCHEMA,
    )
    op.create_table(
        "consumer_topics",
        sa.Column(
            "consumer",
            sa.Text,
            sa.ForeignKey(f"{SCHEMA}.consumers.name", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("topic", sa.Text, primary_key=True),
        # The cursor: every event of the topic up to this seq is acknowledged.
        sa.Column("acked_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("lease", UUID(as_uuid=True)),
        sa.Column("lease_expires", sa.DateTime(timezone=True)),
        sa.Column("leased_seq", sa.BigInteger),
        schema=SCHEMA,
    )
    op.execute(LEASE)
    op.execute(ACK)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {SCHEMA}.ack(text, uuid, bigint)")
    op.execute(f"DROP FUNCTION {SCHEMA}.lease(text, integer)")
    op.drop_table("consumer_topics", schema=SCHEMA)
    op.drop_table("consumers", schema=SCHEMA)
