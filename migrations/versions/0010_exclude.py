"""Captured columns can be excluded: ``changefeed.capture(table, topic, exclude => '{…}')``.

Excluded columns appear in no event (``new``, ``old``, and the ``read`` events of a
backfill); an update that changes only excluded columns publishes nothing. Key columns
cannot be excluded (events name their row by its key). The list is kept in
``captures.excluded_columns`` and handed to the row trigger after the key columns,
separated by an empty argument (no column can have an empty name); triggers declared
before this revision have no separator and exclude nothing.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

CAPTURE = r"""
CREATE FUNCTION changefeed.capture(target regclass, topic text DEFAULT NULL::text, exclude text[] DEFAULT '{}'::text[])
 RETURNS text
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'changefeed', 'pg_temp'
AS $function$
DECLARE
    chosen text := coalesce(capture.topic,
                            (SELECT relname FROM pg_class WHERE oid = capture.target));
    key_columns text[];
    excluded text[] := (SELECT coalesce(array_agg(DISTINCT e ORDER BY e), '{}')
                        FROM unnest(coalesce(capture.exclude, '{}')) AS e);
    unknown text;
BEGIN
    IF chosen IS NULL OR NOT valid_topic(chosen) THEN
        RAISE EXCEPTION 'changefeed.capture: invalid topic %', quote_literal(chosen)
            USING ERRCODE = '22023', HINT = 'A topic matches [A-Za-z0-9._:-]{1,200}.';
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
    SELECT e INTO unknown FROM unnest(excluded) AS e
    WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                      WHERE a.attrelid = capture.target AND a.attname = e
                        AND a.attnum > 0 AND NOT a.attisdropped)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'changefeed.capture: % has no column %', capture.target,
            quote_literal(unknown) USING ERRCODE = '42703';
    END IF;
    SELECT e INTO unknown FROM unnest(excluded) AS e WHERE e = ANY (key_columns) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'changefeed.capture: % is a key column of %: it cannot be excluded',
            quote_literal(unknown), capture.target
            USING ERRCODE = '22023',
                  HINT = 'Events name the changed row by its primary key.';
    END IF;
    PERFORM uncapture(capture.target);
    EXECUTE format(
        'CREATE TRIGGER changefeed_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION changefeed.capture_row(%s)',
        capture.target,
        (SELECT string_agg(quote_literal(v), ', ')
         FROM unnest(key_columns || CASE WHEN excluded = '{}' THEN '{}'::text[]
                                         ELSE ARRAY[''] || excluded END) AS v));
    EXECUTE format(
        'CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION changefeed.capture_publish(%L)',
        'changefeed_capture' || chr(1), capture.target, chosen);
    EXECUTE format(
        'CREATE TRIGGER changefeed_capture_truncate AFTER TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION changefeed.capture_truncate(%L)',
        capture.target, chosen);
    INSERT INTO captures (table_name, topic, key_columns, excluded_columns)
    VALUES (qualified_name(capture.target), chosen, key_columns, excluded);
    RETURN chosen;
END
$function$
"""

CAPTURE_ROW = r"""
CREATE OR REPLACE FUNCTION changefeed.capture_row()
 RETURNS trigger
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    row_new jsonb;
    row_old jsonb;
    key_new jsonb;
    key_old jsonb;
    table_name text := format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME);
    changes jsonb;
    -- The key columns, then (after an empty argument) the excluded ones.
    separator int := array_position(TG_ARGV, '');
    keys text[] := CASE WHEN separator IS NULL THEN TG_ARGV ELSE TG_ARGV[0:separator - 1] END;
    excluded text[] := CASE WHEN separator IS NULL THEN '{}'::text[]
                            ELSE TG_ARGV[separator + 1:] END;
BEGIN
    IF TG_OP <> 'DELETE' THEN
        row_new := to_jsonb(NEW) - excluded;
        key_new := (SELECT jsonb_object_agg(k, row_new -> k) FROM unnest(keys) AS k);
    END IF;
    IF TG_OP <> 'INSERT' THEN
        row_old := to_jsonb(OLD) - excluded;
        key_old := (SELECT jsonb_object_agg(k, row_old -> k) FROM unnest(keys) AS k);
    END IF;
    IF TG_OP = 'UPDATE' AND row_new = row_old THEN
        -- Only excluded columns changed (or nothing): nothing to publish.
        changes := '[]';
    ELSIF TG_OP = 'UPDATE' AND key_new IS DISTINCT FROM key_old THEN
        -- A key change is a delete of the old key and an insert of the new one (0005).
        changes := jsonb_build_array(
            jsonb_build_object('table', table_name, 'op', 'delete', 'key', key_old,
                               'old', row_old),
            jsonb_build_object('table', table_name, 'op', 'insert', 'key', key_new,
                               'new', row_new));
    ELSE
        changes := jsonb_build_object('table', table_name, 'op', lower(TG_OP),
                                      'key', coalesce(key_old, key_new));
        IF row_new IS NOT NULL THEN changes := changes || jsonb_build_object('new', row_new);
        END IF;
        IF row_old IS NOT NULL THEN changes := changes || jsonb_build_object('old', row_old);
        END IF;
        changes := jsonb_build_array(changes);
    END IF;
    PERFORM set_config('changefeed.capture', changes::text, true);
    RETURN NULL;
