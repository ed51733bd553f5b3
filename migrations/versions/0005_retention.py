"""Retention and compaction: per-topic policies, the low-water mark, and trim().

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Frozen with this revision (a migration never imports the code it migrates for).
PATTERN_PATTERN = r"^[A-Za-z0-9._:*-]{1,200}$"
RETENTION_LOCK = 4_210_881_004
SCHEMA = "changefeed"

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

# Compaction of the range lo <= seq < hi of a keyed topic: of the events that name a key
# (``data.key``, with ``data.table`` when present, as captured changes carry them), only the
# latest per key stays, and it replaces the one kept for that key by earlier rounds; a
# truncate supersedes every earlier event of its table. Events without a key are kept.
COMPACT = f"""
CREATE FUNCTION {SCHEMA}.compact_range(target text, lo bigint, hi bigint)
RETURNS void
LANGUAGE plpgsql
AS $fn$
DECLARE
    truncated record;
    keys jsonb[];
    seqs bigint[];
BEGIN
    FOR truncated IN
        SELECT e.data -> 'table' AS tbl, max(e.seq) AS seq
        FROM {SCHEMA}.events e
        WHERE e.topic = target AND e.seq >= lo AND e.seq < hi
          AND e.type = 'truncate' AND e.data ->> 'op' = 'truncate'
        GROUP BY 1
    LOOP
        DELETE FROM {SCHEMA}.events e
        WHERE e.topic = target AND e.seq < truncated.seq
          AND e.data -> 'table' IS NOT DISTINCT FROM truncated.tbl
          AND (e.data ? 'key' OR e.data ->> 'op' = 'truncate');
        DELETE FROM {SCHEMA}.compaction_keys k
        WHERE k.topic = target AND k.key -> 0 IS NOT DISTINCT FROM truncated.tbl;
    END LOOP;

    SELECT array_agg(l.k), array_agg(l.seq) INTO keys, seqs
    FROM (
        SELECT DISTINCT ON (k) k, e.seq
        FROM {SCHEMA}.events e,
             LATERAL (SELECT jsonb_build_array(e.data -> 'table', e.data -> 'key') AS k) named
        WHERE e.topic = target AND e.seq >= lo AND e.seq < hi
          AND jsonb_typeof(e.data) = 'object' AND e.data ? 'key'
        ORDER BY k, e.seq DESC
    ) l;
    IF keys IS NULL THEN
        RETURN;
    END IF;
    -- Events kept by earlier rounds for these keys are superseded now.
    DELETE FROM {SCHEMA}.events e
    USING {SCHEMA}.compaction_keys k
    WHERE k.topic = target AND k.key = ANY (keys) AND e.topic = target AND e.seq = k.seq;
    -- So is every keyed event of this range but the latest of its key.
    DELETE FROM {SCHEMA}.events e
    WHERE e.topic = target AND e.seq >= lo AND e.seq < hi
      AND jsonb_typeof(e.data) = 'object' AND e.data ? 'key'
      AND e.seq <> ALL (seqs);
    INSERT INTO {SCHEMA}.compaction_keys (topic, key, seq)
    SELECT target, u.k, u.seq FROM unnest(keys, seqs) AS u(k, seq)
    ON CONFLICT (topic, key) DO UPDATE SET seq = excluded.seq;
END
$fn$;
"""

# 0002's capture trigger, but an UPDATE that changes the row's key becomes two events, a
# delete of the old key and an insert of the new one (as Debezium does): every event then
# concerns one key, which compaction relies on to keep the latest event per key.
CAPTURE_ROW = f"""
CREATE OR REPLACE FUNCTION {SCHEMA}.capture_row() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
DECLARE
    topic text := TG_ARGV[0];
    key_columns text[] := TG_ARGV[1:TG_NARGS - 1];
    row_new jsonb;
    row_old jsonb;
    key_new jsonb;
    key_old jsonb;
    table_name text := format('%s.%s', TG_TABLE_SCHEMA, TG_TABLE_NAME);
    changes jsonb[];
    change jsonb;
    max_bytes integer := coalesce(
        nullif(current_setting('changefeed.max_event_bytes', true), '')::integer, 65536);
BEGIN
    IF TG_OP <> 'DELETE' THEN
        row_new := to_jsonb(NEW);
        key_new := (SELECT jsonb_object_agg(k, row_new -> k) FROM unnest(key_columns) AS k);
    END IF;
    IF TG_OP <> 'INSERT' THEN
        row_old := to_jsonb(OLD);
        key_old := (SELECT jsonb_object_agg(k, row_old -> k) FROM unnest(key_columns) AS k);
    END IF;
    IF TG_OP = 'UPDATE' AND key_new IS DISTINCT FROM key_old THEN
        changes := ARRAY[
            jsonb_build_object('table', table_name, 'op', 'delete', 'key', key_old,
                               'old', row_old),
            jsonb_build_object('table', table_name, 'op', 'insert', 'key', key_new,
                               'new', row_new)];
    ELSE
        -- The row's key before the change (its new key for an insert).
        change := jsonb_build_object('table', table_name, 'op', lower(TG_OP),
                                     'key', coalesce(key_old, key_new));
        IF row_new IS NOT NULL THEN change := change || jsonb_build_object('new', row_new); END IF;
        IF row_old IS NOT NULL THEN change := change || jsonb_build_object('old', row_old); END IF;
        changes := ARRAY[change];
    END IF;
    FOREACH change IN ARRAY changes LOOP
        IF octet_length(change::text) > max_bytes THEN
            RAISE EXCEPTION 'changefeed capture of %: the % event is % bytes, over the limit of %',
                table_name, change ->> 'op', octet_length(change::text), max_bytes
                USING ERRCODE = '54000',
                      HINT = 'Raise changefeed.max_event_bytes, or keep large values out.';
        END IF;
        INSERT INTO {SCHEMA}.inbox (topic, type, data) VALUES (topic, change ->> 'op', change);
    END LOOP;
    RETURN NULL;
