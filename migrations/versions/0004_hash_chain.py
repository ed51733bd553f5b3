"""Hash chain: every event carries a hash over its predecessor's hash and its own content.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Frozen with this revision (a migration never imports the code it migrates for).
EVENTS_CHANNEL = "changefeed_events"
SCHEMA = "changefeed"
SEQUENCE_LOCK = 4_210_881_002

# The canonical content of an event: a JSON array [topic, seq, type, data, time, id] as
# PostgreSQL's jsonb prints it (keys sorted, fixed spacing), time in UTC with microseconds.
CONTENT = f"""
CREATE FUNCTION {SCHEMA}.event_content(topic text, seq bigint, type text, data jsonb,
                                        "time" timestamptz, event_id text)
RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $fn$
    SELECT convert_to(jsonb_build_array(
        topic, seq, type, data,
        to_char("time" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        event_id)::text, 'UTF8')
$fn$;
"""

# hash(n) = sha256(hash(n-1) || content(n)); the first event of a topic chains from nothing.
# As a running aggregate, a window function computes a whole batch's chain in one pass,
# starting from ``seed`` (the topic's head hash before the batch).
CHAIN = f"""
CREATE FUNCTION {SCHEMA}.chain_step(state bytea, content bytea, seed bytea)
RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $fn$
    SELECT sha256(coalesce(state, seed, ''::bytea) || content)
$fn$;
"""

CHAIN_AGGREGATE = f"""
CREATE AGGREGATE {SCHEMA}.chain_hash(content bytea, seed bytea) (
    SFUNC = {SCHEMA}.chain_step,
    STYPE = bytea
);
"""

# The sequencer step of 0001, now also chaining each event to its predecessor.
SEQUENCE = f"""
CREATE OR REPLACE FUNCTION {SCHEMA}.sequence(max_rows integer DEFAULT 1000,
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
    numbered AS (
        SELECT f.*,
               coalesce(t.head, 0)
                   + row_number() OVER (PARTITION BY f.topic ORDER BY f.id) AS seq,
               (SELECT s.position FROM {SCHEMA}.sequencer s)
                   + row_number() OVER (ORDER BY f.id) AS position,
               t.head_hash AS seed,
               now() AS stamp
        FROM fresh f
        LEFT JOIN {SCHEMA}.topics t ON t.topic = f.topic
    ),
    hashed AS (
        SELECT n.*,
               {SCHEMA}.chain_hash(
                   {SCHEMA}.event_content(n.topic, n.seq, n.type, n.data, n.stamp, n.event_id),
                   n.seed) OVER (PARTITION BY n.topic ORDER BY n.seq) AS hash
        FROM numbered n
    ),
    stored AS (
        INSERT INTO {SCHEMA}.events
            (topic, seq, position, type, data, event_id, time, published_at, hash)
        SELECT h.topic, h.seq, h.position, h.type, h.data, h.event_id, h.stamp,
               h.published_at, h.hash
        FROM hashed h
        RETURNING 1
    ),
    new_heads AS (
        INSERT INTO {SCHEMA}.topics AS t (topic, head, head_hash)
        SELECT DISTINCT ON (h.topic) h.topic, h.seq, h.hash
        FROM hashed h ORDER BY h.topic, h.seq DESC
        ON CONFLICT (topic) DO UPDATE SET head = excluded.head, head_hash = excluded.head_hash
        RETURNING t.topic, t.head
    ),
    advanced AS (
        UPDATE {SCHEMA}.sequencer s SET position = s.position + (SELECT count(*) FROM fresh)
        RETURNING s.position
    )
    SELECT (SELECT count(*) FROM batch),
           (SELECT count(*) FROM stored),
           (SELECT max(advanced.position) FROM advanced),
           (SELECT jsonb_object_agg(new_heads.topic, new_heads.head) FROM new_heads)
    INTO consumed, sequenced, last_position, heads;

    IF sequenced > 0 THEN
        hint := jsonb_build_object('position', last_position, 'topics', heads)::text;
        IF octet_length(hint) > 7900 THEN
            hint := jsonb_build_object('position', last_position)::text;
        END IF;
        PERFORM pg_notify('{EVENTS_CHANNEL}', hint);
    END IF;
END
$fn$;
"""

# Recompute a topic's chain from its first event; the first row whose stored hash differs
# from the recomputed one (or a gap in seqs, or a head that does not match) is the break.
VERIFY = f"""
CREATE FUNCTION {SCHEMA}.verify(target text)
RETURNS TABLE (seq bigint, problem text)
LANGUAGE plpgsql STABLE
AS $fn$
DECLARE
    checked bigint;
    head_row {SCHEMA}.topics%ROWTYPE;
    last_hash bytea;
BEGIN
    RETURN QUERY
    WITH recomputed AS (
        SELECT e.seq, e.hash,
               row_number() OVER (ORDER BY e.seq) AS n,
               {SCHEMA}.chain_hash(
                   {SCHEMA}.event_content(e.topic, e.seq, e.type, e.data, e.time, e.event_id),
                   NULL::bytea) OVER (ORDER BY e.seq) AS expected
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
    SELECT * INTO head_row FROM {SCHEMA}.topics t WHERE t.topic = target;
    SELECT max(e.seq), (array_agg(e.hash ORDER BY e.seq DESC))[1] INTO checked, last_hash
    FROM {SCHEMA}.events e WHERE e.topic = target;
    IF coalesce(head_row.head, 0) <> coalesce(checked, 0)
       OR head_row.head_hash IS DISTINCT FROM last_hash THEN
        RETURN QUERY SELECT coalesce(checked, 0) + 1,
            format('the head says seq %s, the table ends at %s: events were removed or added',
                   coalesce(head_row.head, 0), coalesce(checked, 0));
    END IF;
END
$fn$;
"""


def upgrade() -> None:
    op.add_column("events", sa.Column("hash", sa.LargeBinary), schema=SCHEMA)
    op.add_column("topics", sa.Column("head_hash", sa.LargeBinary), schema=SCHEMA)
    op.execute(CONTENT)
    op.execute(CHAIN)
    op.execute(CHAIN_AGGREGATE)
    # Chain the events stored before this revision.
    op.execute(
        f"""
        UPDATE {SCHEMA}.events e SET hash = c.hash
        FROM (SELECT topic, seq, {SCHEMA}.chain_hash(
                  {SCHEMA}.event_content(topic, seq, type, data, time, event_id), NULL::bytea)
                  OVER (PARTITION BY topic ORDER BY seq) AS hash
              FROM {SCHEMA}.events) c
        WHERE e.topic = c.topic AND e.seq = c.seq
        """
    )
    op.execute(
        f"""
        UPDATE {SCHEMA}.topics t SET head_hash = e.hash
        FROM {SCHEMA}.events e WHERE e.topic = t.topic AND e.seq = t.head
        """
    )
    op.execute(SEQUENCE)
    op.execute(VERIFY)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {SCHEMA}.verify(text)")
    op.execute(f"DROP AGGREGATE {SCHEMA}.chain_hash(bytea, bytea)")
    op.execute(f"DROP FUNCTION {SCHEMA}.chain_step(bytea, bytea, bytea)")
    op.execute(
        f"DROP FUNCTION {SCHEMA}.event_content(text, bigint, text, jsonb, timestamptz, text)"
    )
    op.drop_column("topics", "head_hash", schema=SCHEMA)
    op.drop_column("events", "hash", schema=SCHEMA)
    # 0001's sequence() is restored by re-running its definition.
    core = _revision("0001_core")
    op.execute(core.SEQUENCE.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))


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
