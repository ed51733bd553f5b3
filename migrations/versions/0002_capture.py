"""Change-data capture: triggers that publish every change of an application table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Frozen with this revision (a migration never imports the code it migrates for).
SCHEMA = "changefeed"
TOPIC_PATTERN = r"^[A-Za-z0-9._:-]{1,200}$"

# The row trigger: one event per changed row, in the writer's transaction. Its arguments are
# the topic and the primary-key columns, fixed when the capture is declared (re-declare it
# after changing the key). It writes the inbox directly: topic and type are known valid,
# and the row is serialised once. A row over the size limit fails the writer's statement
# with a clear error rather than publishing a partial row that replays could not rebuild.
CAPTURE_ROW = f"""
CREATE FUNCTION {SCHEMA}.capture_row() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
DECLARE
    topic text := TG_ARGV[0];
    key_columns text[] := TG_ARGV[1:TG_NARGS - 1];
    row_new jsonb;
    row_old jsonb;
    payload jsonb;
    size integer;
    max_bytes integer := coalesce(
        nullif(current_setting('changefeed.max_event_bytes', true), '')::integer, 65536);
BEGIN
    IF TG_OP <> 'DELETE' THEN row_new := to_jsonb(NEW); END IF;
    IF TG_OP <> 'INSERT' THEN row_old := to_jsonb(OLD); END IF;
    payload := jsonb_build_object(
        'table', format('%s.%s', TG_TABLE_SCHEMA, TG_TABLE_NAME),
        'op', lower(TG_OP),
        -- The row's key before the change (its new key for an insert).
        'key', (SELECT jsonb_object_agg(k, coalesce(row_old, row_new) -> k)
                FROM unnest(key_columns) AS k));
    IF row_new IS NOT NULL THEN payload := payload || jsonb_build_object('new', row_new); END IF;
    IF row_old IS NOT NULL THEN payload := payload || jsonb_build_object('old', row_old); END IF;
    size := octet_length(payload::text);
    IF size > max_bytes THEN
        RAISE EXCEPTION 'changefeed capture of %.%: the % event is % bytes, over the limit of %',
            TG_TABLE_SCHEMA, TG_TABLE_NAME, lower(TG_OP), size, max_bytes
            USING ERRCODE = '54000',
                  HINT = 'Raise changefeed.max_event_bytes, or keep large values out.';
    END IF;
    INSERT INTO {SCHEMA}.inbox (topic, type, data) VALUES (topic, lower(TG_OP), payload);
    RETURN NULL;
END
$fn$;
"""

CAPTURE_TRUNCATE = f"""
CREATE FUNCTION {SCHEMA}.capture_truncate() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    INSERT INTO {SCHEMA}.inbox (topic, type, data)
    VALUES (TG_ARGV[0], 'truncate', jsonb_build_object(
        'table', format('%s.%s', TG_TABLE_SCHEMA, TG_TABLE_NAME), 'op', 'truncate'));
    RETURN NULL;
END
$fn$;
"""

# Declaring a capture (idempotent: declaring it again replaces it, e.g. with a new topic).
CAPTURE = f"""
CREATE FUNCTION {SCHEMA}.capture(target regclass, topic text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
AS $fn$
DECLARE
    chosen text := coalesce(capture.topic,
                            (SELECT relname FROM pg_class WHERE oid = capture.target));
    key_columns text[];
BEGIN
    IF chosen !~ '{TOPIC_PATTERN}' THEN
        RAISE EXCEPTION 'changefeed.capture: invalid topic %', quote_literal(chosen)
            USING ERRCODE = '22023', HINT = 'A topic matches [A-Za-z0-9._:-]{{1,200}}.';
    END IF;
    SELECT array_agg(a.attname::text ORDER BY array_position(i.indkey::int2[], a.attnum))
    INTO key_columns
    FROM pg_index i
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
    WHERE i.indrelid = capture.target AND i.indisprimary;
    IF key_columns IS NULL THEN
        RAISE EXCEPTION 'changefeed.capture: % has no primary key', capture.target
            USING ERRCODE = '55000',
                  HINT = 'Events name the changed row by its primary key: add one first.';
    END IF;
    PERFORM {SCHEMA}.uncapture(capture.target);
    EXECUTE format(
        'CREATE TRIGGER changefeed_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.capture_row(%s)',
        capture.target,
        (SELECT string_agg(quote_literal(v), ', ') FROM unnest(chosen || key_columns) AS v));
    EXECUTE format(
        'CREATE TRIGGER changefeed_capture_truncate AFTER TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.capture_truncate(%L)',
        capture.target, chosen);
    INSERT INTO {SCHEMA}.captures (table_name, topic, key_columns)
    VALUES ({SCHEMA}.qualified_name(capture.target), chosen, key_columns);
    RETURN chosen;
END
$fn$;
"""

QUALIFIED_NAME = f"""
CREATE FUNCTION {SCHEMA}.qualified_name(target regclass) RETURNS text
LANGUAGE sql STABLE
AS $fn$
    SELECT format('%I.%I', n.nspname, c.relname)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = target
$fn$;
"""

UNCAPTURE = f"""
CREATE FUNCTION {SCHEMA}.uncapture(target regclass)
RETURNS boolean
LANGUAGE plpgsql
AS $fn$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS changefeed_capture ON %s', target);
    EXECUTE format('DROP TRIGGER IF EXISTS changefeed_capture_truncate ON %s', target);
    DELETE FROM {SCHEMA}.captures WHERE table_name = {SCHEMA}.qualified_name(target);
    RETURN FOUND;
END
$fn$;
"""


def upgrade() -> None:
    op.create_table(
        "captures",
        sa.Column("table_name", sa.Text, primary_key=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("key_columns", sa.ARRAY(sa.Text), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=SCHEMA,
    )
    op.execute(QUALIFIED_NAME)
    op.execute(CAPTURE_ROW)
    op.execute(CAPTURE_TRUNCATE)
    op.execute(UNCAPTURE)
    op.execute(CAPTURE)


def downgrade() -> None:
    # Tables stop being captured first: their triggers depend on the functions below.
    op.execute(
        f"""
        DO $do$
        DECLARE
            declared record;
        BEGIN
            FOR declared IN SELECT to_regclass(table_name) AS target FROM {SCHEMA}.captures LOOP
                IF declared.target IS NOT NULL THEN
                    PERFORM {SCHEMA}.uncapture(declared.target);
                END IF;
            END LOOP;
        END
        $do$;
        """
    )
    op.execute(f"DROP FUNCTION {SCHEMA}.capture(regclass, text)")
    op.execute(f"DROP FUNCTION {SCHEMA}.uncapture(regclass)")
    op.execute(f"DROP FUNCTION {SCHEMA}.capture_truncate()")
    op.execute(f"DROP FUNCTION {SCHEMA}.capture_row()")
    op.execute(f"DROP FUNCTION {SCHEMA}.qualified_name(regclass)")
    op.drop_table("captures", schema=SCHEMA)