END
$fn$;
"""

# Remove events that retention no longer keeps, at most ``max_rows`` per call, so that each
# call is one short transaction: the caller repeats it until it removes nothing. Per topic it
# removes a prefix (seq < cut), then moves the topic's low-water mark (first_seq), keeps the
# hash and position of the last removed event (so verify() and multi-topic streams can
# still reason about what is gone) and moves consumers that had not acknowledged the removed
# events past them, counting what they missed. A compacting policy compacts the prefix
# instead of removing it: below the mark the topic then holds a snapshot (the latest event
# per key), which readers get without a gap being reported. ``at`` stands for now (tests).
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
        SELECT tp.topic, tp.head, tp.first_seq, tp.compacted, r.max_age, r.max_count,
               r.compact
        FROM {SCHEMA}.topics tp
        CROSS JOIN LATERAL {SCHEMA}.retention_for(tp.topic) r
        WHERE tp.first_seq <= tp.head AND r.pattern IS NOT NULL
        ORDER BY tp.topic
    LOOP
        EXIT WHEN budget <= 0;
        -- With neither bound, a compacting policy compacts everything.
        cut := CASE WHEN t.compact AND t.max_count IS NULL AND t.max_age IS NULL
                    THEN t.head + 1 ELSE t.first_seq END;
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
        IF t.compact THEN
            PERFORM {SCHEMA}.compact_range(t.topic, t.first_seq, cut);
        ELSE
            -- Below the mark too: a snapshot left by an earlier compacting policy.
            DELETE FROM {SCHEMA}.events e WHERE e.topic = t.topic AND e.seq < cut;
            DELETE FROM {SCHEMA}.compaction_keys k WHERE k.topic = t.topic;
            UPDATE {SCHEMA}.consumer_topics ct
            SET skipped = ct.skipped + (cut - 1 - ct.acked_seq), skipped_upto = cut - 1,
                acked_seq = cut - 1
            WHERE ct.topic = t.topic AND ct.acked_seq < cut - 1;
        END IF;
        UPDATE {SCHEMA}.topics tp
        SET first_seq = cut, tail_hash = tail.hash, tail_position = tail.position,
            compacted = t.compact
        WHERE tp.topic = t.topic;

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
# the last event before it, and the first seq checked is first_seq rather than 1 (a
# compacted snapshot below the mark is not a chain: its links were removed). Being STABLE,
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
        FROM {SCHEMA}.events e WHERE e.topic = target AND e.seq >= mark.first_seq
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
    FROM {SCHEMA}.events e WHERE e.topic = target AND e.seq >= mark.first_seq;
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
        sa.Column("compact", sa.Boolean, nullable=False, server_default=sa.false()),
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
    op.add_column(
        "topics",
        sa.Column("compacted", sa.Boolean, nullable=False, server_default=sa.false()),
        schema=SCHEMA,
    )
    op.create_index("topics_tail_position", "topics", ["tail_position"], schema=SCHEMA)
    op.create_table(
        "compaction_keys",
        sa.Column("topic", sa.Text, primary_key=True),
        sa.Column("key", JSONB, primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        schema=SCHEMA,
    )
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
    op.execute(CAPTURE_ROW)
    op.execute(POLICY)
    op.execute(COMPACT)
    op.execute(TRIM)
    op.execute(VERIFY)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {SCHEMA}.trim(integer, timestamptz)")
    op.execute(f"DROP FUNCTION {SCHEMA}.compact_range(text, bigint, bigint)")
    op.execute(f"DROP FUNCTION {SCHEMA}.retention_for(text)")
    op.drop_table("compaction_keys", schema=SCHEMA)
    op.execute(f"ALTER TABLE {SCHEMA}.events RESET (autovacuum_vacuum_scale_factor)")
    op.execute(
        f"ALTER TABLE {SCHEMA}.inbox RESET (autovacuum_vacuum_scale_factor, "
        "autovacuum_vacuum_threshold)"
    )
    op.drop_column("consumer_topics", "skipped_upto", schema=SCHEMA)
    op.drop_column("consumer_topics", "skipped", schema=SCHEMA)
    op.drop_index("topics_tail_position", "topics", schema=SCHEMA)
    op.drop_column("topics", "compacted", schema=SCHEMA)
    op.drop_column("topics", "tail_position", schema=SCHEMA)
    op.drop_column("topics", "tail_hash", schema=SCHEMA)
    op.drop_column("topics", "first_seq", schema=SCHEMA)
    op.drop_table("retention", schema=SCHEMA)
    # 0004's verify() and 0002's capture trigger are restored by re-running them.
    chain = _revision("0004_hash_chain")
    op.execute(chain.VERIFY.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    capture = _revision("0002_capture")
    op.execute(capture.CAPTURE_ROW.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))


def _revision(name: str) -> ModuleType:
    """An earlier revision, loaded from its file beside this one: in a source checkout and
    in the installed wheel alike (they are not importable as a package there)."""
    spec = importlib.util.spec_from_file_location(
        f"changefeed_revision_{name}", Path(__file__).with_name(f"{name}.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
