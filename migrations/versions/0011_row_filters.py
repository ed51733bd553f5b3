"""Row filters on captures, and backfill in SQL: ``CALL changefeed.backfill(table)``.

``changefeed.capture(table, topic, exclude, row_filter => 'tenant_id = 42')`` publishes only
the changes of rows that satisfy the condition: an insert or delete of such a row, an
update of a row that satisfies it before and after; an update that takes a row out of it
publishes a ``delete``, one that brings a row into it an ``insert``. The condition is
evaluated by the invoker trigger, so with the writer's rights, and with the search path
``pg_catalog, pg_temp`` (qualify your own functions). It is handed to the row trigger after
the excluded columns, behind a second empty argument.

``changefeed.backfill`` is the chunked backfill the command line ran, now in the database:
a procedure, because it commits after every chunk (a function cannot; so neither can a
migration's transaction: call it from an ``autocommit_block()``). Each run is recorded in
``changefeed.backfills``, updated as each chunk commits, for operators and the service's
metrics.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

CAPTURE = r"""
CREATE FUNCTION changefeed.capture(target regclass, topic text DEFAULT NULL::text, exclude text[] DEFAULT '{}'::text[], row_filter text DEFAULT NULL::text)
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
    PERFORM check_row_filter(capture.target, capture.row_filter, 'changefeed.capture');
    PERFORM uncapture(capture.target);
    EXECUTE format(
        'CREATE TRIGGER changefeed_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION changefeed.capture_row(%s)',
        capture.target,
        (SELECT string_agg(quote_literal(v), ', ')
         FROM unnest(key_columns
                     || CASE WHEN excluded = '{}' AND capture.row_filter IS NULL
                             THEN '{}'::text[] ELSE ARRAY[''] || excluded END
                     || CASE WHEN capture.row_filter IS NULL THEN '{}'::text[]
                             ELSE ARRAY['', capture.row_filter] END) AS v));
    EXECUTE format(
        'CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION changefeed.capture_publish(%L)',
        'changefeed_capture' || chr(1), capture.target, chosen);
    EXECUTE format(
        'CREATE TRIGGER changefeed_capture_truncate AFTER TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION changefeed.capture_truncate(%L)',
        capture.target, chosen);
    INSERT INTO captures (table_name, topic, key_columns, excluded_columns, row_filter)
    VALUES (qualified_name(capture.target), chosen, key_columns, excluded, capture.row_filter);
    RETURN chosen;
END
$function$
"""

# Parses a row filter the way the trigger will run it, without evaluating it: through a
# cursor, because PostgreSQL opens a cursor only on a single statement (EXECUTE would run
# "true); DELETE FROM t; SELECT (true" as three), with the trigger's search path, and with
# LIMIT 0 (no row is read; an expression that fails on constants fails here already).
CHECK_ROW_FILTER = r"""
CREATE FUNCTION changefeed.check_row_filter(target regclass, row_filter text, caller text)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    probe refcursor;
BEGIN
    IF row_filter IS NULL THEN
        RETURN;
    END IF;
    IF btrim(row_filter) = '' THEN
        RAISE EXCEPTION '%: the row filter is empty', caller
            USING ERRCODE = '22023', HINT = 'Leave it out to take every row.';
    END IF;
    BEGIN
        OPEN probe FOR EXECUTE format(
            'SELECT true FROM (SELECT (NULL::%s).*) AS r WHERE (%s) LIMIT 0',
            target, row_filter);
        CLOSE probe;
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION '%: invalid row filter %: %', caller, quote_literal(row_filter), SQLERRM
            USING ERRCODE = SQLSTATE,
                  HINT = 'A row filter is one boolean SQL expression on the table''s columns, '
                         'such as tenant_id = 42; qualify functions outside pg_catalog.';
    END;
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
    -- The key columns; after an empty argument the excluded ones; after a second, the
    -- row filter. Triggers declared before 0010 have no separator, before 0011 one.
    separator int := array_position(TG_ARGV, '');
    second int := CASE WHEN separator IS NOT NULL
                       THEN array_position(TG_ARGV, '', separator + 1) END;
    keys text[] := CASE WHEN separator IS NULL THEN TG_ARGV ELSE TG_ARGV[0:separator - 1] END;
    excluded text[] := CASE WHEN separator IS NULL THEN '{}'::text[]
                            WHEN second IS NULL THEN TG_ARGV[separator + 1:]
                            ELSE TG_ARGV[separator + 1:second - 1] END;
    row_filter text := CASE WHEN second IS NOT NULL THEN TG_ARGV[second + 1] END;
    -- Whether the row satisfies the filter before and after the change.
    was_in boolean := TG_OP <> 'INSERT';
    is_in boolean := TG_OP <> 'DELETE';