END
$function$
"""

CAPTURE_PUBLISH = r"""
CREATE OR REPLACE FUNCTION changefeed.capture_publish()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'changefeed', 'pg_temp'
AS $function$
DECLARE
    pending text := current_setting('changefeed.capture', true);
    table_name text := format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME);
    changes jsonb;
    ops text;
    -- What the change of this row may be (a key-changing update is a delete and an insert).
    allowed text[] := CASE TG_OP WHEN 'INSERT' THEN ARRAY['insert']
                                 WHEN 'DELETE' THEN ARRAY['delete']
                                 ELSE ARRAY['update', 'delete,insert'] END;
BEGIN
    PERFORM set_config('changefeed.capture', '', true);
    IF pending IS NULL OR pending = '' THEN
        RAISE EXCEPTION 'changefeed capture of %: the row was not serialised', table_name
            USING ERRCODE = '55000',
                  HINT = 'The trigger changefeed_capture must fire just before the one that '
                         'publishes: declare the capture again.';
    END IF;
    changes := pending::jsonb;
    IF TG_OP = 'UPDATE' AND changes = '[]' THEN
        RETURN NULL;  -- only excluded columns changed
    END IF;
    ops := (changes -> 0 ->> 'op') || coalesce(',' || (changes -> 1 ->> 'op'), '');
    IF jsonb_array_length(changes) > 2
       OR changes -> 0 ->> 'table' IS DISTINCT FROM table_name
       OR coalesce(changes -> 1 ->> 'table', table_name) <> table_name
       OR ops IS NULL OR NOT ops = ANY (allowed) THEN
        RAISE EXCEPTION 'changefeed capture of %: the serialised change does not match the '
                        'row''s %', table_name, lower(TG_OP)
            USING ERRCODE = '55000',
                  HINT = 'Another trigger ran between changefeed_capture and the one that '
                         'publishes: declare the capture again.';
    END IF;
    IF jsonb_array_length(changes) = 1 THEN
        INSERT INTO inbox (topic, type, data) VALUES (TG_ARGV[0], ops, changes -> 0);
    ELSE
        INSERT INTO inbox (topic, type, data)
        VALUES (TG_ARGV[0], 'delete', changes -> 0), (TG_ARGV[0], 'insert', changes -> 1);
    END IF;
    RETURN NULL;
END
$function$
"""

# Re-declares every capture without exclusions, with 0009's capture(), for the downgrade.
REDECLARE = """
DO $do$
DECLARE
    declared record;
BEGIN
    FOR declared IN SELECT to_regclass(c.table_name) AS target, c.topic
                    FROM changefeed.captures c ORDER BY c.table_name LOOP
        IF declared.target IS NOT NULL THEN
            PERFORM changefeed.capture(declared.target, declared.topic);
        END IF;
    END LOOP;
END
$do$;
"""


def upgrade() -> None:
    op.execute(
        "ALTER TABLE changefeed.captures ADD COLUMN excluded_columns text[] NOT NULL DEFAULT '{}'"
    )
    op.execute("DROP FUNCTION changefeed.capture(regclass, text)")
    op.execute(CAPTURE)
    # A new function: executable by PUBLIC unless revoked (0006 revoked the others).
    op.execute("REVOKE EXECUTE ON FUNCTION changefeed.capture(regclass, text, text[]) FROM PUBLIC")
    op.execute(CAPTURE_ROW)
    op.execute(CAPTURE_PUBLISH)


def downgrade() -> None:
    op.execute("DROP FUNCTION changefeed.capture(regclass, text, text[])")
    op.execute(_revision("0009_names").CAPTURE.replace("CREATE OR REPLACE", "CREATE", 1))
    op.execute("REVOKE EXECUTE ON FUNCTION changefeed.capture(regclass, text) FROM PUBLIC")
    security = _revision("0008_security")
    op.execute(security.CAPTURE_ROW)
    op.execute(security.CAPTURE_PUBLISH)
    op.execute("ALTER TABLE changefeed.captures DROP COLUMN excluded_columns")
    op.execute(REDECLARE)


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
