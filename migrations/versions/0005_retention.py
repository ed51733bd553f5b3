"""Retention: per-topic policies, the low-water mark, and trim().

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.schema import PATTERN_PATTERN, RETENTION_LOCK, SCHEMA

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# The policy that governs a topic: an exact name wins over patterns, a longer pattern over a
# shorter one. Patterns use the stream selector's syntax: ``*`` is any run of characters.
POLICY = f"""
CREATE FUNCTION {SCHEMA}.retention_for(target text)
RETURNS {SCHEMA}.retention
LANGUAGE sql STABLE
AS $fn$
    SELECT r.* FROM {SCHEMA}.retention r
    WHERE r.pattern = target
       OR target LIKE replace(replace(r.pattern, '_', '\\_'), '*', '%')
    ORDER BY (r.pattern = target) DESC, length(r.pattern) DESC, r.pattern
    LIMIT 1
$fn$;
"""

# Remove events that retention no longer keeps, at most ``max_rows`` per call, so that each
# call is one short transaction: the caller repeats it until it removes nothing. Per topic it
# removes a prefix (seq < cut), then moves the topic's low-water mark (first_seq), keeps the
# hash and position of the last removed event (so verify() and multi-topic streams can
# still reason about what is gone) and moves consumers that had not acknowledged the removed
# events past them, counting what they missed. ``at`` stands for now (tests move it).
# Concurrent callers do not wait: one trims, the others return nothing.
TRIM = f"""
CREATE FUNCTION {SCHEMA}.trim(max_rows integer DEFAULT 5000, at timestamptz DEFAULT now())
RETURNS TABLE (topic text, first_seq bigint, removed bigint)
LANGUAGE plpgsql
AS $fn$
DECLARE
    t record;
    cut bigint;
    budget bigint := max_rows;
    tail record;
BEGIN
    IF NOT pg_try_advisory_xact_lock({RETENTION_LOCK}) THEN
        RETURN;
    END IF;
    FOR t IN
        SELECT tp.topic, tp.head, tp.first_seq, r.max_age, r.max_count
        FROM {SCHEMA}.topics tp
        CROSS JOIN LATERAL {SCHEMA}.retention_for(tp.topic) r
        WHERE tp.first_seq <= tp.head AND r.pattern IS NOT NULL
        ORDER BY tp.topic
    LOOP
        EXIT WHEN budget <= 0;
        cut := t.first_seq;
        IF t.max_count IS NOT NULL THEN
            cut := greatest(cut, t.head - t.max_count + 1);
        END IF;
        IF t.max_age IS NOT NULL THEN
            -- time grows with seq, so the expired events are a prefix; look at most one
            -- budget ahead.
            cut := greatest(cut, (
                SELECT coalesce(max(e.seq) + 1, t.first_seq)
                FROM (SELECT e.seq, e.time FROM {SCHEMA}.events e
                      WHERE e.topic = t.topic AND e.seq >= t.first_seq
                      ORDER BY e.seq LIMIT budget) e
                WHERE e.time < at - t.max_age));
        END IF;
        cut := least(cut, t.first_seq + budget);
        CONTINUE WHEN cut <= t.first_seq;

        SELECT e.hash, e.position INTO tail
        FROM {SCHEMA}.events e WHERE e.topic = t.topic AND e.seq = cut - 1;
        DELETE FROM {SCHEMA}.events e
        WHERE e.topic = t.topic AND e.seq >= t.first_seq AND e.seq < cut;
        UPDATE {SCHEMA}.topics tp
        SET first_seq = cut, tail_hash = tail.hash, tail_position = tail.position
        WHERE tp.topic = t.topic;
        UPDATE {SCHEMA}.consumer_topics ct
        SET skipped = ct.skipped + (cut - 1 - ct.acked_seq), skipped_upto = cut - 1,
            acked_seq = cut - 1
        WHERE ct.topic = t.topic AND ct.acked_seq < cut - 1;

        budget := budget - (cut - t.first_seq);
        topic := t.topic;
        first_seq := cut;
        removed := cut - t.first_seq;
        RETURN NEXT;
    END LOOP;
END
$fn$;
"""

# 0004's verify(), now starting at the low-water mark: the chain is seeded with the hash of
# the last removed event, and the first kept seq is first_seq rather than 1. Being STABLE,
# every query in it sees one snapshot, so a concurrent trim or sequencer step cannot make a
# sound chain look broken.
VERIFY = f"""
CREATE OR REPLACE FUNCTION {SCHEMA}.verify(target text)
RETURNS TABLE (seq bigint, problem text)
LANGUAGE plpgsql STABLE
AS $fn$
DECLARE
    mark {SCHEMA}.topics%ROWTYPE;
    checked bigint;
    last_hash bytea;