BEGIN
    IF row_filter IS NOT NULL THEN
        IF was_in THEN
            EXECUTE format('SELECT true FROM (SELECT ($1).*) AS r WHERE (%s)', row_filter)
            INTO was_in USING OLD;
            was_in := coalesce(was_in, false);
        END IF;
        IF is_in THEN
            EXECUTE format('SELECT true FROM (SELECT ($1).*) AS r WHERE (%s)', row_filter)
            INTO is_in USING NEW;
            is_in := coalesce(is_in, false);
        END IF;
    END IF;
    IF is_in THEN
        row_new := to_jsonb(NEW) - excluded;
        key_new := (SELECT jsonb_object_agg(k, row_new -> k) FROM unnest(keys) AS k);
    END IF;
    IF was_in THEN
        row_old := to_jsonb(OLD) - excluded;
        key_old := (SELECT jsonb_object_agg(k, row_old -> k) FROM unnest(keys) AS k);
    END IF;
    IF NOT was_in AND NOT is_in OR was_in AND is_in AND row_new = row_old THEN
        -- Outside the filter, or only excluded columns changed (or nothing): no event.
        changes := '[]';
    ELSIF TG_OP = 'UPDATE' AND was_in AND is_in AND key_new IS DISTINCT FROM key_old THEN
        -- A key change is a delete of the old key and an insert of the new one (0005).
        changes := jsonb_build_array(
            jsonb_build_object('table', table_name, 'op', 'delete', 'key', key_old,
                               'old', row_old),
            jsonb_build_object('table', table_name, 'op', 'insert', 'key', key_new,
                               'new', row_new));
    ELSE
        -- An update that takes the row out of the filter is its delete; into it, its insert.
        changes := jsonb_build_object(
            'table', table_name,
            'op', CASE WHEN TG_OP <> 'UPDATE' THEN lower(TG_OP)
                       WHEN NOT is_in THEN 'delete' WHEN NOT was_in THEN 'insert'
                       ELSE 'update' END,
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
    -- What the change of this row may be: a key-changing update is a delete and an
    -- insert; an update across the row filter is a delete or an insert.
    allowed text[] := CASE TG_OP WHEN 'INSERT' THEN ARRAY['insert']
                                 WHEN 'DELETE' THEN ARRAY['delete']
                                 ELSE ARRAY['update', 'delete,insert', 'delete', 'insert'] END;
BEGIN
    PERFORM set_config('changefeed.capture', '', true);
    IF pending IS NULL OR pending = '' THEN
        RAISE EXCEPTION 'changefeed capture of %: the row was not serialised', table_name
            USING ERRCODE = '55000',
                  HINT = 'The trigger changefeed_capture must fire just before the one that '
                         'publishes: declare the capture again.';
    END IF;
    changes := pending::jsonb;
    IF changes = '[]' THEN
        RETURN NULL;  -- outside the row filter, or only excluded columns changed
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

BACKFILLS = """
CREATE TABLE changefeed.backfills (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name text NOT NULL,
    topic text NOT NULL,
    row_filter text,
    state text NOT NULL DEFAULT 'running'
        CHECK (state IN ('running', 'done', 'failed', 'cancelled')),
    rows_read bigint NOT NULL DEFAULT 0,
    rows_estimate bigint,
    last_key text[],
    error text,
    -- The session running it (while it runs, that session also holds the advisory lock
    -- (1667588710, id): a run whose state says running without it was interrupted).
    runner_pid integer NOT NULL,
    -- sha256 of a secret only the running procedure knows: reports and events of the run
    -- come from it alone.
    token_hash bytea NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz
)
"""

# Evaluates a row filter on a row, the way the capture trigger does, with the caller's
# rights and a pinned path. The filter is its own statement, so whatever it holds decides
# only whether this row is taken (in the chunk's query it could have ended the key range).
ROW_MATCHES = r"""
CREATE FUNCTION changefeed.row_matches(candidate anyelement, row_filter text)
 RETURNS boolean
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    matched boolean;
BEGIN
    EXECUTE format('SELECT true FROM (SELECT ($1).*) AS r WHERE (%s)', row_filter)
    INTO matched USING candidate;
    RETURN coalesce(matched, false);
END
$function$
"""

# The procedure's bookkeeping and its events, with the owner's rights: a role allowed to
# backfill a table needs no grant on changefeed's tables, and can only publish the `read`
# events of a run of a table it may read and lock, from the procedure running that run.
BACKFILL_BEGIN = r"""
CREATE FUNCTION changefeed.backfill_begin(target regclass, row_filter text, estimate bigint, token uuid)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'changefeed', 'pg_temp'
AS $function$
DECLARE
    run bigint;
BEGIN
    IF NOT (has_table_privilege(session_user, target, 'SELECT')
            AND has_table_privilege(session_user, target, 'UPDATE')) THEN
        RAISE EXCEPTION 'changefeed.backfill: % may not read and lock %', session_user, target
            USING ERRCODE = '42501',
                  HINT = 'A backfill needs SELECT and UPDATE (for FOR SHARE) on the table.';
    END IF;
    INSERT INTO backfills (table_name, topic, row_filter, rows_estimate, runner_pid,
                           token_hash)
    SELECT c.table_name, c.topic, backfill_begin.row_filter, backfill_begin.estimate,
           pg_backend_pid(), sha256(convert_to(token::text, 'UTF8'))
    FROM captures c WHERE c.table_name = qualified_name(target)
    RETURNING id INTO run;
    RETURN run;
END
$function$
"""

BACKFILL_PUBLISH = r"""
CREATE FUNCTION changefeed.backfill_publish(run bigint, token uuid, events jsonb[])
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'changefeed', 'pg_temp'
AS $function$
DECLARE
    chosen text;
BEGIN
    SELECT b.topic INTO chosen FROM backfills b
    WHERE b.id = run AND b.state = 'running'
      AND b.token_hash = sha256(convert_to(token::text, 'UTF8'));
    IF NOT FOUND THEN
        RAISE EXCEPTION 'changefeed.backfill_publish: no such running backfill'
            USING ERRCODE = '42501';
    END IF;
    INSERT INTO inbox (topic, type, data)
    SELECT chosen, 'read', e FROM unnest(events) WITH ORDINALITY AS x(e, n) ORDER BY n;
    RETURN cardinality(events);
END
$function$
"""

BACKFILL_REPORT = r"""
CREATE FUNCTION changefeed.backfill_report(run bigint, token uuid, last_key text[], rows_read bigint, state text, error text)
 RETURNS void
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'changefeed', 'pg_temp'
AS $function$
    UPDATE changefeed.backfills b
    SET rows_read = b.rows_read + backfill_report.rows_read,
        last_key = coalesce(backfill_report.last_key, b.last_key),
        state = backfill_report.state, error = backfill_report.error,
        updated_at = clock_timestamp(),
        finished_at = CASE WHEN backfill_report.state <> 'running' THEN clock_timestamp() END
    WHERE b.id = run AND b.state = 'running'
      AND b.token_hash = sha256(convert_to(token::text, 'UTF8'))
$function$
"""

# Why a chunk's ``read`` events can never overtake a concurrent change of the same row, and
# why its key range is fixed before it locks anything: service/core/backfill.py.
BACKFILL = r"""
CREATE PROCEDURE changefeed.backfill(target regclass, row_filter text DEFAULT NULL::text, chunk_rows integer DEFAULT 1000, INOUT published bigint DEFAULT NULL::bigint)
 LANGUAGE plpgsql
AS $procedure$
DECLARE
    -- A procedure that commits may have no SET clause: the search path (and the digits of
    -- floats, which travel as text) are set for each transaction below, and names outside
    -- pg_catalog are qualified.
    trusted CONSTANT text := 'pg_catalog, pg_temp';
    token CONSTANT uuid := pg_catalog.gen_random_uuid();
    captured record;
    run bigint;
    key_types text[];
    keys text;
    after text[];
    upper text[];
    lower_bound text;
    find_upper text;
    read_chunk text;
    chunk_published bigint;
    attempt integer;
    failed_state text;
    failed_message text;
BEGIN
    published := 0;
    -- Nothing is done before this: inside a transaction block PostgreSQL refuses it here
    -- ("invalid transaction termination"), before a single event is published.
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', trusted, true);
    -- The ordering argument needs each statement to see what committed before it (READ
    -- COMMITTED re-reads a row it waited for); a snapshot per transaction would publish
    -- rows as they were before the writer the chunk waited for.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'changefeed.backfill runs in READ COMMITTED, not %',
            current_setting('transaction_isolation')
            USING ERRCODE = '25000',
                  HINT = 'SET default_transaction_isolation = ''read committed'' first.';
    END IF;
    IF chunk_rows IS NULL OR chunk_rows < 1 THEN
        RAISE EXCEPTION 'changefeed.backfill: chunk_rows must be at least 1'
            USING ERRCODE = '22023';
    END IF;
    SELECT c.table_name, c.topic, c.key_columns, c.excluded_columns,
           c.row_filter AS capture_filter
    INTO captured FROM changefeed.captures c
    WHERE c.table_name = changefeed.qualified_name(target);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'changefeed.backfill: % is not captured', target
            USING ERRCODE = '55000',
                  HINT = 'Declare it first: SELECT changefeed.capture(...).';
    END IF;
    SELECT array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY k.n) INTO key_types
    FROM unnest(captured.key_columns) WITH ORDINALITY AS k(name, n)
    JOIN pg_attribute a ON a.attrelid = target AND a.attname = k.name AND NOT a.attisdropped;
    IF cardinality(key_types) IS DISTINCT FROM cardinality(captured.key_columns) THEN
        RAISE EXCEPTION 'changefeed.backfill: a key column of % is gone', target
            USING ERRCODE = '55000', HINT = 'Declare the capture again.';
    END IF;
    PERFORM changefeed.check_row_filter(target, row_filter, 'changefeed.backfill');
    keys := (SELECT string_agg(format('r.%I', k), ', ') FROM unnest(captured.key_columns) k);
    -- Key values travel as text, cast back to the columns' own types.
    lower_bound := format('(%s) > (%s)', keys,
        (SELECT string_agg(format('($1[%s])::%s', n, t), ', ')
         FROM unnest(key_types) WITH ORDINALITY AS x(t, n)));
    find_upper := format(
        'SELECT ARRAY[%s] FROM %s r WHERE $1 IS NULL OR %s ORDER BY %s OFFSET $2 - 1 LIMIT 1',
        (SELECT string_agg(format('r.%I::text', k), ', ') FROM unnest(captured.key_columns) k),
        target, lower_bound, keys);
    -- The filters are evaluated by row_matches(), each as its own statement, on the newest
    -- version of each row (PostgreSQL evaluates the WHERE again on a row it waited for).
    read_chunk := format(
        'WITH locked AS MATERIALIZED ('
        '  SELECT r.* FROM %1$s r'
        '  WHERE ($1 IS NULL OR %2$s) AND ($2 IS NULL OR (%3$s) <= (%4$s))'
        '    AND ($5::text IS NULL OR changefeed.row_matches(r.*, $5))'
        '    AND ($6::text IS NULL OR changefeed.row_matches(r.*, $6))'
        '  ORDER BY %3$s FOR SHARE OF r) '
        'SELECT changefeed.backfill_publish($7, $8, coalesce(array_agg(jsonb_build_object('
        '  ''table'', $3::text, ''op'', ''read'', ''key'', jsonb_build_object(%5$s),'
        '  ''new'', to_jsonb(r.*) - $4::text[]) ORDER BY %3$s), ''{}'')) FROM locked r',
        target, lower_bound, keys,
        (SELECT string_agg(format('($2[%s])::%s', n, t), ', ')
         FROM unnest(key_types) WITH ORDINALITY AS x(t, n)),
        (SELECT string_agg(format('%L, r.%I', k, k), ', ') FROM unnest(captured.key_columns) k));
    run := changefeed.backfill_begin(target, row_filter,
        (SELECT greatest(c.reltuples, 0)::bigint FROM pg_class c WHERE c.oid = target), token);
    -- Held until the run ends, or its session does: operators tell a run that was
    -- interrupted by its absence (changefeed capture --list).
    PERFORM pg_catalog.pg_advisory_lock(1667588710, (run % 2147483647)::integer);
    COMMIT;
    LOOP
        PERFORM pg_catalog.set_config('search_path', trusted, true);
        PERFORM pg_catalog.set_config('extra_float_digits', '3', true);
        attempt := 0;
        LOOP
            BEGIN
                IF attempt > 0 THEN
                    PERFORM pg_catalog.pg_sleep(pg_catalog.random() * 0.05 * 2 ^ attempt);
                END IF;
                -- The chunk's upper key, the chunk_rows-th after ``after``: fixed before
                -- anything is locked; then its rows, read FOR SHARE and published.
                EXECUTE find_upper INTO upper USING after, chunk_rows;
                IF upper IS NOT NULL AND upper = after THEN
                    RAISE EXCEPTION 'changefeed.backfill: the key % of % does not survive '
                                    'its text form', upper, target USING ERRCODE = '22000';
                END IF;
                EXECUTE read_chunk INTO chunk_published
                    USING after, upper, captured.table_name, captured.excluded_columns,
                          captured.capture_filter, row_filter, run, token;
                -- Declaring the capture again (say, to exclude a column) drops its triggers,
                -- which waits for this chunk's lock on the table: a declaration that is not
                -- visible here comes after this chunk, so the chunk used the capture as it
                -- is; one that is visible fails the run rather than publish what the
                -- capture no longer would. So does a table renamed or dropped under it.
                IF changefeed.qualified_name(target) IS DISTINCT FROM captured.table_name
                   OR NOT EXISTS (
                    SELECT FROM changefeed.captures c
                    WHERE c.table_name = captured.table_name AND c.topic = captured.topic
                      AND c.key_columns = captured.key_columns
                      AND c.excluded_columns = captured.excluded_columns
                      AND c.row_filter IS NOT DISTINCT FROM captured.capture_filter) THEN
                    RAISE EXCEPTION 'changefeed.backfill: the capture of % was declared again '
                                    'or removed while the backfill ran', target
                        USING ERRCODE = '55000', HINT = 'Run the backfill again.';
                END IF;
                PERFORM changefeed.backfill_report(run, token, upper, chunk_published,
                    CASE WHEN upper IS NULL THEN 'done' ELSE 'running' END, NULL);
                EXIT;
            EXCEPTION
                WHEN deadlock_detected OR serialization_failure THEN
                    -- A writer locked rows of the chunk in another order and PostgreSQL
                    -- aborted the chunk to break the deadlock: it published nothing, so
                    -- reading the same range again is exact.
                    attempt := attempt + 1;
                    IF attempt >= 10 THEN
                        failed_state := SQLSTATE;
                        failed_message := SQLERRM;
                        EXIT;
                    END IF;
                WHEN query_canceled OR OTHERS THEN
                    failed_state := SQLSTATE;
                    failed_message := SQLERRM;
                    EXIT;
            END;
        END LOOP;
        IF failed_state IS NOT NULL THEN
            PERFORM changefeed.backfill_report(run, token, NULL, 0,
                CASE failed_state WHEN '57014' THEN 'cancelled' ELSE 'failed' END,
                failed_message);
            COMMIT;
            PERFORM pg_catalog.pg_advisory_unlock(1667588710, (run % 2147483647)::integer);
            RAISE EXCEPTION 'changefeed.backfill of %: %', target, failed_message
                USING ERRCODE = failed_state;
        END IF;
        published := published + chunk_published;
        COMMIT;
        EXIT WHEN upper IS NULL;
        after := upper;
    END LOOP;
    PERFORM pg_catalog.pg_advisory_unlock(1667588710, (run % 2147483647)::integer);
END
$procedure$
"""


def upgrade() -> None:
    op.execute("ALTER TABLE changefeed.captures ADD COLUMN row_filter text")
    op.execute(CHECK_ROW_FILTER)
    op.execute("DROP FUNCTION changefeed.capture(regclass, text, text[])")
    op.execute(CAPTURE)
    op.execute(CAPTURE_ROW)
    op.execute(CAPTURE_PUBLISH)
    op.execute(BACKFILLS)
    op.execute("CREATE INDEX backfills_table ON changefeed.backfills (table_name, id)")
    op.execute(ROW_MATCHES)
    op.execute(BACKFILL_BEGIN)
    op.execute(BACKFILL_PUBLISH)
    op.execute(BACKFILL_REPORT)
    op.execute(BACKFILL)
    # New functions are executable by PUBLIC unless revoked (0006 revoked the others, and
    # its default privileges cover functions, not procedures).
    for routine in ROUTINES:
        op.execute(f"REVOKE EXECUTE ON {routine} FROM PUBLIC")


ROUTINES = [
    "FUNCTION changefeed.capture(regclass, text, text[], text)",
    "FUNCTION changefeed.check_row_filter(regclass, text, text)",
    "FUNCTION changefeed.row_matches(anyelement, text)",
    "FUNCTION changefeed.backfill_begin(regclass, text, bigint, uuid)",
    "FUNCTION changefeed.backfill_publish(bigint, uuid, jsonb[])",
    "FUNCTION changefeed.backfill_report(bigint, uuid, text[], bigint, text, text)",
    "PROCEDURE changefeed.backfill(regclass, text, integer, bigint)",
]


def downgrade() -> None:
    for routine in reversed(ROUTINES[1:]):
        if "check_row_filter" not in routine:
            op.execute(f"DROP {routine}")
    op.execute("DROP TABLE changefeed.backfills")
    op.execute("DROP FUNCTION changefeed.capture(regclass, text, text[], text)")
    previous = _revision("0010_exclude")
    op.execute(previous.CAPTURE)
    op.execute("REVOKE EXECUTE ON FUNCTION changefeed.capture(regclass, text, text[]) FROM PUBLIC")
    op.execute(previous.CAPTURE_ROW)
    op.execute(previous.CAPTURE_PUBLISH)
    op.execute("DROP FUNCTION changefeed.check_row_filter(regclass, text, text)")
    # Filtered captures are declared again without their filter (0010 has none).
    op.execute(
        """
        DO $do$
        DECLARE
            declared record;
        BEGIN
            FOR declared IN SELECT to_regclass(c.table_name) AS target, c.topic,
                                   c.excluded_columns
                            FROM changefeed.captures c WHERE c.row_filter IS NOT NULL LOOP
                IF declared.target IS NOT NULL THEN
                    PERFORM changefeed.capture(declared.target, declared.topic,
                                               declared.excluded_columns);
                END IF;
            END LOOP;
        END
        $do$;
        """
    )
    op.execute("ALTER TABLE changefeed.captures DROP COLUMN row_filter")


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