BEGIN
    SELECT * INTO mark FROM {SCHEMA}.topics t WHERE t.topic = target;
    mark.first_seq := coalesce(mark.first_seq, 1);
    RETURN QUERY
    WITH recomputed AS (
        SELECT e.seq, e.hash,
               mark.first_seq - 1 + row_number() OVER (ORDER BY e.seq) AS n,
               {SCHEMA}.chain_hash(
                   {SCHEMA}.event_content(e.topic, e.seq, e.type, e.data, e.time, e.event_id),
                   mark.tail_hash) OVER (ORDER BY e.seq) AS expected
        FROM {SCHEMA}.events e WHERE e.topic = target
    )
    SELECT r.seq,
           CASE WHEN r.seq <> r.n THEN format('seq %s missing', r.n)
                ELSE 'hash mismatch: the event or one before it was changed' END
    FROM recomputed r
    WHERE r.seq <> r.n OR r.hash IS DISTINCT FROM r.expected
    ORDER BY r.seq
    LIMIT 1;
    IF FOUND THEN
        RETURN;
    END IF;
    SELECT max(e.seq), (array_agg(e.hash ORDER BY e.seq DESC))[1] INTO checked, last_hash
    FROM {SCHEMA}.events e WHERE e.topic = target;
    checked := coalesce(checked, mark.first_seq - 1);
    last_hash := coalesce(last_hash, mark.tail_hash);
    IF coalesce(mark.head, 0) <> checked OR mark.head_hash IS DISTINCT FROM last_hash THEN
        RETURN QUERY SELECT checked + 1,
            format('the head says seq %s, the table ends at %s: events were removed or added',
                   coalesce(mark.head, 0), checked);
    END IF;
END
$fn$;
"""


def upgrade() -> None:
    op.create_table(
        "retention",
        # A topic name or a pattern with * (any run of characters).
        sa.Column("pattern", sa.Text, primary_key=True),
        sa.Column("max_age", sa.Interval),
        sa.Column("max_count", sa.BigInteger),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint(
            f"pattern ~ '{PATTERN_PATTERN}'",
            name="retention_pattern_format",
        ),
        sa.CheckConstraint("max_age > interval '0'", name="retention_max_age_positive"),
        sa.CheckConstraint("max_count >= 1", name="retention_max_count_positive"),
        schema=SCHEMA,
    )
    op.add_column(
        "topics",
        sa.Column("first_seq", sa.BigInteger, nullable=False, server_default="1"),
        schema=SCHEMA,
    )
    op.add_column("topics", sa.Column("tail_hash", sa.LargeBinary), schema=SCHEMA)
    op.add_column("topics", sa.Column("tail_position", sa.BigInteger), schema=SCHEMA)
    op.create_index("topics_tail_position", "topics", ["tail_position"], schema=SCHEMA)
    op.add_column(
        "consumer_topics",
        sa.Column("skipped", sa.BigInteger, nullable=False, server_default="0"),
        schema=SCHEMA,
    )
    op.add_column("consumer_topics", sa.Column("skipped_upto", sa.BigInteger), schema=SCHEMA)
    # Both tables churn: the inbox is emptied by every sequencer step and retention deletes
    # from the old end of events. Vacuum them often so that the space is reused, not grown.
    op.execute(
        f"ALTER TABLE {SCHEMA}.inbox SET (autovacuum_vacuum_scale_factor = 0, "
        "autovacuum_vacuum_threshold = 10000)"
    )
    op.execute(f"ALTER TABLE {SCHEMA}.events SET (autovacuum_vacuum_scale_factor = 0.02)")
    op.execute(POLICY)
    op.execute(TRIM)
    op.execute(VERIFY)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {SCHEMA}.trim(integer, timestamptz)")
    op.execute(f"DROP FUNCTION {SCHEMA}.retention_for(text)")
    op.execute(f"ALTER TABLE {SCHEMA}.events RESET (autovacuum_vacuum_scale_factor)")
    op.execute(
        f"ALTER TABLE {SCHEMA}.inbox RESET (autovacuum_vacuum_scale_factor, "
        "autovacuum_vacuum_threshold)"
    )
    op.drop_column("consumer_topics", "skipped_upto", schema=SCHEMA)
    op.drop_column("consumer_topics", "skipped", schema=SCHEMA)
    op.drop_index("topics_tail_position", "topics", schema=SCHEMA)
    op.drop_column("topics", "tail_position", schema=SCHEMA)
    op.drop_column("topics", "tail_hash", schema=SCHEMA)
    op.drop_column("topics", "first_seq", schema=SCHEMA)
    op.drop_table("retention", schema=SCHEMA)
    # 0004's verify() is restored by re-running its definition.
    from importlib import import_module

    chain = import_module("migrations.versions.0004_hash_chain")
    op.execute(chain.VERIFY.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
